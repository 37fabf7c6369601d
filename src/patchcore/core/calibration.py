"""Nominal calibration: scores and map range of good images a model did not learn from, and what follows from
them (the threshold at a false-alarm rate, its warnings, the heatmap scale). Shared by every method and ensembles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from patchcore.core.thresholds import (Threshold, nominal_score_warnings, threshold_at_false_alarm_rate,
                                       validate_false_alarm_rate)
from patchcore.errors import NotFittedError

NO_NOMINAL_SOURCE = "none"

# What the calibration keeps of a nominal anomaly map: its typical pixel and its peak.
MapSummary = tuple[float, float]


def summarise(anomaly_map: np.ndarray) -> MapSummary:
    """(median, maximum) of a map, its NaN pixels (outside the inspected region) ignored."""
    return float(np.nanmedian(anomaly_map)), float(np.nanmax(anomaly_map))


@dataclass(frozen=True, eq=False)
class NominalCalibration:
    """Nominal image scores, the heatmap range of nominal maps (typical pixel, highest peak), and where they came from."""

    scores: np.ndarray
    map_range: tuple[float, float] | None = None
    source: str = NO_NOMINAL_SOURCE

    @classmethod
    def empty(cls) -> NominalCalibration:
        return cls(np.empty(0))

    @classmethod
    def of(cls, scores: Sequence[float], maps: Sequence[MapSummary], source: str) -> NominalCalibration:
        """From good images' scores and the `summarise`d anomaly maps."""
        return cls.empty().extended(scores, maps, source)

    def extended(self, scores: Sequence[float], maps: Sequence[MapSummary], source: str) -> NominalCalibration:
        """With more nominal images (an update's): their scores join the threshold's basis; the heatmap range
        keeps its typical pixel and takes the highest peak."""
        if len(scores) == 0:
            return self
        medians = [median for median, _ in maps]
        peaks = [peak for _, peak in maps]
        if self.map_range is not None:
            peaks.append(self.map_range[1])
            medians = [self.map_range[0]]
        return NominalCalibration(np.concatenate([self.scores, np.asarray(scores, dtype=np.float64)]),
                                  (float(np.median(medians)), float(max(peaks))), source)

    def threshold(self, false_alarm_rate: float) -> Threshold | None:
        """The threshold that flags `false_alarm_rate` of the nominal images; None without them."""
        return threshold_at_false_alarm_rate(self.scores, false_alarm_rate)

    def warnings(self, false_alarm_rate: float) -> list[str]:
        """What limits the threshold: too few nominal scores for the rate, or none at all."""
        return nominal_score_warnings(len(self.scores), false_alarm_rate)



class Calibrated:
    """What a fitted model with a `calibration_` answers about it: its nominal statistics, its threshold and
    warnings at a false-alarm rate (by default its own `false_alarm_rate`). Detectors and ensembles alike."""

    false_alarm_rate: float
    calibration_: NominalCalibration

    @property
    def nominal_scores_(self) -> np.ndarray:
        """Scores of good images the model did not learn from: the threshold's basis."""
        return self.calibration_.scores

    @property
    def nominal_map_range_(self) -> tuple[float, float] | None:
        """(typical pixel, highest peak) of nominal maps: the heatmaps' colour scale."""
        return self.calibration_.map_range

    @property
    def nominal_source_(self) -> str:
        return self.calibration_.source

    def decision_threshold(self, false_alarm_rate: float | None = None) -> Threshold | None:
        """The threshold that flags `false_alarm_rate` (default: the model's own) of the nominal good images;
        None without them. Test images never enter it."""
        self._check_fitted()
        return self.calibration_.threshold(self._rate(false_alarm_rate))

    def nominal_warnings(self, false_alarm_rate: float | None = None) -> list[str]:
        """What limits the threshold: too few nominal scores for the false-alarm rate, or none at all."""
        self._check_fitted()
        return self.calibration_.warnings(self._rate(false_alarm_rate))

    def _rate(self, false_alarm_rate: float | None) -> float:
        rate = self.false_alarm_rate if false_alarm_rate is None else false_alarm_rate
        validate_false_alarm_rate(rate)
        return rate

    def _check_fitted(self) -> None:
        if not hasattr(self, "calibration_"):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted: call fit(...) or load a saved model first"
            )
