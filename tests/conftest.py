"""Shared fixtures: real texture crops (scikit-image's brick photo) and a small fitted model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from patchcore.core.patchcore import PatchCore
from patchcore.data.offline import texture_photo

CROP = 128


def paste_defect(crop: np.ndarray, top: int, left: int, size: int, donor: np.ndarray) -> np.ndarray:
    """Paste a square from another texture: a defect whose exact location we know."""
    out = crop.copy()
    out[top : top + size, left : left + size] = donor[:size, :size]
    return out


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


@contextmanager
def serving(app) -> Iterator[int]:
    """Run an ASGI app with uvicorn in a thread on a free loopback port; yields the port."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not start within 30 s")
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
