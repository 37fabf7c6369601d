"""The loop over images: decoded once each, in order, in chunks bounded by count; unreadable ones raised or skipped."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from patchcore.core.batches import BatchLoop
from patchcore.core.preprocessing import Preprocessor
from patchcore.errors import ImageLoadError


def loop(batch_size: int = 2, skipped: list | None = None, threads: int | None = 0) -> BatchLoop:
    preprocessor = Preprocessor(64, (0.5,) * 3, (0.25,) * 3, tile_size=None, stride=8)
    return BatchLoop(preprocessor, torch.device("cpu"), batch_size, loader_threads=threads, skipped=skipped)


def images(tmp_path: Path) -> list[Path]:
    files = []
    for i, side in enumerate((64, 48, 64, 80, 64)):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((side, side, 3), 10 * i, dtype=np.uint8)).save(files[-1])
    (tmp_path / "bad.png").write_bytes(b"not an image")
    return files[:2] + [tmp_path / "bad.png"] + files[2:]


@pytest.mark.parametrize("threads", [0, 2])
def test_chunks_keep_the_inputs_order_and_skip_what_does_not_decode(tmp_path: Path, threads: int) -> None:
    skipped: list[str] = []
    chunks = list(loop(skipped=skipped, threads=threads).chunks(images(tmp_path), "test"))
    assert [positions for positions, _ in chunks] == [[0, 1], [3, 4], [5]]
    first_pixels = [int(picture.pixels[0, 0, 0]) for _, pictures in chunks for picture in pictures]
    assert first_pixels == [0, 10, 20, 30, 40]
    assert len(skipped) == 1 and "bad.png: not a readable image" in skipped[0]


def test_without_skipping_the_first_unreadable_image_raises(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="bad.png"):
        list(loop().chunks(images(tmp_path), "test"))


def test_batches_group_equal_sizes_and_normalise(tmp_path: Path) -> None:
    files = images(tmp_path)
    pictures = [loop().picture(files[i]) for i in (0, 1, 3)]  # working sizes 64, 64 and 64: one batch
    batches = list(loop(batch_size=8).batches(pictures))
    assert len(batches) == 1
    entries, batch = batches[0]
    assert [i for i, _ in entries] == [0, 1, 2] and tuple(batch.shape) == (3, 3, 64, 64)
    assert float(batch[0].mean()) == pytest.approx(-2.0)  # (0 - 0.5) / 0.25


def test_a_cpu_pass_takes_at_most_two_256_px_images(tmp_path: Path) -> None:
    preprocessor = Preprocessor(256, (0.5,) * 3, (0.25,) * 3, tile_size=None, stride=8)
    cpu_loop = BatchLoop(preprocessor, torch.device("cpu"), 8, loader_threads=0)
    Image.fromarray(np.zeros((256, 256, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    pictures = [cpu_loop.picture(tmp_path / "a.png")] * 5
    assert [len(entries) for entries, _ in cpu_loop.batches(pictures)] == [2, 2, 1]
