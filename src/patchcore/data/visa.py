"""The VisA layout (Zou et al., 2022): OBJECT/Data/{Images,Masks}, its split in split_csv/1cls.csv beside the objects."""

from __future__ import annotations

import csv
from pathlib import Path

from patchcore.data.categories import GOOD, Category, TestSample, check_test_samples
from patchcore.errors import DatasetError
from patchcore.io.images import list_images

SPLIT_FILE = Path("split_csv") / "1cls.csv"
SPLIT_COLUMNS = ("object", "split", "label", "image", "mask")
NORMAL, ANOMALY = "normal", "anomaly"
DEFECT_TYPE = "anomaly"  # VisA names no defect types


def is_visa_object(folder: Path) -> bool:
    return (folder / "Data" / "Images" / "Normal").is_dir()


def is_visa_root(folder: Path) -> bool:
    return (folder / SPLIT_FILE).is_file()


def visa_rows(split_file: Path, name: str) -> list[dict]:
    """The split file's rows for object `name` (line numbers kept for errors), every column checked."""
    try:
        with open(split_file, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            missing = [column for column in SPLIT_COLUMNS if column not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{split_file}: no column {', '.join(missing)} (VisA's split file has "
                                   f"{', '.join(SPLIT_COLUMNS)})")
            rows = [{**row, "line": reader.line_num} for row in reader if row["object"] == name]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"{split_file}: unreadable split file ({error})") from error
    for row in rows:
        where = f"{split_file} line {row['line']}"
        if row["split"] not in ("train", "test"):
            raise DatasetError(f"{where}: split {row['split']!r} is neither train nor test")
        if row["label"] not in (NORMAL, ANOMALY):
            raise DatasetError(f"{where}: label {row['label']!r} is neither {NORMAL} nor {ANOMALY}")
        if row["split"] == "train" and row["label"] == ANOMALY:
            raise DatasetError(f"{where}: an anomalous image in the train split: it would be learned as good")
    return rows


def load_visa(folder: Path) -> Category:
    split_file = folder.parent / SPLIT_FILE
    if not split_file.is_file():
        raise DatasetError(f"{folder}: a VisA object without {split_file}, the file that says which images "
                           "train and which test (it ships with VisA)")
    rows = visa_rows(split_file, folder.name)
    if not rows:
        raise DatasetError(f"{split_file}: no rows for object {folder.name!r}")
    root = split_file.parent.parent

    def existing(row: dict, column: str) -> Path:
        path = root / row[column]
        if not row[column] or not path.is_file():
            raise DatasetError(f"{split_file} line {row['line']}: {column} {path} not found")
        return path

    train = tuple(existing(row, "image") for row in rows if row["split"] == "train")
    # Image-level labels only when no anomalous row names a mask; otherwise each needs its own.
    with_masks = any(row["mask"] for row in rows if row["label"] == ANOMALY)
    samples = [TestSample(existing(row, "image"), GOOD if row["label"] == NORMAL else DEFECT_TYPE,
                          existing(row, "mask") if row["label"] == ANOMALY and with_masks else None)
               for row in rows if row["split"] == "test"]
    if not train:
        raise DatasetError(f"{split_file}: no train rows for object {folder.name!r}")
    return Category(folder.name, folder, train, check_test_samples(folder / "Data" / "Images", samples),
                    layout="visa", mask_threshold=1)


def visa_training_images(folder: Path) -> list[Path]:
    """The split file's normal training images; without a split file, every image of Data/Images/Normal."""
    split_file = folder.parent / SPLIT_FILE
    if split_file.is_file():
        return list(load_visa(folder).train_images)
    return list_images(folder / "Data" / "Images" / "Normal")
