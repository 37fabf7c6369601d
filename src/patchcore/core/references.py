"""Why a region: the good training patch nearest to its worst patch, found from the bank rows' images and places."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from patchcore.core.bank import MemoryBank
from patchcore.core.defect_regions import GoodPatch, Region
from patchcore.core.preprocessing import Preprocessor
from patchcore.io.images import load_image


@dataclass(frozen=True)
class TrainingImages:
    """The training images in bank-origin order: their names (absolute paths for files) and (width, height)."""

    names: tuple[str, ...] = ()
    sizes: tuple[tuple[int, int], ...] = ()

    def __len__(self) -> int:
        return len(self.names)

    def without(self, numbers: np.ndarray) -> TrainingImages:
        dropped = set(int(number) for number in numbers)
        kept = [i for i in range(len(self)) if i not in dropped]
        return TrainingImages(tuple(self.names[i] for i in kept), tuple(self.sizes[i] for i in kept))

    def extended(self, names: list[str], sizes: list[tuple[int, int]], first: int) -> TrainingImages:
        """With images numbered from `first` on; those before it that a model saved before their names were kept
        does not know stay nameless ('')."""
        unknown = max(0, first - len(self))
        return TrainingImages((*self.names, *[""] * unknown, *names),
                              (*self.sizes, *[(0, 0)] * unknown, *(tuple(size) for size in sizes)))

    def as_json(self) -> dict:
        return {"names": list(self.names), "sizes": [list(size) for size in self.sizes]}

    @classmethod
    def from_json(cls, record: dict | None) -> TrainingImages:
        if not record:
            return cls()
        return cls(tuple(record["names"]), tuple((int(w), int(h)) for w, h in record["sizes"]))


@dataclass(frozen=True)
class GoodPatchFinder:
    """Names, for each region of a prediction, the good training patch nearest to its worst patch: the bank row
    the search found for that patch, and the image and grid position that row came from. `reach`: grid cells
    each side of a patch's own cell that its box covers (its p x p neighbourhood and one more)."""

    bank: MemoryBank
    images: TrainingImages
    preprocessor: Preprocessor
    reach: int

    def __call__(self, regions: list[Region], size: tuple[int, int], scores: np.ndarray, nearest: np.ndarray
                 ) -> list[Region]:
        """`regions` of an image of (W, H) `size` with `nearest_good` set, from its patch-score grid `scores`
        and the bank row nearest to each patch, `nearest` (both (rows, columns))."""
        if not regions:
            return regions
        centres_x, centres_y = self.preprocessor.cell_centres(size, scores.shape)
        return [replace(region, nearest_good=self._good_patch(region, size, scores, nearest, centres_x, centres_y))
                for region in regions]

    def _good_patch(self, region: Region, size: tuple[int, int], scores: np.ndarray, nearest: np.ndarray,
                    centres_x: np.ndarray, centres_y: np.ndarray) -> GoodPatch | None:
        x0, y0, x1, y1 = region.bbox
        rows = np.flatnonzero((centres_y >= y0) & (centres_y < y1))
        columns = np.flatnonzero((centres_x >= x0) & (centres_x < x1))
        if len(rows) == 0 or len(columns) == 0:  # a region narrower than a cell: the cell under its centre
            rows = [int(np.argmin(np.abs(centres_y - region.centroid[1])))]
            columns = [int(np.argmin(np.abs(centres_x - region.centroid[0])))]
        window = scores[np.ix_(rows, columns)]
        row_in, column_in = np.unravel_index(int(np.argmax(window)), window.shape)
        row, column = int(rows[row_in]), int(columns[column_in])
        bank_row = int(nearest[row, column])
        if bank_row < 0 or self.bank.origins is None or self.bank.positions is None:
            return None
        image = int(self.bank.origins[bank_row])
        if not 0 <= image < len(self.images) or not self.images.names[image]:  # an image known by no name
            return None
        good_row, good_column = (int(value) for value in self.bank.positions[bank_row])
        return GoodPatch(self.images.names[image],
                         self.preprocessor.cell_box(self.images.sizes[image], good_row, good_column, self.reach),
                         self.preprocessor.cell_box(size, row, column, self.reach), float(scores[row, column]))


def patch_crops(image: Image.Image, good: GoodPatch, context: float = 1.0
                ) -> tuple[Crop, Crop | None]:
    """The worst patch's surroundings on `image` and the good patch's on its training image (None when that file
    cannot be read here), each box widened by `context` times its size on every side."""
    return _crop(image, good.patch_bbox, context), _good_crop(good, context)


# A crop of an image, and where the patch lies in it (x0, y0, x1, y1).
Crop = tuple[Image.Image, tuple[int, int, int, int]]


def _good_crop(good: GoodPatch, context: float) -> Crop | None:
    path = Path(good.image)
    if not path.is_file():
        return None
    try:
        return _crop(load_image(path), good.bbox, context)
    except Exception:  # noqa: BLE001 - the picture beside a region is a courtesy; the prediction stands without it
        return None


def _crop(image: Image.Image, bbox: tuple[int, int, int, int], context: float) -> Crop:
    x0, y0, x1, y1 = bbox
    grow_x, grow_y = round((x1 - x0) * context), round((y1 - y0) * context)
    left, top = max(0, x0 - grow_x), max(0, y0 - grow_y)
    crop = image.crop((left, top, min(image.width, x1 + grow_x), min(image.height, y1 + grow_y)))
    return crop, (x0 - left, y0 - top, x1 - left, y1 - top)
