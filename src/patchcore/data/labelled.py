"""Layouts for any data: a labelled folder (good, defect and mask folders by name) and a CSV manifest (one row per
image: path, label, optional mask, split and category)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from patchcore.data.categories import GOOD, Category, TestSample, check_test_samples
from patchcore.errors import DatasetError
from patchcore.io.images import DEFECT_FOLDER_NAMES, IMAGE_SUFFIXES, list_images

NORMAL_FOLDER_NAMES = ("good", "normal", "ok", "nominal")
MASK_FOLDER_NAMES = ("ground_truth", "groundtruth", "masks", "mask")
# Without a separate folder of good test images, this share of the good images (the last ones by name, so a
# sequence of frames is not split across the two sets) is held out as the test set's good images.
GOOD_TEST_SHARE = 0.2


def good_test_split(images: Sequence[Path], where: str) -> tuple[list[Path], list[Path]]:
    """(training, test) good images: the last GOOD_TEST_SHARE of them by name are for testing."""
    if len(images) < 2:
        raise DatasetError(f"{where}: {len(images)} good image(s); at least 2 are needed to hold some out for "
                           "testing (or give a folder of good test images)")
    held_out = max(1, round(GOOD_TEST_SHARE * len(images)))
    return list(images[:-held_out]), list(images[-held_out:])


def folder_roles(folder: Path) -> tuple[Path, list[Path], Path | None] | None:
    """(good folder, defect folders, mask folder) of a labelled folder, found by their names; None when
    `folder` has no good folder beside a defect folder."""
    children = {p.name.lower(): p for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else {}
    good = next((children[name] for name in NORMAL_FOLDER_NAMES if name in children), None)
    masks = next((children[name] for name in MASK_FOLDER_NAMES if name in children), None)
    defects = [path for name, path in sorted(children.items())
               if name in DEFECT_FOLDER_NAMES and path != masks]
    return (good, defects, masks) if good is not None and defects else None


def is_labelled_folder(folder: Path) -> bool:
    return folder_roles(folder) is not None


def _folders(folder: Path, good_dir: str | None, defect_dirs: str | None,
             mask_dir: str | None) -> tuple[Path, list[Path], Path | None]:
    found = folder_roles(folder) or (None, [], None)
    good = folder / good_dir if good_dir else found[0]
    defects = [folder / name for name in defect_dirs.split(",")] if defect_dirs else found[1]
    masks = folder / mask_dir if mask_dir else found[2]
    if good is None or not defects:
        raise DatasetError(f"{folder}: no folder of good images beside defect folders (looked for "
                           f"{'/'.join(NORMAL_FOLDER_NAMES)} and bad/defect/anomaly/ng...; name them with "
                           "--good-dir and --defect-dirs)")
    for path in (good, *defects, *([masks] if masks else [])):
        if not path.is_dir():
            raise DatasetError(f"{path}: not a folder")
    return good, defects, masks


def _mask_for(masks: Path, defect_folder: Path, image: Path) -> Path:
    """The mask of a defect image: under masks/<defect folder>/ or masks/, named <stem>_mask.* or <stem>.*."""
    relative = image.relative_to(defect_folder).parent
    for base in (masks / defect_folder.name / relative, masks / relative):
        for stem in (f"{image.stem}_mask", image.stem):
            for suffix in (".png", *sorted(IMAGE_SUFFIXES - {".png"})):
                if (base / f"{stem}{suffix}").is_file():
                    return base / f"{stem}{suffix}"
    raise DatasetError(f"{image}: no mask for it in {masks} (looked for {image.stem}_mask.png or "
                       f"{image.stem}.png, also under {masks / defect_folder.name})")


def load_labelled_folder(folder: Path, good_dir: str | None = None, defect_dirs: str | None = None,
                         mask_dir: str | None = None, good_test_dir: str | None = None) -> Category:
    """A folder of good images, one or more defect folders (each a defect type) and optionally masks. The good
    test images come from `good_test_dir`, or are the last GOOD_TEST_SHARE of the good images."""
    good, defects, masks = _folders(folder, good_dir, defect_dirs, mask_dir)
    if good_test_dir:
        train, good_test = list_images(good), list_images(folder / good_test_dir)
    else:
        train, good_test = good_test_split(list_images(good), str(good))
    samples = [TestSample(image, GOOD, None) for image in good_test]
    for defect_folder in defects:
        samples += [TestSample(image, defect_folder.name, _mask_for(masks, defect_folder, image) if masks else None)
                    for image in list_images(defect_folder)]
    return Category(folder.name, folder, tuple(train), check_test_samples(folder, samples), layout="folder")


def labelled_folder_training_images(folder: Path) -> list[Path]:
    return list(load_labelled_folder(folder).train_images)


# A CSV manifest: a row per image. Paths are relative to the manifest's folder (or absolute).
MANIFEST_IMAGE_COLUMNS = ("image", "path")
GOOD_LABELS = frozenset({"good", "normal", "ok", "nominal", "0", "false"})
DEFECT_LABELS = frozenset({"bad", "anomaly", "anomalous", "abnormal", "defect", "defective", "ng", "nok", "1",
                           "true"})
SPLITS = {"train": "train", "test": "test", "validation": "validation", "val": "validation"}


def read_manifest(manifest: Path) -> list[dict]:
    """The manifest's rows, each checked: a known label and split, existing files, no defect in training."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            columns = [name.strip().lower() for name in reader.fieldnames or []]
            reader.fieldnames = columns
            image_column = next((name for name in MANIFEST_IMAGE_COLUMNS if name in columns), None)
            if image_column is None or "label" not in columns:
                raise DatasetError(f"{manifest}: needs columns path (or image) and label; it has "
                                   f"{', '.join(columns) or 'none'} (optional: mask, split, category, defect_type)")
            raw = [(reader.line_num, row) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{manifest}: unreadable manifest ({error})") from error
    rows = []
    for line, row in raw:
        where = f"{manifest} line {line}"
        label = (row.get("label") or "").strip().lower()
        if label not in GOOD_LABELS | DEFECT_LABELS:
            raise DatasetError(f"{where}: label {row.get('label')!r} is neither good ({', '.join(sorted(GOOD_LABELS))}) "
                               f"nor defective ({', '.join(sorted(DEFECT_LABELS))})")
        split = (row.get("split") or "").strip().lower()
        if split and split not in SPLITS:
            raise DatasetError(f"{where}: split {row.get('split')!r} is not one of {', '.join(SPLITS)}")
        defective = label in DEFECT_LABELS
        if defective and SPLITS.get(split) in ("train", "validation"):
            raise DatasetError(f"{where}: a defective image in the {SPLITS[split]} split: it would be learned as "
                               "good")
        image = _existing(manifest, where, "image", row.get(image_column))
        mask_value = (row.get("mask") or "").strip()
        mask = _existing(manifest, where, "mask", mask_value) if mask_value and defective else None
        rows.append({"image": image, "defective": defective, "mask": mask, "split": SPLITS.get(split),
                     "category": (row.get("category") or "").strip() or manifest.stem,
                     "defect_type": (row.get("defect_type") or "").strip() or ("defect" if defective else GOOD),
                     "where": where})
    if not rows:
        raise DatasetError(f"{manifest}: no rows")
    return rows


def _existing(manifest: Path, where: str, column: str, value: str | None) -> Path:
    if not value or not value.strip():
        raise DatasetError(f"{where}: empty {column} path")
    path = Path(value.strip())
    path = path if path.is_absolute() else manifest.parent / path
    if not path.is_file():
        raise DatasetError(f"{where}: {column} {path} not found")
    return path


def load_manifest(manifest: Path) -> list[Category]:
    """One category per value of the `category` column (the manifest's name without one). Rows without a split:
    defective ones are test images, good ones train but for the last GOOD_TEST_SHARE (see `good_test_split`)."""
    by_category: dict[str, list[dict]] = {}
    for row in read_manifest(manifest):
        by_category.setdefault(row["category"], []).append(row)
    categories = []
    for name, rows in by_category.items():
        unsplit_good = [row["image"] for row in rows if row["split"] is None and not row["defective"]]
        held_train, held_test = good_test_split(unsplit_good, f"{manifest} ({name})") if unsplit_good else ([], [])
        train = [row["image"] for row in rows if row["split"] == "train"] + held_train
        validation = tuple(row["image"] for row in rows if row["split"] == "validation")
        samples = [TestSample(image, GOOD, None) for image in held_test]
        samples += [TestSample(row["image"], row["defect_type"] if row["defective"] else GOOD, row["mask"])
                    for row in rows if row["split"] == "test" or (row["split"] is None and row["defective"])]
        if any(row["defective"] for row in rows if row["mask"] is not None) and any(
                sample.is_anomalous and sample.mask is None for sample in samples):
            missing = next(row for row in rows if row["defective"] and row["mask"] is None)
            raise DatasetError(f"{missing['where']}: a defective image without a mask, where others have one")
        if not train:
            raise DatasetError(f"{manifest}: no good training images for category {name!r}")
        categories.append(Category(name, manifest.parent, tuple(train), check_test_samples(manifest, samples),
                                   validation_images=validation, layout="csv"))
    return categories
