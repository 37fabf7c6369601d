"""Parameters declared once with the values they accept: one clear error per misuse, from the declaration."""

import pytest

from patchcore import Padim, PatchCore, Spade
from patchcore.params import OneOf, Range, check_params


@pytest.mark.parametrize("check,value,problem", [
    (Range(0, 1, low_open=True), 0.0, "must be in (0, 1]"),
    (Range(0, 1, low_open=True), 1.0, None),
    (Range(2), 1, "must be >= 2"),
    (Range(0, low_open=True), 0, "must be > 0"),
    (Range(high=5, high_open=True), 5, "must be < 5"),
    (Range(1), "three", "must be a number"),
    (Range(1), True, "must be a number"),
    (OneOf(("a", "b")), "c", "must be one of a, b"),
    (OneOf(("a", "b")), "b", None),
])
def test_a_declared_check_names_what_is_wrong(check, value, problem) -> None:
    assert check.problem(value) == problem


@pytest.mark.parametrize("model,message", [
    (PatchCore(coreset_ratio=0), "coreset_ratio must be in (0, 1], got 0"),
    (PatchCore(threshold_folds=1), "threshold_folds must be >= 2, got 1"),
    (PatchCore(tile_size=32), "tile_size must be >= 64, got 32"),
    (PatchCore(false_alarm_rate=1.0), "false_alarm_rate must be in (0, 1), got 1.0"),
    (PatchCore(precision="int8"), "precision must be one of float32, bfloat16, float16, got 'int8'"),
    (PatchCore(image_size=(640, 16)), "image_size must be at least 32 pixels, got (640, 16)"),
    (PatchCore(feature_dim=0), "feature_dim must be a positive integer, 'raw' or None, got 0"),
    (Spade(n_nearest_images=0), "n_nearest_images must be >= 1, got 0"),
    (Padim(covariance_epsilon=0.0), "covariance_epsilon must be > 0, got 0.0"),
])
def test_each_misuse_is_one_error_naming_the_parameter(model, message) -> None:
    with pytest.raises(ValueError) as refused:
        check_params(model)
    assert str(refused.value) == message


def test_none_passes_where_the_annotation_admits_it() -> None:
    check_params(PatchCore(tile_size=None, image_size=None, center_crop=None, feature_dim=None))
