"""Writing a category in another published layout (VisA, MVTec AD 2) with the same images, in the same order:
the offline benchmarks in the field's layouts, to check that every layout gives the same numbers."""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from patchcore.data.categories import Category, load_mask
from patchcore.data.visa import SPLIT_COLUMNS, SPLIT_FILE
from patchcore.io.files import atomic_write_bytes
from patchcore.io.images import read_image_size

CONVERTIBLE_LAYOUTS = ("visa", "mvtec_ad2")


@contextmanager
def _written_whole(target: Path) -> Iterator[Path]:
    """A staging folder beside `target` that replaces it when the block ends, and vanishes if the block fails:
    a copy is there whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def _write_mask(category: Category, mask: Path, image: Path, target: Path) -> None:
    """The mask as 0/255, whatever values the source used: both layouts read that the same way."""
    pixels = load_mask(mask, read_image_size(image), category.mask_threshold)
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((pixels * 255).astype(np.uint8)).save(target)


def write_visa(category: Category, root: Path) -> Path:
    """`root/NAME/Data/{Images/{Normal,Anomaly},Masks/Anomaly}` and the object's rows in
    `root/split_csv/1cls.csv` (other objects' rows kept). Images keep their bytes and format."""
    obj = root / category.name
    rows, normal, anomaly = [], 0, 0
    with _written_whole(obj) as staging:
        for image in category.train_images:
            target = _copy(image, staging / "Data" / "Images" / "Normal" / f"{normal:04d}{image.suffix}")
            rows.append(("train", "normal", target, None))
            normal += 1
        for sample in category.test_samples:
            if not sample.is_anomalous:
                target = _copy(sample.image, staging / "Data" / "Images" / "Normal" / f"{normal:04d}{sample.image.suffix}")
                rows.append(("test", "normal", target, None))
                normal += 1
                continue
            target = _copy(sample.image, staging / "Data" / "Images" / "Anomaly" / f"{anomaly:03d}{sample.image.suffix}")
            mask = None
            if sample.mask is not None:
                mask = staging / "Data" / "Masks" / "Anomaly" / f"{anomaly:03d}.png"
                _write_mask(category, sample.mask, sample.image, mask)
            rows.append(("test", "anomaly", target, mask))
            anomaly += 1

    def relative(path: Path | None) -> str:
        return "" if path is None else (obj / path.relative_to(staging)).relative_to(root).as_posix()

    split_file = root / SPLIT_FILE
    kept = []
    if split_file.is_file():
        with open(split_file, newline="", encoding="utf-8") as file:
            kept = [row for row in csv.DictReader(file) if row["object"] != category.name]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SPLIT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    writer.writerows({"object": category.name, "split": split, "label": label, "image": relative(image),
                      "mask": relative(mask)} for split, label, image, mask in rows)
    atomic_write_bytes(split_file, buffer.getvalue().encode())
    return obj


def write_mvtec_ad2(category: Category, root: Path, validation_share: float = 0.0, private: bool = True) -> Path:
    """`root/NAME/{train,validation}/good`, `test_public/{good,bad}` with `test_public/ground_truth/bad`; with
    `private`, the test images again, unlabelled, as `test_private` and `test_private_mixed` (so a submission can
    be written and checked offline). The last `validation_share` of the training images become validation/good."""
    obj = root / category.name
    with _written_whole(obj) as staging:
        held = round(validation_share * len(category.train_images))
        for i, image in enumerate(category.train_images):
            split = "validation" if i >= len(category.train_images) - held else "train"
            _copy(image, staging / split / "good" / f"{i:03d}_regular{image.suffix}")
        for i, sample in enumerate(category.test_samples):
            name = f"{i:03d}_regular"
            kind = "bad" if sample.is_anomalous else "good"
            _copy(sample.image, staging / "test_public" / kind / f"{name}{sample.image.suffix}")
            if sample.mask is not None:
                _write_mask(category, sample.mask, sample.image,
                            staging / "test_public" / "ground_truth" / "bad" / f"{name}_mask.png")
            if private:
                _copy(sample.image, staging / "test_private" / f"{name}{sample.image.suffix}")
                _copy(sample.image, staging / "test_private_mixed" / f"{i:03d}_mixed{sample.image.suffix}")
    return obj


def write_layout(category: Category, root: Path, layout: str) -> Path:
    """The category under `root` in `layout` (one of CONVERTIBLE_LAYOUTS)."""
    if layout == "visa":
        return write_visa(category, root)
    if layout == "mvtec_ad2":
        return write_mvtec_ad2(category, root)
    raise ValueError(f"cannot write layout {layout!r}; choose from {', '.join(CONVERTIBLE_LAYOUTS)}")
