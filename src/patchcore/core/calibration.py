"""Nominal calibration: scores and map range of good images a model did not learn from, and what follows from
them (the threshold at a false-alarm rate, its warnings, the heatmap scale). Shared by every method and ensembles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from patchcore.core.thresholds import (SUSPICIOUS_Z, Threshold, nominal_score_warnings, suspicious,
                                       threshold_at_false_alarm_rate, validate_false_alarm_rate)
from patchcore.errors import NotFittedError

NO_NOMINAL_SOURCE = "none"
# Suspicious images named in a warning; the model lists them all.
SUSPICIOUS_LISTED = 5

# What the calibration keeps of a nominal anomaly map: its typical pixel and its peak.
MapSummary = tuple[float, float]


def summarise(anomaly_map: np.ndarray) -> MapSummary:
    """(median, maximum) of a map, its NaN pixels (outside the inspected region) ignored."""
    return float(np.nanmedian(anomaly_map)), float(np.nanmax(anomaly_map))


@dataclass(frozen=True, eq=False)
class NominalCalibration:
    """Nominal image scores, the heatmap range of nominal maps (typical pixel, highest peak), where they came from,
    each nominal map's peak (the basis of the pixel threshold that outlines defect regions), and each nominal
    image's name (a file's path, or "image N")."""

    scores: np.ndarray
    map_range: tuple[float, float] | None = None
    source: str = NO_NOMINAL_SOURCE
    peaks: np.ndarray = field(default_factory=lambda: np.empty(0))
    names: tuple[str, ...] = ()

    @classmethod
    def empty(cls) -> NominalCalibration:
        return cls(np.empty(0))

    @classmethod
    def of(cls, scores: Sequence[float], maps: Sequence[MapSummary], source: str,
           names: Sequence[str] = ()) -> NominalCalibration:
        """From good images' scores, the `summarise`d anomaly maps, and the images' names."""
        return cls.empty().extended(scores, maps, source, names)

    def extended(self, scores: Sequence[float], maps: Sequence[MapSummary], source: str,
                 names: Sequence[str] = ()) -> NominalCalibration:
        """With more nominal images (an update's): their scores join the threshold's basis; the heatmap range
        keeps its typical pixel and takes the highest peak."""
        if len(scores) == 0:
            return self
        medians = [median for median, _ in maps]
        peaks = [peak for _, peak in maps]
        all_peaks = np.concatenate([self.peaks, np.asarray(peaks, dtype=np.float64)])
        if self.map_range is not None:
            peaks.append(self.map_range[1])
            medians = [self.map_range[0]]
        all_names = (*self.names, *names) if len(names) == len(scores) and len(self.names) == len(self.scores) else ()
        return NominalCalibration(np.concatenate([self.scores, np.asarray(scores, dtype=np.float64)]),
                                  (float(np.median(medians)), float(max(peaks))), source, all_peaks, all_names)

    @property
    def suspicious(self) -> np.ndarray:
        """Which nominal scores lie far above the others (`thresholds.suspicious`): they never set a threshold."""
        return suspicious(self.scores)

    @property
    def suspicious_names(self) -> list[str]:
        """The names of the images whose nominal scores are `suspicious`."""
        if len(self.names) != len(self.scores):
            return [f"nominal image {i}" for i in np.flatnonzero(self.suspicious)]
        return [self.names[i] for i in np.flatnonzero(self.suspicious)]

    def threshold(self, false_alarm_rate: float) -> Threshold | None:
        """The threshold that new good images exceed at `false_alarm_rate`, estimated from the nominal scores
        without the suspicious ones; None without them."""
        return threshold_at_false_alarm_rate(self.scores, false_alarm_rate, self.suspicious)

    def region_threshold(self, false_alarm_rate: float) -> float | None:
        """The map value above which pixels form defect regions: the map peak that good images exceed at
        `false_alarm_rate`, estimated like the image threshold from the nominal maps' peaks, so a good image has a
        region about that often. None without nominal map peaks (a model saved before they were kept)."""
        excluded = self.suspicious if len(self.peaks) == len(self.scores) else None
        threshold = threshold_at_false_alarm_rate(self.peaks, false_alarm_rate, excluded)
        return None if threshold is None else threshold.value

    def warnings(self, false_alarm_rate: float) -> list[str]:
        """What limits the threshold (too few nominal scores for the rate, or none at all), and which nominal
        images look unlike the others."""
        warnings = nominal_score_warnings(self.threshold(false_alarm_rate), len(self.scores))
        names = self.suspicious_names
        if names:
            listed = ", ".join(names[:SUSPICIOUS_LISTED]) + (", ..." if len(names) > SUSPICIOUS_LISTED else "")
            warnings.append(f"{len(names)} of {len(self.scores)} nominal images score far above the others (over "
                            f"{SUSPICIOUS_Z:g} robust standard deviations) and do not set the threshold; they may be "
                            f"defective (fit --exclude-suspicious leaves them out of the model): {listed}")
        return warnings


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

    @property
    def suspicious_training_images_(self) -> list[str]:
        """Good images unlike the others, by their nominal scores (`thresholds.suspicious`): the ones left out of
        the model (`exclude_suspicious`), then the nominal ones that do not set the threshold."""
        return [*getattr(self, "excluded_images_", []), *self.calibration_.suspicious_names]

    def decision_threshold(self, false_alarm_rate: float | None = None) -> Threshold | None:
        """The threshold that flags `false_alarm_rate` (default: the model's own) of the nominal good images;
        None without them. Test images never enter it."""
        self._check_fitted()
        return self.calibration_.threshold(self._rate(false_alarm_rate))

    def decision_function(self, images, false_alarm_rate: float | None = None) -> np.ndarray:
        """Each image's score minus the threshold at `false_alarm_rate` (default: the model's own): positive is a
        defect, negative good, its size how far from the line. The sign follows `score_samples` (higher is more
        anomalous), the opposite of scikit-learn's outlier detectors, where negative means outlier."""
        threshold = self.decision_threshold(false_alarm_rate)
        if threshold is None:
            raise ValueError("this model has no threshold (no good images were scored to set one): use score_samples")
        return self.score_samples(images) - threshold.value

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
