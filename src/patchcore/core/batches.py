"""Images into network batches: decoding (threads ahead of the network), chunks of pictures, tiles batched by size."""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from patchcore.core.preprocessing import Preprocessor, Tile
from patchcore.errors import ImageLoadError
from patchcore.io.images import ImageInput, load_image
from patchcore.progress import progress_bar

# `batch_size` counts network inputs of this many pixels: larger inputs go in proportionally smaller batches.
BATCH_PIXELS = 256 * 256
# On a CPU a forward pass takes at most this many: eager torch ran Lite0 1.6-2x slower per image at 4-16 images of
# 256 px per pass than at 1-2 (its activations leave the cache; ONNX Runtime ran alike at every batch size).
CPU_PASS_PIXELS = 2 * BATCH_PIXELS
# Decoded pictures held at once, in pixels: bounds memory on camera-sized images.
CHUNK_PIXELS = 48_000_000
# Network batches smaller than this go to a GPU from pageable memory: page-locking one took 0.2 ms, more than its copy.
PIN_BYTES = 2**20


def images_per_pass(batch_size: int, height: int, width: int, device: torch.device) -> int:
    """Network inputs of height x width that go through the network at once, for a `batch_size` counted in
    256 x 256 images: at least one."""
    pixels = batch_size * BATCH_PIXELS
    pixels = min(pixels, CPU_PASS_PIXELS) if device.type == "cpu" else pixels
    return max(1, pixels // (height * width))


@dataclass(frozen=True)
class Picture:
    """A decoded image and its pixels at the network's working size."""

    image: Image.Image
    pixels: np.ndarray  # (H, W, 3) uint8 at the working size

    @property
    def size(self) -> tuple[int, int]:
        """The original image's (width, height)."""
        return self.image.size


@dataclass(frozen=True)
class BatchLoop:
    """Decodes images once each, resizes them to the working size, and cuts them into tiles batched by size.

    `skipped`: where unreadable images are reported instead of raised (the `skip_bad` behaviour); None raises
    the first `ImageLoadError`.
    """

    preprocessor: Preprocessor
    device: torch.device
    batch_size: int
    bit_depth: int | None = None
    loader_threads: int | None = None
    progress: bool = False
    skipped: list[str] | None = None

    def picture(self, item: ImageInput) -> Picture:
        image = load_image(item, self.bit_depth)
        return Picture(image, self.preprocessor.network_pixels(image))

    def _picture_or_skip(self, item: ImageInput) -> Picture | None:
        try:
            return self.picture(item)
        except ImageLoadError as error:
            if self.skipped is None:
                raise
            self.skipped.append(str(error))
            return None

    def decoded(self, items: Sequence[ImageInput]) -> Iterator[tuple[int, Picture]]:
        """(position in `items`, picture) in order, decoded by `loader_threads` threads working a bounded way
        ahead (Pillow decodes and resizes without holding the GIL), or inline; unreadable ones skipped when
        `skipped` collects them."""
        threads = self.loader_threads
        if threads is None:
            threads = min(8, os.cpu_count() or 1) if self.device.type == "cuda" else 0
        if threads == 0:
            pictures = (self._picture_or_skip(item) for item in items)
        else:
            pictures = self._ahead(items, threads)
        for position, picture in enumerate(pictures):
            if picture is not None:
                yield position, picture

    def _ahead(self, items: Sequence[ImageInput], threads: int) -> Iterator[Picture | None]:
        with ThreadPoolExecutor(threads, thread_name_prefix="patchcore-decode") as pool:
            ahead: deque = deque()
            queued = iter(items)
            for item in itertools.islice(queued, 2 * threads + self.batch_size):
                ahead.append(pool.submit(self._picture_or_skip, item))
            while ahead:
                picture = ahead.popleft().result()
                for item in itertools.islice(queued, 1):
                    ahead.append(pool.submit(self._picture_or_skip, item))
                yield picture

    def chunks(self, items: Sequence[ImageInput], desc: str) -> Iterator[tuple[list[int], list[Picture]]]:
        """(positions in `items`, pictures) a chunk at a time (`batch_size` images, fewer when they are large),
        with one progress bar over all of them."""
        positions: list[int] = []
        pictures: list[Picture] = []
        pixels = 0
        with progress_bar(len(items), desc, self.progress, leave=False) as bar:
            done = 0
            for position, picture in self.decoded(items):
                positions.append(position)
                pictures.append(picture)
                pixels += picture.size[0] * picture.size[1]
                if len(pictures) >= self.batch_size or pixels >= CHUNK_PIXELS:
                    yield positions, pictures
                    bar.update(position + 1 - done)
                    done = position + 1
                    positions, pictures, pixels = [], [], 0
            if pictures:
                yield positions, pictures
            bar.update(len(items) - done)

    def batches(self, pictures: Sequence[Picture]) -> Iterator[tuple[list[tuple[int, Tile]], torch.Tensor]]:
        """The tiles of `pictures` (one per picture when it fits), equal sizes batched together on the device:
        ((picture index, tile) of each batch entry, normalised batch)."""
        preprocessor = self.preprocessor
        pixels = [picture.pixels for picture in pictures]
        jobs = [(i, tile) for i, array in enumerate(pixels) for tile in preprocessor.tiles((array.shape[1], array.shape[0]))]
        jobs.sort(key=lambda job: (job[1].height, job[1].width))  # stable: equal sizes, in picture order
        for (height, width), group in itertools.groupby(jobs, key=lambda job: (job[1].height, job[1].width)):
            group = list(group)
            per_batch = images_per_pass(self.batch_size, height, width, self.device)
            for start in range(0, len(group), per_batch):
                entries = group[start : start + per_batch]
                batch = torch.from_numpy(np.stack([pixels[i][t.y : t.y + t.height, t.x : t.x + t.width]
                                                   for i, t in entries]))
                # Page-locked, the copy runs without blocking this thread.
                if self.device.type == "cuda" and batch.nbytes >= PIN_BYTES:
                    batch = batch.pin_memory()
                yield entries, preprocessor.normalise(batch.to(self.device, non_blocking=True))
