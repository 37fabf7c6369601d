"""The MVTec-like layouts where they differ from MVTec AD: MVTec AD 2, MVTec LOCO AD and BTAD (BeanTech)."""

from __future__ import annotations

from pathlib import Path

from patchcore.data.categories import GOOD, Category, type_folder_samples
from patchcore.errors import DatasetError
from patchcore.io.images import IMAGE_SUFFIXES, list_images

# MVTec AD 2 (Heckler-Kram et al., 2025): OBJECT/{train,validation}/good, OBJECT/test_public/{good,bad} with
# test_public/ground_truth/bad/<stem>_mask.png, and the held-back test sets without labels, scored by the
# evaluation server from the maps `patchcore.data.submission` writes.
AD2_UNLABELLED_SPLITS = ("test_private", "test_private_mixed")


def is_mvtec_ad2(folder: Path) -> bool:
    return (folder / "train" / GOOD).is_dir() and any((folder / split).is_dir()
                                                      for split in ("test_public", *AD2_UNLABELLED_SPLITS))


def load_mvtec_ad2(folder: Path) -> Category:
    test_root = folder / "test_public"
    if not test_root.is_dir():
        raise DatasetError(f"{test_root}: missing (MVTec AD 2's labelled test set: test_public/good, "
                           "test_public/bad and test_public/ground_truth/bad)")
    truth = test_root / "ground_truth"
    samples = type_folder_samples(test_root, truth if truth.is_dir() else None,
                                  lambda truth, image: truth / f"{image.stem}_mask.png")
    unlabelled = tuple((split, tuple(list_images(folder / split)))
                       for split in AD2_UNLABELLED_SPLITS if (folder / split).is_dir())
    return Category(folder.name, folder, tuple(list_images(folder / "train" / GOOD)), samples,
                    validation_images=tuple(validation_images(folder)), unlabelled=unlabelled, layout="mvtec_ad2")


def validation_images(folder: Path) -> list[Path]:
    """MVTec AD 2's and LOCO's independent good images, validation/good (none when the folder is absent)."""
    return list_images(folder / "validation" / GOOD) if (folder / "validation" / GOOD).is_dir() else []


# MVTec LOCO AD (Bergmann et al., 2022): test/{good,logical_anomalies,structural_anomalies}; each defect image's
# ground truth is a folder, ground_truth/<type>/<stem>/, of one mask per defect (pixel values name the defect).
LOCO_DEFECT_TYPES = ("logical_anomalies", "structural_anomalies")


def is_mvtec_loco(folder: Path) -> bool:
    return (folder / "train" / GOOD).is_dir() and any((folder / "test" / kind).is_dir() for kind in LOCO_DEFECT_TYPES)


def load_mvtec_loco(folder: Path) -> Category:
    samples = type_folder_samples(folder / "test", folder / "ground_truth", lambda truth, image: truth / image.stem)
    return Category(folder.name, folder, tuple(list_images(folder / "train" / GOOD)), samples,
                    validation_images=tuple(validation_images(folder)), layout="mvtec_loco", mask_threshold=1)


# BTAD (Mishra et al., 2021): PRODUCT/train/ok, PRODUCT/test/{ok,ko}, masks ground_truth/ko/<stem>.<png|bmp>.
def is_btad(folder: Path) -> bool:
    return (folder / "train" / "ok").is_dir() and (folder / "test").is_dir()


def load_btad(folder: Path) -> Category:
    truth = folder / "ground_truth"
    samples = type_folder_samples(folder / "test", truth if truth.is_dir() else None, _same_stem, good="ok")
    return Category(folder.name, folder, tuple(list_images(folder / "train" / "ok")), samples, layout="btad")


def _same_stem(truth: Path, image: Path) -> Path:
    for suffix in (".png", ".bmp", *sorted(IMAGE_SUFFIXES)):
        if (truth / f"{image.stem}{suffix}").is_file():
            return truth / f"{image.stem}{suffix}"
    return truth / f"{image.stem}.png"  # missing: named in the error
