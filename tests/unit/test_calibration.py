"""The nominal calibration: scores and map range of good images, the threshold at a rate asked per call."""

import numpy as np
import pytest

from patchcore.core.calibration import NominalCalibration, summarise


def test_summaries_ignore_uninspected_pixels() -> None:
    amap = np.array([[1.0, 2.0, np.nan], [3.0, 9.0, np.nan]], dtype=np.float32)
    assert summarise(amap) == (2.5, 9.0)


def test_an_update_adds_scores_keeps_the_typical_pixel_and_takes_the_highest_peak() -> None:
    fitted = NominalCalibration.of([1.0, 2.0, 3.0], [(0.5, 4.0), (0.7, 5.0), (0.9, 4.5)], "cross-fit")
    assert fitted.map_range == (0.7, 5.0) and fitted.source == "cross-fit"
    updated = fitted.extended([10.0], [(3.0, 8.0)], "cross-fit; 1 from an update")
    np.testing.assert_array_equal(updated.scores, [1.0, 2.0, 3.0, 10.0])
    assert updated.map_range == (0.7, 8.0)
    assert fitted.extended([], [], "nothing") is fitted


def test_the_threshold_and_its_warnings_follow_the_rate_asked() -> None:
    calibration = NominalCalibration.of(list(np.arange(1.0, 41.0)), [(0.0, 1.0)] * 40, "held out")
    assert calibration.threshold(0.01).value == 40.0  # 40 scores cannot resolve 1 %: the highest
    assert calibration.threshold(0.1).value == 37.0
    assert calibration.warnings(0.01) and not calibration.warnings(0.1)
    assert NominalCalibration.empty().threshold(0.01) is None
    with pytest.raises(ValueError, match="false_alarm_rate must be in"):
        calibration.threshold(0.0)
