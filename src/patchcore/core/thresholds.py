"""Decision thresholds: from nominal good images at a false-alarm rate, and F1-optimal on labelled data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import betaincinv

from patchcore.params import Range

DEFAULT_FALSE_ALARM_RATE = 0.01


# The false-alarm rate's interval on new good images: a two-sided 95 % Clopper-Pearson interval.
INTERVAL_CONFIDENCE = 0.95
# A nominal score this many robust standard deviations (1.4826 MAD) above the median names its image as unlike
# the others. Measured on 8 offline categories (docs/results.md): at 4, 0 to 1 % of clean training images are
# named, and 23-47 % of real defective cells (95 % of brick's defects) planted among them; at 5, 0-0.3 % and
# 17-31 %; at 3.5, up to 7 %.
SUSPICIOUS_Z = 4.0
# The upper tail is modelled from this share of the nominal scores (at least TAIL_MIN of them, and at most half:
# from TAIL_MIN_SCORES scores on) ...
TAIL_SHARE = 0.25
TAIL_MIN = 10
TAIL_MIN_SCORES = 20
# ... where the empirical quantile rests on fewer than this many scores above it.
EMPIRICAL_MIN_ABOVE = 5
# A tail fit is rejected when its shape is beyond what probability-weighted moments estimate (a very heavy tail:
# the estimate would rest on the fit alone) or a Kolmogorov-Smirnov test rejects it.
TAIL_MAX_SHAPE = 0.5
TAIL_MIN_P_VALUE = 0.05


@dataclass(frozen=True)
class Threshold:
    """A score threshold with the spread of good scores that scales the normalised score, how it was set, and the
    95 % interval of the false-alarm rate it gives on new good images (from how many nominal scores exceed it)."""

    value: float
    false_alarm_rate: float
    nominal_spread: float
    method: str = "empirical quantile"
    rate_interval: tuple[float, float] | None = None

    def is_anomalous(self, score: float) -> bool:
        return bool(score > self.value)

    def normalise(self, score: float) -> float:
        """A logistic of (score - threshold) / spread of good scores: 0.5 at the threshold, in (0, 1)."""
        z = (score - self.value) / self.nominal_spread
        return float(0.5 * (1.0 + np.tanh(0.5 * z)))  # the logistic, without overflow for large |z|

    def describe(self) -> str:
        low, high = self.rate_interval or (np.nan, np.nan)
        return (f"{self.value:.4g} at a {self.false_alarm_rate:.1%} false-alarm rate ({self.method}; on new good "
                f"images {low:.1%} to {high:.1%}, 95 % interval)")


FALSE_ALARM_RATES = Range(0.0, 1.0, low_open=True, high_open=True)


def validate_false_alarm_rate(rate: float) -> None:
    problem = FALSE_ALARM_RATES.problem(rate)
    if problem:
        raise ValueError(f"false_alarm_rate {problem}, got {rate!r}")


def robust_z(scores: np.ndarray) -> np.ndarray:
    """(score - median) / (1.4826 MAD): standard deviations from the middle, as a normal sample would have them,
    without letting the outliers it is meant to find widen it."""
    scores = np.asarray(scores, dtype=np.float64)
    median = np.median(scores)
    spread = 1.4826 * np.median(np.abs(scores - median))
    if not spread > 0:
        spread = max(float(np.std(scores)), abs(float(median)) * 1e-6, 1e-12)
    return (scores - median) / spread


def suspicious(scores: np.ndarray) -> np.ndarray:
    """Which nominal scores lie far above the rest (`SUSPICIOUS_Z`): images unlike the other good ones, such as a
    defective part in the good folder. Too few scores (under 8) name none."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size < 8:
        return np.zeros(scores.size, dtype=bool)
    return robust_z(scores) > SUSPICIOUS_Z


def rate_interval(exceeding: int, count: int, confidence: float = INTERVAL_CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson interval of a rate seen `exceeding` times in `count`: it holds whatever the score
    distribution, as long as new good images are like the nominal ones."""
    tail = (1 - confidence) / 2
    # The beta distribution's quantiles (scipy.stats.beta.ppf) as the inverse incomplete beta function itself:
    # scipy.stats takes a second to import, and every predict reads a threshold.
    low = 0.0 if exceeding == 0 else float(betaincinv(exceeding, count - exceeding + 1, tail))
    high = 1.0 if exceeding == count else float(betaincinv(exceeding + 1, count - exceeding, 1 - tail))
    return low, high


def generalized_pareto_pwm(excesses: np.ndarray) -> tuple[float, float]:
    """(shape, scale) of a generalized Pareto distribution fitted to `excesses` by probability-weighted moments
    (Hosking and Wallis, 1987): steadier than maximum likelihood on the 10 to 100 excesses a threshold has
    (on 40 gamma-distributed scores: 5 of 500 fits rejected against 23, and 1 % thresholds that give 2.2 % on
    new scores on average against 2.7 %). Valid for shapes under 0.5."""
    ordered = np.sort(excesses)
    plotting = (np.arange(1, ordered.size + 1) - 0.35) / ordered.size
    first, second = ordered.mean(), np.mean((1.0 - plotting) * ordered)
    shape = 2.0 - first / (first - 2.0 * second)
    return float(shape), float(2.0 * first * second / (first - 2.0 * second))


def tail_quantile(scores: np.ndarray, rate: float) -> float | None:
    """The score that new good images exceed with probability `rate`, from a generalized Pareto distribution
    fitted to the scores' upper tail (peaks over a threshold); None when there are too few scores or the fit is
    rejected."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    if ordered.size < TAIL_MIN_SCORES:
        return None
    tail = max(TAIL_MIN, round(TAIL_SHARE * ordered.size))
    base = ordered[-tail - 1]
    excesses = ordered[-tail:] - base
    if not excesses.max() > 0:
        return None
    shape, scale = generalized_pareto_pwm(excesses)
    if not (np.isfinite(shape) and scale > 0) or shape >= TAIL_MAX_SHAPE:
        return None
    from scipy.stats import genpareto, kstest  # only where a tail is fitted: a second of import otherwise spent

    if kstest(excesses, genpareto(shape, 0.0, scale).cdf).pvalue < TAIL_MIN_P_VALUE:
        return None
    # P(score > base) = tail / n; within the tail, P(excess > x) follows the fitted distribution.
    return float(base + genpareto.ppf(1.0 - rate * ordered.size / tail, shape, 0.0, scale))


def threshold_at_false_alarm_rate(nominal_scores: np.ndarray, rate: float,
                                  excluded: np.ndarray | None = None) -> Threshold | None:
    """The threshold that new good images exceed at `rate`, from nominal good scores, leaving out `excluded` ones
    (images named suspicious); None without scores.

    Where at least `EMPIRICAL_MIN_ABOVE` scores lie above it, the empirical quantile. Below that (1 % from fewer
    than 500 images) the quantile rests on a handful of images, and below 1 / rate images on the highest alone,
    which promises only 1 in n + 1: the upper tail is modelled instead (`tail_quantile`); where that fit is
    rejected, the empirical quantile stands, and the method says so.
    """
    validate_false_alarm_rate(rate)
    scores = np.asarray(nominal_scores, dtype=np.float64)
    if excluded is not None and excluded.any() and (~excluded).any():
        scores = scores[~excluded]
    if scores.size == 0:
        return None
    method = "empirical quantile"
    value = float(np.quantile(scores, 1.0 - rate, method="higher"))
    if scores.size * rate < EMPIRICAL_MIN_ABOVE:
        tail = tail_quantile(scores, rate)
        if tail is not None:
            value, method = tail, f"tail fit (generalized Pareto) to {scores.size} nominal scores"
        elif scores.size * rate < 1:  # the empirical quantile is the highest score
            why = "too few for a tail fit" if scores.size < TAIL_MIN_SCORES else "tail fit rejected"
            method = f"highest of {scores.size} nominal scores ({why})"
    spread = float(scores.std(ddof=1)) if scores.size > 1 else 0.0
    if not spread > 0:
        spread = max(abs(value), 1.0) * 1e-3  # one good image (or identical ones): a steep but finite slope
    return Threshold(value, rate, spread, method, rate_interval(int((scores > value).sum()), scores.size))


def nominal_score_warnings(threshold: Threshold | None, count: int) -> list[str]:
    """What limits a threshold made from `count` nominal scores: none at all, or too few to model their tail."""
    if threshold is None:
        return ["no nominal scores (too few good images to hold any out): predictions carry no good/defect "
                "decision; give more images, --validation DIR, or --holdout-fraction"]
    if threshold.method.startswith("highest"):
        return [f"{count} nominal scores cannot resolve a {threshold.false_alarm_rate:.1%} false-alarm rate and "
                f"their tail could not be modelled ({threshold.method}): the threshold is the highest good score "
                f"seen, so the rate it promises is at best 1 in {count + 1}"]
    return []


def f1_optimal_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 for `score >= threshold` on labelled images (evaluation only)."""
    labels = np.asarray(labels, dtype=int)
    if labels.min() == labels.max():
        raise ValueError("the F1-optimal threshold needs both good and defective images")
    from sklearn.metrics import precision_recall_curve  # evaluation only: kept off the predict path's imports

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The last (precision, recall) pair has no threshold: it is the "predict nothing" end.
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = int(np.argmax(f1))
    return float(thresholds[best]), float(f1[best])
