"""ER-PRM labels: the formula against hand-computed values, its exact limits, no overflow."""

import math

import pytest
from ponder.rewards import er_prm_label, er_prm_labels, first_error_labels


def test_hand_computed_values():
    # (1/eta) log(mean exp(eta o)) for o = (1, 0, 0, 1), eta = 1: log((2e + 2) / 4).
    assert er_prm_label([1, 0, 0, 1], 1.0) == pytest.approx(math.log((2 * math.e + 2) / 4),
                                                             rel=1e-14)
    # eta = 2, o = (1, 0, 0, 0): (1/2) log((e^2 + 3) / 4).
    assert er_prm_label([1, 0, 0, 0], 2.0) == pytest.approx(0.5 * math.log((math.e**2 + 3) / 4),
                                                             rel=1e-14)
    # A real-valued eta (the original code's type=int would refuse 0.5).
    assert er_prm_label([True, False], 0.5) == pytest.approx(2 * math.log((math.exp(0.5) + 1) / 2),
                                                             rel=1e-14)
    # Negative eta: a soft minimum, symmetric to the soft maximum.
    assert er_prm_label([1, 0], -2.0) == pytest.approx(1 - er_prm_label([0, 1], 2.0), rel=1e-14)


def test_exact_limits():
    o = [1, 0, 0, 1, 0, 0, 0, 1]
    assert er_prm_label(o, 0) == 3 / 8
    assert er_prm_label(o, math.inf) == 1.0
    assert er_prm_label(o, -math.inf) == 0.0
    assert er_prm_label([0, 0, 0], math.inf) == 0.0
    # Approaching the limits continuously, with no loss of digits near eta = 0.
    for eta in (1e-3, 1e-8, 1e-12, 1e-300, -1e-300):
        assert er_prm_label(o, eta) == pytest.approx(3 / 8, abs=max(abs(eta), 1e-15))
    # Near +inf: l = 1 + log(3/8) / eta exactly (the three 1s dominate).
    for eta in (50.0, 1e3, 1e6, 1e300, 1.7e308):
        got = er_prm_label(o, eta)
        assert math.isfinite(got)
        assert got == pytest.approx(1 + math.log(3 / 8) / eta, rel=1e-12)


def test_monotone_in_eta_and_bounded():
    o = [1, 0, 0, 1, 0]
    etas = [-50, -5, -1, -0.1, 0, 0.1, 1, 5, 50]
    labels = [er_prm_label(o, e) for e in etas]
    assert labels == sorted(labels)
    assert all(0 <= x <= 1 for x in labels)


def test_vector_form_and_first_error():
    assert er_prm_labels([[1, 1], [0, 1], [0, 0]], 0) == [1.0, 0.5, 0.0]
    assert first_error_labels([True, True, False, True]) == [1.0, 1.0, 0.0, 0.0]
    assert first_error_labels([]) == []


@pytest.mark.parametrize("bad, exc", [
    ([], ValueError), ([0, float("nan")], ValueError), ([0, math.inf], ValueError),
    ("01", TypeError), ([0, "1"], TypeError),
])
def test_bad_outcomes(bad, exc):
    with pytest.raises(exc, match="er_prm_label: outcomes"):
        er_prm_label(bad, 1.0)


@pytest.mark.parametrize("eta, exc", [(float("nan"), ValueError), ("1", TypeError),
                                      (True, TypeError), (None, TypeError)])
def test_bad_eta(eta, exc):
    with pytest.raises(exc, match="eta"):
        er_prm_label([0, 1], eta)
