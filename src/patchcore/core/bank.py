"""The memory bank (rows, the training image each came from, the search over them) and the training patches it
is sampled from (extracted once per fit: the sampler, the cross-fit and the repeat check all read them)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace

import numpy as np
import torch

from patchcore.search import NearestNeighbourIndex, TorchIndex

# Training patches larger than this many bytes live in a memory-mapped file instead of memory.
PATCHES_IN_MEMORY_BYTES = 4 * 2**30
# A bank row that came from no image known to this model (learned proxies, or rows of a loaded model).
UNKNOWN_ORIGIN = -1


@dataclass(frozen=True, eq=False)
class TrainingPatches:
    """Every patch feature of the training images (n, D), the image each came from (n,), its place on that
    image's patch grid (n, 2: row, column), and each image's original (width, height)."""

    features: np.ndarray
    origins: np.ndarray
    positions: np.ndarray
    image_sizes: list[tuple[int, int]]

    @classmethod
    def allocate(cls, total: int, dim: int) -> TrainingPatches:
        """Room for `total` patches: in memory, or beyond PATCHES_IN_MEMORY_BYTES in an anonymous temporary file,
        memory-mapped (the system deletes it when the last reference goes)."""
        if total * dim * 4 <= PATCHES_IN_MEMORY_BYTES:
            features = np.empty((total, dim), dtype=np.float32)
        else:
            features = np.memmap(tempfile.TemporaryFile(prefix="patchcore-patches-"), dtype=np.float32, mode="w+",
                                 shape=(total, dim))
        return cls(features, np.empty(total, dtype=np.int64), np.empty((total, 2), dtype=np.int32), [])

    def __len__(self) -> int:
        return len(self.features)

    def trimmed(self, count: int) -> TrainingPatches:
        """The first `count` patches (when images promised by their headers could not be decoded)."""
        if count == len(self):
            return self
        return replace(self, features=self.features[:count], origins=self.origins[:count],
                       positions=self.positions[:count])

    def without_images(self, numbers: np.ndarray) -> TrainingPatches:
        """Without the patches of images `numbers`; the others' images numbered again from 0, in order."""
        kept = ~np.isin(self.origins, numbers)
        dropped = set(int(number) for number in numbers)
        return TrainingPatches(self.features[kept], renumbered(self.origins[kept], numbers), self.positions[kept],
                               [size for number, size in enumerate(self.image_sizes) if number not in dropped])

    def of_images(self, start: int, stop: int) -> np.ndarray:
        """Which patches came from images start to stop - 1 (a boolean mask)."""
        return (self.origins >= start) & (self.origins < stop)

    def bank(self, rows: np.ndarray | slice = slice(None), first: int = 0) -> MemoryBank:
        """A bank of the patches `rows` (default all), each row knowing its image (numbered from `first`) and its
        grid position."""
        return MemoryBank(self.features[rows], first + self.origins[rows], self.positions[rows])


@dataclass(frozen=True, eq=False)
class MemoryBank:
    """Bank rows (n, D), the training image each came from (n,; UNKNOWN_ORIGIN for rows of a model saved before
    origins were kept; None for learned proxies, which come from no image) and its place on that image's patch
    grid (n, 2: row, column; None where origins are unknown). `indexed` adds the search over them on a device."""

    rows: np.ndarray
    origins: np.ndarray | None
    positions: np.ndarray | None = None
    index: NearestNeighbourIndex | None = None
    on_device: torch.Tensor | None = None  # the rows where the search runs, for Eq. 7

    def __len__(self) -> int:
        return len(self.rows)

    def indexed(self, index: NearestNeighbourIndex, device: torch.device, state: np.ndarray | None = None) -> MemoryBank:
        """This bank searched by `index` (a fresh, unfitted one) on `device`: trained, or restored from a saved
        `state` without training again."""
        rows = np.ascontiguousarray(self.rows, dtype=np.float32)
        if state is None or not index.saves_state:  # 'auto' saved on a CPU may load on a GPU: rebuilt
            index = index.fit(rows).to(device)
        else:
            index = index.restore(state, rows.shape[1])
        # Eq. 7 reads bank rows where the search runs; a torch index already holds the bank there.
        on_device = index.bank_ if isinstance(index, TorchIndex) else torch.from_numpy(rows).to(device)
        return MemoryBank(rows, self.origins, self.positions, index, on_device)

    def without_images(self, start: int, stop: int) -> MemoryBank:
        """The rows that came from none of images start to stop - 1 (unindexed): the bank a cross-fit fold meets."""
        if self.origins is None:
            raise ValueError("a bank of learned proxies comes from no image: no image's rows can be left out")
        return self._kept((self.origins < start) | (self.origins >= stop), self.origins)

    def without_image_numbers(self, numbers: np.ndarray) -> MemoryBank:
        """Without the rows of images `numbers` (unindexed); the others' images numbered again as
        `TrainingPatches.without_images` numbers them."""
        if self.origins is None:
            raise ValueError("a bank of learned proxies comes from no image: no image's rows can be left out")
        kept = ~np.isin(self.origins, numbers)
        return self._kept(kept, renumbered(self.origins, numbers))

    def _kept(self, kept: np.ndarray, origins: np.ndarray) -> MemoryBank:
        return MemoryBank(self.rows[kept], origins[kept], None if self.positions is None else self.positions[kept])

    def extended(self, more: MemoryBank) -> MemoryBank:
        """With the rows of `more` too (unindexed): an update's."""
        if self.origins is None or more.origins is None:
            raise ValueError("a bank of learned proxies cannot be extended (they come from no image): refit")
        positions = (None if self.positions is None or more.positions is None
                     else np.concatenate([self.positions, more.positions]))
        return MemoryBank(np.concatenate([self.rows, more.rows]), np.concatenate([self.origins, more.origins]),
                          positions)


def renumbered(origins: np.ndarray, dropped: np.ndarray) -> np.ndarray:
    """Image numbers once images `dropped` are gone: each lowered by how many dropped images come before it
    (UNKNOWN_ORIGIN stays)."""
    shifted = origins - np.searchsorted(np.sort(dropped), origins)
    return np.where(origins == UNKNOWN_ORIGIN, UNKNOWN_ORIGIN, shifted)
