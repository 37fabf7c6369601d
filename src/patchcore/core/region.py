"""The region of interest: a mask stretched to each image's size, as a patch grid and as pixels (each made once
per image size)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from patchcore.core.preprocessing import Preprocessor


@dataclass(eq=False)
class RegionOfInterest:
    """Where to look (`mask`, True = inspect, any size): patches outside it neither enter the bank nor score, and
    their map pixels are NaN."""

    mask: np.ndarray
    preprocessor: Preprocessor
    _grids: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)
    _outside: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    def grid(self, size: tuple[int, int]) -> np.ndarray:
        """Which patches of an image of (width, height) `size` lie inside (the image's patch grid)."""
        if size not in self._grids:
            self._grids[size] = self.preprocessor.region_grid(self.mask, size)
        return self._grids[size]

    def tile(self, size: tuple[int, int], place: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
        """Which patches of a tile's core (at `place` on the grid, of `shape`) lie inside; on the host, so that
        asking whether any does never waits for the device."""
        return np.ascontiguousarray(self.grid(size)[place[0] : place[0] + shape[0], place[1] : place[1] + shape[1]])

    def outside_pixels(self, size: tuple[int, int]) -> np.ndarray:
        """Which pixels of an image of `size` lie outside."""
        if size not in self._outside:
            self._outside[size] = ~np.asarray(Image.fromarray(self.mask).resize(size, Image.NEAREST))
        return self._outside[size]
