"""MVTec AD layout datasets: the 15 MVTec categories by name, or any folder tree in the same layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from patchcore.errors import DatasetError
from patchcore.io.images import list_images

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
GOOD = "good"


@dataclass(frozen=True)
class TestSample:
    image: Path
    defect_type: str  # "good" for defect-free images
    mask: Path | None  # None for good images and for image-level-only datasets

    @property
    def is_anomalous(self) -> bool:
        return self.defect_type != GOOD


@dataclass(frozen=True)
class Category:
    """One product: `train/good` images, labelled test images and (when present) ground-truth masks."""

    name: str
    root: Path
    train_images: tuple[Path, ...]
    test_samples: tuple[TestSample, ...]

    @property
    def has_masks(self) -> bool:
        return any(sample.mask is not None for sample in self.test_samples)


def load_category(root: str | Path, name: str) -> Category:
    """Read `root/name` in MVTec AD layout and check it: every defect image needs its mask,
    unless the category has no `ground_truth` folder at all (image-level labels only)."""
    folder = Path(root) / name
    if not folder.is_dir():
        raise DatasetError(f"{folder}: category folder not found")
    train_images = tuple(list_images(folder / "train" / GOOD))
    test_root = folder / "test"
    if not test_root.is_dir():
        raise DatasetError(f"{test_root}: missing (expected test/good and test/<defect type> folders)")
    truth_root = folder / "ground_truth"
    has_truth = truth_root.is_dir()
    samples = []
    for type_folder in sorted(p for p in test_root.iterdir() if p.is_dir()):
        for image in list_images(type_folder):
            mask = None
            if type_folder.name != GOOD and has_truth:
                mask = truth_root / type_folder.name / f"{image.stem}_mask.png"
                if not mask.is_file():
                    raise DatasetError(f"{image}: its ground-truth mask {mask} is missing")
            samples.append(TestSample(image, type_folder.name, mask))
    if not samples:
        raise DatasetError(f"{test_root}: no test images")
    if not any(sample.defect_type == GOOD for sample in samples):
        raise DatasetError(f"{test_root / GOOD}: missing or empty (good test images are needed to measure AUROC)")
    if all(sample.defect_type == GOOD for sample in samples):
        raise DatasetError(f"{test_root}: only good test images (add a folder per defect type)")
    return Category(name, folder, train_images, tuple(samples))


def discover_categories(root: str | Path) -> list[str]:
    """Category names under `root`: sub-folders that hold `train/good`."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found")
    names = sorted(p.name for p in root.iterdir() if (p / "train" / GOOD).is_dir())
    if not names:
        raise DatasetError(f"{root}: no categories (sub-folders with train/good) found")
    return names


def load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask as a boolean array; it must have the image's (width, height)."""
    try:
        with Image.open(path) as image:
            mask = np.asarray(image.convert("L")) > 127
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"{path}: unreadable mask ({error})") from error
    if mask.shape != (size[1], size[0]):
        raise DatasetError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image is {size[0]}x{size[1]}")
    return mask


