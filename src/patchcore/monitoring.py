"""Score drift: recent scores against the nominal ones (false alarms beyond chance, population stability index)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import betainc

# Fewer recent scores than this say too little to warn on.
MIN_RECENT = 50
# The population stability index's usual reading: under 0.1 stable, 0.1-0.25 moving, over 0.25 shifted.
PSI_WARNING = 0.25
# Quantile bins of the nominal scores: few, so that ~100 nominal and ~100 recent scores fill each.
PSI_BINS = 5
# Warn when this many recent images above the threshold would happen by chance less often than this.
FALSE_ALARM_SURPRISE = 1e-3
# The two rules, as reports name them.
FALSE_ALARM_RULE = "false alarms beyond chance"
SHIFT_RULE = "score distribution moved up"


@dataclass(frozen=True)
class DriftReport:
    """How recent scores compare with the nominal scores the threshold was set on."""

    n_recent: int
    share_above_threshold: float | None  # None without a threshold
    false_alarm_rate: float
    false_alarm_p_value: float | None  # chance of at least that many above the threshold at the nominal rate
    psi: float | None  # population stability index, recent against nominal; None without nominal scores
    warning: bool
    reason: str
    median_shift: float | None = None  # median recent score / median nominal score - 1; None without either
    rules_fired: tuple[str, ...] = ()  # FALSE_ALARM_RULE, SHIFT_RULE

    def as_dict(self) -> dict:
        return asdict(self)


def population_stability_index(nominal: np.ndarray, recent: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI = sum over quantile bins of the nominal scores of (recent share - nominal share) * ln(ratio)."""
    edges = np.quantile(nominal, np.linspace(0, 1, bins + 1)[1:-1])
    nominal_share = np.bincount(np.searchsorted(edges, nominal, side="right"), minlength=bins) / len(nominal)
    recent_share = np.bincount(np.searchsorted(edges, recent, side="right"), minlength=bins) / len(recent)
    # An empty bin would make the logarithm infinite: half an observation stands in for it.
    nominal_share = np.maximum(nominal_share, 0.5 / len(nominal))
    recent_share = np.maximum(recent_share, 0.5 / len(recent))
    return float(np.sum((recent_share - nominal_share) * np.log(recent_share / nominal_share)))


def drift_report(nominal_scores: np.ndarray, recent_scores: np.ndarray, threshold: float | None,
                 false_alarm_rate: float) -> DriftReport:
    """Compare recent image scores with the nominal ones; warn when the images have moved.

    Two signs, either of which warns once `MIN_RECENT` scores are in: more recent images above the
    threshold than the false-alarm rate explains (binomial p < `FALSE_ALARM_SURPRISE`), or a population
    stability index over `PSI_WARNING` with the median score up (the whole distribution moved towards
    anomalous, even below the threshold).
    """
    recent = np.asarray(recent_scores, dtype=np.float64)
    nominal = np.asarray(nominal_scores, dtype=np.float64)
    share = p_value = None
    if threshold is not None and len(recent):
        above = int((recent > threshold).sum())
        share = above / len(recent)
        # P(at least `above` of len(recent) good images over the threshold): the binomial tail as the
        # incomplete beta function (scipy.stats would add 1.3 s to every start of the service).
        p_value = float(betainc(above, len(recent) - above + 1, false_alarm_rate)) if above else 1.0
    psi = population_stability_index(nominal, recent) if len(nominal) >= PSI_BINS and len(recent) else None
    shift = float(np.median(recent) / np.median(nominal) - 1) if len(recent) and len(nominal) else None
    if len(recent) < MIN_RECENT:
        return DriftReport(len(recent), share, false_alarm_rate, p_value, psi, False,
                           f"{len(recent)} recent scores: too few to judge (warnings from {MIN_RECENT})", shift)
    reasons, fired = [], []
    if p_value is not None and p_value < FALSE_ALARM_SURPRISE:
        fired.append(FALSE_ALARM_RULE)
        reasons.append(f"{FALSE_ALARM_RULE}: {share:.1%} of recent images above the threshold at a "
                       f"{false_alarm_rate:.1%} false-alarm rate (p = {p_value:.1e})")
    # Scores that moved down (images more like the bank than the nominal ones) are no cause for alarm.
    if psi is not None and psi > PSI_WARNING and shift > 0:
        fired.append(SHIFT_RULE)
        reasons.append(f"{SHIFT_RULE}: PSI {psi:.2f} > {PSI_WARNING}, median {shift:+.1%}")
    return DriftReport(len(recent), share, false_alarm_rate, p_value, psi, bool(reasons),
                       "; ".join(reasons) or "recent scores look like the nominal ones", shift, tuple(fired))


def model_drift(model, recent_scores: np.ndarray) -> DriftReport:
    """`drift_report` of a fitted detector's recent scores against its own nominal scores and threshold."""
    threshold = model.decision_threshold()
    # Suspicious nominal scores (images unlike the other good ones) set no threshold, and no baseline either.
    nominal = model.nominal_scores_[~model.calibration_.suspicious]
    return drift_report(nominal, recent_scores, None if threshold is None else threshold.value,
                        model.false_alarm_rate)
