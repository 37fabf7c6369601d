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
    # 1 % of 40 scores: the upper tail is modelled; evenly spread scores end near their highest.
    at_one_percent = calibration.threshold(0.01)
    assert at_one_percent.method.startswith("tail fit") and 39.0 < at_one_percent.value <= 41.0
    assert calibration.threshold(0.25).value == 31.0  # 9 of 40 above it: enough for the empirical quantile
    assert not calibration.warnings(0.01)
    few = NominalCalibration.of([1.0, 2.0, 3.0, 4.0, 5.0], [(0.0, 1.0)] * 5, "held out")
    assert few.threshold(0.01).value == 5.0 and few.threshold(0.01).method.startswith("highest of 5")
    assert "cannot resolve a 1.0% false-alarm rate" in few.warnings(0.01)[0]
    assert NominalCalibration.empty().threshold(0.01) is None
    with pytest.raises(ValueError, match="false_alarm_rate must be in"):
        calibration.threshold(0.0)


def test_suspicious_images_are_named_and_do_not_set_the_threshold() -> None:
    rng = np.random.default_rng(0)
    scores = [*rng.normal(30.0, 2.0, 39), 51.5]  # one image far above the others, as a defect in the good folder
    names = [f"cell{i}.png" for i in range(40)]
    calibration = NominalCalibration.of(scores, [(0.0, 1.0)] * 40, "cross-fit", names)
    assert calibration.suspicious_names == ["cell39.png"]
    assert calibration.threshold(0.01).value < 40.0  # set by the 39 others
    assert any("cell39.png" in warning for warning in calibration.warnings(0.01))
    assert NominalCalibration.of(scores[:39], [(0.0, 1.0)] * 39, "cross-fit").suspicious_names == []
