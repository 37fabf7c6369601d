"""The KolektorSDD2 layout (Božič et al., 2021): train/ and test/ hold NNNNN.png beside its mask NNNNN_GT.png;
an image is defective when its mask has a defect pixel, in both splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from patchcore.data.categories import GOOD, Category, TestSample, check_test_samples
from patchcore.errors import DatasetError

MASK_SUFFIX = "_GT"
DEFECT_TYPE = "defect"


def is_kolektorsdd2(folder: Path) -> bool:
    return all((folder / split).is_dir() and any((folder / split).glob(f"*{MASK_SUFFIX}.png"))
               for split in ("train", "test"))


def _pairs(split: Path) -> list[tuple[Path, Path, bool]]:
    """(image, mask, defective) for each image of a split folder; an image without its mask is an error."""
    pairs = []
    for image in sorted(p for p in split.glob("*.png") if not p.stem.endswith(MASK_SUFFIX)):
        mask = image.with_name(f"{image.stem}{MASK_SUFFIX}.png")
        if not mask.is_file():
            raise DatasetError(f"{image}: its mask {mask} is missing")
        try:
            with Image.open(mask) as picture:
                defective = bool(np.asarray(picture.convert("L")).any())
        except OSError as error:
            raise DatasetError(f"{mask}: unreadable mask ({error})") from error
        pairs.append((image, mask, defective))
    if not pairs:
        raise DatasetError(f"{split}: no images")
    return pairs


def kolektorsdd2_training_images(folder: Path) -> list[Path]:
    """train/'s good images: its defective ones (246 in KolektorSDD2) are never learned as good."""
    return [image for image, _, defective in _pairs(folder / "train") if not defective]


def load_kolektorsdd2(folder: Path) -> Category:
    samples = [TestSample(image, DEFECT_TYPE if defective else GOOD, mask if defective else None)
               for image, mask, defective in _pairs(folder / "test")]
    return Category(folder.name, folder, tuple(kolektorsdd2_training_images(folder)),
                    check_test_samples(folder / "test", samples), layout="kolektorsdd2", mask_threshold=1)
