"""What several tests use: synthetic defects pasted on real crops, the CLI in-process, a service on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from click.testing import CliRunner, Result
from PIL import Image

CROP = 128
REPO_ROOT = Path(__file__).parents[1]


def paste_defect(crop: np.ndarray, top: int, left: int, size: int, donor: np.ndarray) -> np.ndarray:
    """Paste a square from another texture: a defect whose exact location we know."""
    out = crop.copy()
    out[top : top + size, left : left + size] = donor[:size, :size]
    return out



def gravel_tiles() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Non-square 96 x 128 tiles of the gravel photo that share no pixel: 16 for training (rows 0-383) and 4 good
    ones to test (rows 400-495). Independent images, as a production line's are: overlapping crops would make the
    cross-fit's nominal scores too low (each image's neighbours sit in other folds)."""
    from patchcore.data.offline import texture_photo

    gravel = texture_photo("gravel")
    train = [gravel[y : y + 96, x : x + 128] for y in range(0, 384, 96) for x in range(0, 512, 128)]
    return train, [gravel[400:496, x : x + 128] for x in range(0, 512, 128)]


def small_texture_category(root: Path) -> None:
    """A tiny real-texture category: train/test crops of the brick photo, two pasted defects with masks."""
    from patchcore.data.offline import texture_photo

    photo = texture_photo("brick")
    donor = texture_photo("gravel")
    category = root / "brick"
    for i in range(10):
        Image.fromarray(photo[0:128, 32 * i : 32 * i + 128]).save(_mk(category / "train" / "good" / f"{i}.png"))
    for i in range(3):
        Image.fromarray(photo[384:512, 100 * i : 100 * i + 128]).save(_mk(category / "test" / "good" / f"{i}.png"))
    for i in range(2):
        crop = photo[300:428, 150 * i : 150 * i + 128].copy()
        mask = np.zeros_like(crop)
        crop[40:70, 30:60] = donor[:30, :30]
        mask[40:70, 30:60] = 255
        Image.fromarray(crop).save(_mk(category / "test" / "paste" / f"{i}.png"))
        Image.fromarray(mask).save(_mk(category / "ground_truth" / "paste" / f"{i}_mask.png"))


def _mk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_cli(*args) -> Result:
    """`patchcore ARGS...` in this process; exceptions propagate (a test sees the traceback, not exit code 1)."""
    from patchcore.apps.cli import main

    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


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
