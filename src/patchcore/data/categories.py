"""What a dataset category is (training, validation and labelled test images, masks) and the MVTec AD layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from patchcore.errors import DatasetError
from patchcore.io.images import IMAGE_SUFFIXES, list_images

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
GOOD = "good"


@dataclass(frozen=True)
class TestSample:
    image: Path
    defect_type: str  # "good" for defect-free images
    # None for good images and image-level-only datasets; a folder holds several masks of one image (MVTec LOCO)
    mask: Path | None

    @property
    def is_anomalous(self) -> bool:
        return self.defect_type != GOOD


@dataclass(frozen=True)
class Category:
    """One product: good training images, labelled test images and (when present) ground-truth masks, as any
    layout (`patchcore.data.layouts`) reads them."""

    name: str
    root: Path
    train_images: tuple[Path, ...]
    test_samples: tuple[TestSample, ...]
    # Independent good images (MVTec AD 2's and LOCO's validation/good): the threshold's nominal scores come
    # from them instead of from training images held out in turn.
    validation_images: tuple[Path, ...] = ()
    # Splits without labels, by name (MVTec AD 2's test_private and test_private_mixed): predicted, never scored.
    unlabelled: tuple[tuple[str, tuple[Path, ...]], ...] = ()
    layout: str = "mvtec"
    # Mask pixels at or above this value are defect: 128 for black-and-white masks, 1 where masks hold class
    # numbers or other small values (VisA, LOCO, KolektorSDD2).
    mask_threshold: int = 128

    @property
    def has_masks(self) -> bool:
        return any(sample.mask is not None for sample in self.test_samples)


def load_category(root: str | Path, name: str) -> Category:
    """Read `root/name` in MVTec AD layout (MPDD's too) and check it: every defect image needs its mask,
    unless the category has no `ground_truth` folder at all (image-level labels only)."""
    folder = Path(root) / name
    if not folder.is_dir():
        raise DatasetError(f"{folder}: category folder not found")
    return load_mvtec(folder)


def load_mvtec(folder: Path) -> Category:
    """One MVTec AD category folder: train/good, test/<type>, ground_truth/<type>/<stem>_mask.png."""
    train_images = tuple(list_images(folder / "train" / GOOD))
    test_root = folder / "test"
    if not test_root.is_dir():
        raise DatasetError(f"{test_root}: missing (expected test/good and test/<defect type> folders)")
    truth_root = folder / "ground_truth"
    samples = type_folder_samples(test_root, truth_root if truth_root.is_dir() else None,
                                  lambda truth, image: truth / f"{image.stem}_mask.png")
    return Category(folder.name, folder, train_images, samples)


def type_folder_samples(test_root: Path, truth_root: Path | None, mask_of, good: str = GOOD) -> tuple[TestSample, ...]:
    """Test images in one folder per defect type (`good` for good ones), each defect image paired with
    `mask_of(truth_root / type, image)` when there is ground truth; checked by `check_test_samples`.
    A ground-truth folder inside `test_root` (MVTec AD 2's) is no defect type."""
    samples = []
    folders = sorted(p for p in test_root.iterdir() if p.is_dir() and p != truth_root) if test_root.is_dir() else []
    for type_folder in folders:
        is_good = type_folder.name == good
        for image in list_images(type_folder):
            mask = None if is_good or truth_root is None else mask_of(truth_root / type_folder.name, image)
            if mask is not None and not mask.exists():
                raise DatasetError(f"{image}: its ground-truth mask {mask} is missing")
            samples.append(TestSample(image, GOOD if is_good else type_folder.name, mask))
    return check_test_samples(test_root, samples, good)


def check_test_samples(test_root: Path, samples: list[TestSample], good: str = GOOD) -> tuple[TestSample, ...]:
    """A test set must hold good and defective images, or no AUROC can be measured."""
    if not samples:
        raise DatasetError(f"{test_root}: no test images")
    if not any(not sample.is_anomalous for sample in samples):
        raise DatasetError(f"{test_root / good}: missing or empty (good test images are needed to measure AUROC)")
    if all(not sample.is_anomalous for sample in samples):
        raise DatasetError(f"{test_root}: only good test images (add a folder per defect type)")
    return tuple(samples)


def discover_categories(root: str | Path) -> list[str]:
    """Category names under `root`: sub-folders that hold `train/good`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found")
    names = sorted(p.name for p in root.iterdir() if (p / "train" / GOOD).is_dir())
    if not names:
        raise DatasetError(f"{root}: no categories (sub-folders with train/good) found")
    return names


def load_mask(path: Path, size: tuple[int, int], threshold: int = 128) -> np.ndarray:
    """A ground-truth mask as a boolean array (pixels >= `threshold`); it must have the image's (width, height).
    A folder of masks (MVTec LOCO: one per defect of the image) gives their union."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{path}: a mask folder without mask images")
        return np.logical_or.reduce([load_mask(file, size, threshold) for file in files])
    try:
        with Image.open(path) as image:
            # 16-bit masks keep their values; the rest become grey levels (a palette's colours too).
            pixels = np.asarray(image if image.mode.startswith("I") else image.convert("L"))
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"{path}: unreadable mask ({error})") from error
    if pixels.ndim != 2:
        raise DatasetError(f"{path}: a mask must have one channel, this one has shape {pixels.shape}")
    mask = pixels >= threshold
    if mask.shape != (size[1], size[0]):
        raise DatasetError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image is {size[0]}x{size[1]}")
    return mask


