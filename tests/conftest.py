"""Shared fixtures (real texture crops of scikit-image's brick photo, a small fitted model) and the test tiers:
tests under integration/ are marked `integration`; `pytest -m "not slow"` is the quick tier for the edit-test loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchcore.core.patchcore import PatchCore
from patchcore.data.offline import texture_photo
from tests.helpers import CROP, paste_defect


@pytest.fixture(scope="session")
def brick() -> np.ndarray:
    return texture_photo("brick")


@pytest.fixture(scope="session")
def train_crops(brick: np.ndarray) -> list[np.ndarray]:
    """Crops from the photo's top rows only."""
    return [brick[y : y + CROP, x : x + CROP] for y in range(0, 160, 32) for x in range(0, 384, 48)]


@pytest.fixture(scope="session")
def good_test_crops(brick: np.ndarray) -> list[np.ndarray]:
    """Crops from the bottom rows, never overlapping a training crop."""
    return [brick[y : y + CROP, x : x + CROP] for y in (320, 384) for x in (0, 128, 256, 384)]


@pytest.fixture(scope="session")
def defect_crop(brick: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    donor = texture_photo("gravel")[200:260, 200:260]
    top, left, size = 40, 60, 28
    return paste_defect(brick[352 : 352 + CROP, 192 : 192 + CROP], top, left, size, donor), (top, left, size)


@pytest.fixture(scope="session")
def fitted_model(train_crops: list[np.ndarray]) -> PatchCore:
    # At the crops' native 128 px (the auto rule would enlarge them to 256): the same code, 4x faster tests.
    return PatchCore(coreset_ratio=0.1, holdout_fraction=0.1, batch_size=8, image_size=128).fit(train_crops)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory, train_crops: list[np.ndarray]) -> Path:
    from PIL import Image

    folder = tmp_path_factory.mktemp("good")
    for i, crop in enumerate(train_crops[:12]):
        Image.fromarray(crop).save(folder / f"{i:02d}.png")
    return folder


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    import torch

    no_gpu = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "integration" in item.path.parts:
            item.add_marker(pytest.mark.integration)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory, train_crops, good_test_crops, brick) -> Path:
    """A tiny MVTec-layout category of real brick crops: 12 train, 4 good and 4 with a pasted gravel square."""
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny")
    category = root / "brick"
    for folder in ("train/good", "test/good", "test/patch", "ground_truth/patch"):
        (category / folder).mkdir(parents=True)
    for i, crop in enumerate(train_crops[:12]):
        Image.fromarray(crop).save(category / "train" / "good" / f"{i:03d}.png")
    for i, crop in enumerate(good_test_crops[:4]):
        Image.fromarray(crop).save(category / "test" / "good" / f"{i:03d}.png")
    donor = texture_photo("gravel")[100:140, 100:140]
    for i, crop in enumerate(good_test_crops[4:8]):
        top, left = 20 + 10 * i, 30
        Image.fromarray(paste_defect(crop, top, left, 24, donor)).save(category / "test" / "patch" / f"{i:03d}.png")
        mask = np.zeros(crop.shape[:2], dtype=np.uint8)
        mask[top : top + 24, left : left + 24] = 255
        Image.fromarray(mask).save(category / "ground_truth" / "patch" / f"{i:03d}_mask.png")
    return root
