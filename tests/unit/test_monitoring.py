"""Drift reports: the false-alarm surprise is the exact binomial tail."""

from math import comb

import numpy as np
import pytest

from patchcore.monitoring import FALSE_ALARM_RULE, FALSE_ALARM_SURPRISE, drift_report


@pytest.mark.parametrize("above", [0, 1, 3, 12, 60])
def test_false_alarm_p_value_is_the_binomial_tail(above: int) -> None:
    nominal = np.linspace(0.0, 1.0, 200)
    recent = np.r_[np.full(above, 2.0), np.full(60 - above, 0.5)]  # `above` of 60 over the threshold 1.5
    report = drift_report(nominal, recent, threshold=1.5, false_alarm_rate=0.05)
    # P(at least `above` of 60 images over the threshold when each is with probability 5 %)
    tail = sum(comb(60, k) * 0.05**k * 0.95 ** (60 - k) for k in range(above, 61))
    assert report.false_alarm_p_value == pytest.approx(tail, rel=1e-9)
    assert (FALSE_ALARM_RULE in report.rules_fired) == (tail < FALSE_ALARM_SURPRISE)
