"""Defect regions: where an anomaly map rises above the pixel threshold, each with its box, area, peak and centre
(and, from the model, the good patch nearest to it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

# 8-connected: pixels touching at a corner belong to one region.
CONNECTIVITY = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class GoodPatch:
    """The good training patch nearest to a region's worst patch: the training image (`image`: its file, or
    'image N' for one given in memory), the patch's box on it (`bbox`: x0, y0, x1, y1 in that image's original
    pixels), the worst patch's box on the inspected image (`patch_bbox`), and the distance between the two
    patches' features (the worst patch's score)."""

    image: str
    bbox: tuple[int, int, int, int]
    patch_bbox: tuple[int, int, int, int]
    distance: float


@dataclass(frozen=True)
class Region:
    """One region of an anomaly map, in the original image's pixels: `bbox` (x0, y0, x1, y1; x1 and y1 exclusive),
    `area` (pixels), `score` (the map's maximum in it), `centroid` (x, y), the area in square millimetres when
    the pixel size is known, and the good training patch nearest to its worst patch when the model keeps where
    its bank rows came from."""

    bbox: tuple[int, int, int, int]
    area: int
    score: float
    centroid: tuple[float, float]
    area_mm2: float | None = None
    nearest_good: GoodPatch | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def find_regions(anomaly_map: np.ndarray, threshold: float, typical: float | None = None,
                 pixel_size: float | None = None) -> list[Region]:
    """The regions of `anomaly_map` (H, W) that rise above `threshold`, highest score first; NaN pixels (not
    inspected) are never in one. `pixel_size`: millimetres per pixel, for `area_mm2`.

    The threshold finds a region; its extent is where the map stands above half its peak's height over `typical`
    (good images' typical pixel), when that is above the threshold. The map is a blurred, upsampled grid of
    patch scores, so a strong defect's skirt crosses the threshold far outside it: cut at the threshold alone,
    regions measured 1.1 to 2.0 times the area of pasted 32 and 64 px defects, cut at half height 0.8 to 1.3
    times (benchmarks/regions.py).
    """
    finite = np.nan_to_num(anomaly_map, nan=-np.inf)
    labels, count = ndimage.label(finite > threshold, structure=CONNECTIVITY)
    if count == 0:
        return []
    if typical is not None:
        peaks = np.array([-np.inf, *(peak for _, _, peak, _ in _each_region(finite, labels))])
        cuts = np.maximum(threshold, typical + 0.5 * (peaks - typical))
        cuts[0] = np.inf  # background
        labels, count = ndimage.label(finite > cuts[labels], structure=CONNECTIVITY)
    regions = []
    for (rows, columns), area, peak, (cy, cx) in _each_region(finite, labels):
        regions.append(Region((columns.start, rows.start, columns.stop, rows.stop), area, peak, (cx, cy),
                              None if pixel_size is None else area * pixel_size * pixel_size))
    return sorted(regions, key=lambda region: -region.score)


def _each_region(values: np.ndarray, labels: np.ndarray):
    """(box slices, area, peak of `values`, centroid (y, x)) of each labelled region in label order, each read within
    its own box: scipy's labelled maximum sorted every pixel of the map (1 s of a 5-megapixel prediction)."""
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[box] == label
        ys, xs = np.nonzero(inside)
        yield box, int(len(ys)), float(values[box][inside].max()), (box[0].start + float(ys.mean()),
                                                                     box[1].start + float(xs.mean()))
