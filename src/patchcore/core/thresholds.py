"""Decision thresholds: from nominal good images at a false-alarm rate, and F1-optimal on labelled data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import precision_recall_curve

from patchcore.params import Range

DEFAULT_FALSE_ALARM_RATE = 0.01


@dataclass(frozen=True)
class Threshold:
    """A score threshold with the spread of good scores that scales the normalised score."""

    value: float
    false_alarm_rate: float
    nominal_spread: float

    def is_anomalous(self, score: float) -> bool:
        return bool(score > self.value)

    def normalise(self, score: float) -> float:
        """A logistic of (score - threshold) / spread of good scores: 0.5 at the threshold, in (0, 1)."""
        z = (score - self.value) / self.nominal_spread
        return float(0.5 * (1.0 + np.tanh(0.5 * z)))  # the logistic, without overflow for large |z|


FALSE_ALARM_RATES = Range(0.0, 1.0, low_open=True, high_open=True)


def validate_false_alarm_rate(rate: float) -> None:
    problem = FALSE_ALARM_RATES.problem(rate)
    if problem:
        raise ValueError(f"false_alarm_rate {problem}, got {rate!r}")


def threshold_at_false_alarm_rate(nominal_scores: np.ndarray, rate: float) -> Threshold | None:
    """The smallest held-out good score that at most `rate` of the held-out good scores exceed.

    None without held-out scores. With n held-out images the rate is met in steps of 1/n: at 1 % and
    fewer than 100 images the threshold is the highest good score seen.
    """
    validate_false_alarm_rate(rate)
    scores = np.asarray(nominal_scores, dtype=np.float64)
    if scores.size == 0:
        return None
    value = float(np.quantile(scores, 1.0 - rate, method="higher"))
    spread = float(scores.std(ddof=1)) if scores.size > 1 else 0.0
    if not spread > 0:
        spread = max(abs(value), 1.0) * 1e-3  # one good image (or identical ones): a steep but finite slope
    return Threshold(value, rate, spread)


def nominal_score_warnings(count: int, rate: float) -> list[str]:
    """What limits a threshold made from `count` nominal scores at false-alarm `rate`: none at all, or too few."""
    if count == 0:
        return ["no nominal scores (too few good images to hold any out): predictions carry no good/defect "
                "decision; give more images, --validation DIR, or --holdout-fraction"]
    if count * rate < 1:
        return [f"{count} nominal scores cannot resolve a {rate:.1%} false-alarm rate: the threshold is the highest "
                f"good score seen, so the rate it promises is at best 1 in {count + 1}"]
    return []


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 for `score >= threshold` on labelled images (evaluation only)."""
    labels = np.asarray(labels, dtype=int)
    if labels.min() == labels.max():
        raise ValueError("the F1-optimal threshold needs both good and defective images")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last (precision, recall) pair has no threshold: it is the "predict nothing" end.
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])
