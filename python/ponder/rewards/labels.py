"""ER-PRM step labels from rollouts (arXiv 2412.11006), with exact limits.

For a solution prefix ending at step ``t``, ``N`` completions are sampled from the policy and
checked; ``o_j`` in {0, 1} is the correctness of completion ``j``. The entropy-regularised label
is the soft maximum

    l_t = (1 / eta) * log( (1 / N) * sum_j exp(eta * o_j) )

which is the mean of the ``o_j`` as ``eta -> 0`` (soft labels) and their maximum as
``eta -> +inf`` (hard labels: "some completion succeeds", Math-Shepherd's hard estimate); a
negative ``eta`` gives a soft minimum, with the minimum as ``eta -> -inf``. ``eta`` is a real
number (the original code's integer ``eta`` is a bug, docs/prm.md).

The formula is evaluated in float64 as ``c + log1p(mean(expm1(eta * (o - c)))) / eta`` with
``c = max(o)`` (``min(o)`` for ``eta < 0``): every exponent is <= 0, so nothing overflows for any
``eta``, and ``expm1`` / ``log1p`` keep it exact to rounding as ``eta -> 0``, where the plain
formula loses all its digits to ``log(1 + tiny)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

__all__ = ["er_prm_label", "er_prm_labels", "first_error_labels"]


def _check_eta(fn: str, eta: object) -> float:
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise TypeError(f"{fn}: eta must be a real number, got {type(eta).__name__}")
    eta = float(eta)
    if math.isnan(eta):
        raise ValueError(f"{fn}: eta must not be NaN")
    return eta


def er_prm_label(outcomes: Sequence[float], eta: float) -> float:
    """The ER-PRM label of one prefix from the outcomes of its ``N`` rollouts.

    Parameters
    ----------
    outcomes : sequence of float
        ``[o_1, ..., o_N]``, usually 0 / 1 (bools are accepted); any finite reals work.
    eta : float
        The regularisation strength: any real number, or ``+-math.inf``. ``0`` gives the mean,
        ``inf`` the maximum, ``-inf`` the minimum, exactly.

    Returns
    -------
    float
        ``(1/eta) log mean exp(eta o)``, in ``[min(o), max(o)]``.
    """
    eta = _check_eta("er_prm_label", eta)
    if isinstance(outcomes, (str, bytes)) or not isinstance(outcomes, Sequence):
        raise TypeError(
            f"er_prm_label: outcomes must be a sequence of numbers, got {type(outcomes).__name__}"
        )
    values = []
    for o in outcomes:
        if not isinstance(o, numbers.Real):
            raise TypeError(f"er_prm_label: outcomes must be numbers, got {type(o).__name__}")
        o = float(o)
        if not math.isfinite(o):
            raise ValueError(f"er_prm_label: outcomes must be finite, got {o}")
        values.append(o)
    if not values:
        raise ValueError("er_prm_label: outcomes is empty (a label needs at least one rollout)")
    n = len(values)
    if eta == 0.0:
        return math.fsum(values) / n
    if eta == math.inf:
        return max(values)
    if eta == -math.inf:
        return min(values)
    c = max(values) if eta > 0 else min(values)
    # Each eta * (o - c) <= 0, so expm1 lies in [-1, 0] and its mean in [-1, 0]: no overflow.
    mean_m1 = math.fsum(math.expm1(eta * (o - c)) for o in values) / n
    label = c + math.log1p(mean_m1) / eta
    # Rounding can step a hair outside the exact bounds; the label is a probability downstream.
    return min(max(label, min(values)), max(values))


def er_prm_labels(rollouts: Sequence[Sequence[float]], eta: float) -> list[float]:
    """:func:`er_prm_label` of each prefix: ``rollouts[t]`` holds the outcomes from step ``t``."""
    return [er_prm_label(o, eta) for o in rollouts]


def first_error_labels(step_correct: Sequence[bool]) -> list[float]:
    """Hard labels from step-level verification: step ``t`` is good (1.0) iff steps ``1..t`` are
    all correct, so every step from the first wrong one on is bad (0.0).

    These are the ``eta -> inf`` labels of a perfect rollout policy: after an uncorrected error
    no completion reaches the right answer, before it the correct continuation does.
    """
    out, ok = [], True
    for flag in step_correct:
        ok = ok and bool(flag)
        out.append(1.0 if ok else 0.0)
    return out
