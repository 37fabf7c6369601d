"""Defect regions: where a map rises above the good images' pixel threshold, sized at half height; the size rule."""

from pathlib import Path

import numpy as np
import pytest

from patchcore import PatchCore
from patchcore.core.defect_regions import find_regions
from patchcore.data.offline import texture_photo
from tests.helpers import gravel_tiles, paste_defect


def test_regions_are_connected_parts_above_the_threshold_with_box_area_peak_and_centre() -> None:
    amap = np.zeros((20, 30), dtype=np.float32)
    amap[2:5, 3:9] = 5.0  # 18 px
    amap[10:12, 20:21] = 9.0  # 2 px, the higher peak
    amap[15, 0] = np.nan  # not inspected: never a region, not even above the threshold
    regions = find_regions(amap, threshold=1.0, pixel_size=0.5)
    assert [(r.bbox, r.area, r.score) for r in regions] == [((20, 10, 21, 12), 2, 9.0), ((3, 2, 9, 5), 18, 5.0)]
    assert regions[1].centroid == (5.5, 3.0)
    assert regions[1].area_mm2 == pytest.approx(18 * 0.25)
    assert find_regions(amap, threshold=9.0) == []


def test_a_strong_regions_blurred_skirt_is_cut_at_half_its_height() -> None:
    amap = np.zeros((40, 40), dtype=np.float32)
    amap[10:30, 10:30] = 2.0  # skirt, above the threshold
    amap[15:25, 15:25] = 10.0  # the defect
    (whole,) = find_regions(amap, threshold=1.0)
    assert whole.area == 400
    (core,) = find_regions(amap, threshold=1.0, typical=0.0)
    assert core.bbox == (15, 15, 25, 25) and core.area == 100
    # A weak region, whose half height is under the threshold, keeps the threshold's extent.
    weak = np.where(amap > 5, 3.0, amap)  # half height 1.5
    assert find_regions(weak, threshold=1.8, typical=0.0)[0].area == 400


@pytest.fixture(scope="module")
def gravel_model() -> PatchCore:
    return PatchCore(coreset_ratio=0.1, batch_size=8).fit(gravel_tiles()[0])


@pytest.fixture(scope="module")
def pasted() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    top, left, size = 30, 40, 32
    image = paste_defect(gravel_tiles()[1][1], top, left, size, texture_photo("brick")[100:, 100:])
    return image, (left, top, left + size, top + size)


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union


def test_a_pasted_defect_is_one_region_of_about_its_size_and_good_images_have_none(gravel_model, pasted) -> None:
    image, box = pasted
    (region,) = gravel_model.predict([image])[0].regions
    assert _iou(region.bbox, box) > 0.6
    assert 0.5 < region.area / 32**2 < 1.5
    assert [len(p.regions) for p in gravel_model.predict(gravel_tiles()[1])] == [0, 0, 0, 0]


def test_min_defect_area_decides_by_region_size_in_pixels_or_square_millimetres(gravel_model, pasted, tmp_path: Path
                                                                                 ) -> None:
    image, _ = pasted
    assert gravel_model.predict([image])[0].decision == "defect"
    loaded = PatchCore.load(gravel_model.save(tmp_path / "model"))  # the pixel threshold's basis is saved
    loaded.set_params(min_defect_area=4 * 32**2)
    assert loaded.predict([image])[0].decision == "good"  # larger than the defect
    loaded.set_params(min_defect_area=0.25 * 32**2)
    assert loaded.predict([image])[0].decision == "defect"
    loaded.set_params(pixel_size=0.1, min_defect_area=0.25 * 32**2 * 0.01)  # the same rule in mm^2
    prediction = loaded.predict([image])[0]
    assert prediction.decision == "defect"
    assert prediction.regions[0].area_mm2 == pytest.approx(prediction.regions[0].area * 0.01)
