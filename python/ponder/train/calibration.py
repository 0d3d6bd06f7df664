"""Calibration metrics for any classifier or language model: accuracy, expected calibration error
(equal-width and equal-mass bins), negative log-likelihood, Brier score, reliability diagrams, and
FIRST's temperature search (:func:`calibrate_temperature`).

Everything takes plain tensors (or anything ``torch.as_tensor`` reads), so it works on a model's
next-token distributions (:func:`calibration_metrics`, from probabilities ``[N, C]``) as well as on
yes/no judgements such as "the final answer is right" (:func:`binary_calibration_metrics`, from a
confidence ``[N]`` and a correctness flag ``[N]``).

    from ponder.train.calibration import calibration_metrics, reliability_diagram
    m = calibration_metrics(probs, labels)          # {"accuracy", "ece", "ece_mass", "nll", "brier", "n"}
    reliability_diagram(probs.max(-1).values, probs.argmax(-1) == labels, "diagram.png")

Binning. Equal-width: ``n_bins`` bins of ``[0, 1]``, a confidence ``p`` goes to bin
``min(floor(p n_bins + 1e-6), n_bins - 1)`` (so 1.0 is in the last bin, 0.1 in the second of ten,
and a float32 0.7, 0.69999998, in the eighth).
Equal-mass: the examples sorted by confidence, cut into ``n_bins`` runs of equal size (sizes
differ by at most one; ties may straddle a cut). ECE ``= sum_b |B_b| / N |accuracy_b -
confidence_b|`` over non-empty bins. matplotlib is imported only by :func:`reliability_diagram`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..figures import pyplot, save
from ..validation import check_int, check_real

__all__ = [
    "BINNINGS",
    "Bins",
    "TemperatureSearch",
    "binary_calibration_metrics",
    "calibrate_temperature",
    "calibration_metrics",
    "expected_calibration_error",
    "reliability_bins",
    "reliability_diagram",
    "topk_confidence",
]

BINNINGS = ("width", "mass")


class Bins(NamedTuple):
    """Per-bin statistics (``[n_bins]`` float64 each; empty bins have count 0 and NaN means).
    ``low`` / ``high`` are the bin edges (equal-mass: the smallest and largest confidence in it)."""

    count: Tensor
    confidence: Tensor
    accuracy: Tensor
    low: Tensor
    high: Tensor


def _confidence_and_correct(fn: str, confidence: object, correct: object) -> tuple[Tensor, Tensor]:
    conf = torch.as_tensor(confidence).detach().to("cpu", torch.float64).reshape(-1)
    ok = torch.as_tensor(correct).detach().to("cpu").reshape(-1)
    if conf.numel() != ok.numel():
        raise ValueError(f"{fn}: confidence and correct must have the same number of elements, "
                         f"got {conf.numel()} and {ok.numel()}")
    if conf.numel() == 0:
        raise ValueError(f"{fn}: confidence is empty")
    if torch.isnan(conf).any() or (conf < 0).any() or (conf > 1).any():
        raise ValueError(f"{fn}: confidence must hold probabilities in [0, 1] (no NaN); got "
                         f"values in [{conf.min().item()}, {conf.max().item()}]")
    if ok.dtype != torch.bool:
        if not ((ok == 0) | (ok == 1)).all():
            raise ValueError(f"{fn}: correct must be booleans or 0 / 1")
        ok = ok != 0
    return conf, ok.to(torch.float64)


def _check_binning(fn: str, n_bins: object, binning: object) -> int:
    n = check_int(fn, "n_bins", n_bins, minimum=1)
    if binning not in BINNINGS:
        raise ValueError(f"{fn}: binning must be one of {BINNINGS}, got {binning!r}")
    return n


def reliability_bins(confidence, correct, n_bins: int = 10, binning: str = "width") -> Bins:
    """Group predictions by confidence: per bin, the count, mean confidence and accuracy.

    Args:
        confidence: ``[N]`` probabilities in ``[0, 1]`` (e.g. the top-1 probability).
        correct: ``[N]`` bool (or 0 / 1): whether that prediction was right.
        n_bins: number of bins (>= 1).
        binning: ``"width"`` (equal-width bins of [0, 1]) or ``"mass"`` (equal counts).
    """
    fn = "reliability_bins"
    n = _check_binning(fn, n_bins, binning)
    conf, ok = _confidence_and_correct(fn, confidence, correct)
    if binning == "width":
        # 1e-6 of slack: a float32 0.7 is 0.69999998, which belongs with 0.7, not below it
        index = torch.clamp((conf * n + 1e-6).floor().long(), max=n - 1)
        edges = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
        low, high = edges[:-1], edges[1:]
    else:
        order = torch.argsort(conf, stable=True)
        index = torch.empty_like(order)
        for b, run in enumerate(torch.tensor_split(order, n)):
            index[run] = b
        low = torch.full((n,), math.nan, dtype=torch.float64)
        high = low.clone()
    count = torch.zeros(n, dtype=torch.float64).index_add_(0, index, torch.ones_like(conf))
    sum_conf = torch.zeros(n, dtype=torch.float64).index_add_(0, index, conf)
    sum_ok = torch.zeros(n, dtype=torch.float64).index_add_(0, index, ok)
    filled = count > 0
    mean_conf = torch.where(filled, sum_conf / count.clamp(min=1), math.nan)
    accuracy = torch.where(filled, sum_ok / count.clamp(min=1), math.nan)
    if binning == "mass":
        for b in range(n):
            if filled[b]:
                members = conf[index == b]
                low[b], high[b] = members.min(), members.max()
    return Bins(count, mean_conf, accuracy, low, high)


def expected_calibration_error(confidence, correct, n_bins: int = 10,
                               binning: str = "width") -> float:
    """ECE ``= sum_b |B_b| / N |accuracy_b - confidence_b|`` (see the module docstring for the
    bins). ``confidence``, ``correct``: ``[N]``; returns a float in ``[0, 1]``."""
    bins = reliability_bins(confidence, correct, n_bins, binning)
    filled = bins.count > 0
    gap = (bins.accuracy[filled] - bins.confidence[filled]).abs()
    return float((bins.count[filled] * gap).sum() / bins.count.sum())


def calibration_metrics(probs, labels, n_bins: int = 10) -> dict[str, float]:
    """Accuracy and calibration of categorical predictions.

    Args:
        probs: ``[N, C]`` probabilities (rows sum to 1; e.g. a softmax over the vocabulary).
        labels: ``[N]`` the true classes, in ``[0, C)``.
        n_bins: bins of the two ECEs.

    Returns:
        ``{"n", "accuracy", "ece" (equal-width), "ece_mass" (equal-mass), "nll" (mean
        ``-log p[label]``, natural log, probabilities clamped at 1e-12), "brier" (mean
        ``sum_c (p_c - 1[c = label])^2``, in [0, 2]), "confidence" (mean top-1 probability)}``.
        Confidence is the top-1 probability, correct means top-1 == label (ties: the smaller
        class, as ``argmax``).
    """
    fn = "calibration_metrics"
    p = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).detach().to("cpu")
    if p.dim() != 2 or p.shape[0] == 0 or p.shape[1] < 1:
        raise ValueError(f"{fn}: probs must have shape [N >= 1, C >= 1], got {tuple(p.shape)}")
    if y.dim() != 1 or y.shape[0] != p.shape[0] or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{fn}: labels must be integer class ids of shape [N = {p.shape[0]}], "
                         f"got {y.dtype} {tuple(y.shape)}")
    if (y < 0).any() or (y >= p.shape[1]).any():
        raise ValueError(f"{fn}: labels must be in [0, {p.shape[1]}), got [{y.min().item()}, "
                         f"{y.max().item()}]")
    if torch.isnan(p).any() or (p < 0).any() or ((p.sum(-1) - 1).abs() > 1e-3).any():
        raise ValueError(f"{fn}: probs must be non-negative rows summing to 1 (got row sums in "
                         f"[{p.sum(-1).min().item():.4g}, {p.sum(-1).max().item():.4g}]); "
                         "pass softmax(logits), not logits or log-probabilities")
    y = y.long()
    conf, top = p.max(-1)
    correct = top == y
    p_label = p.gather(1, y[:, None])[:, 0]
    onehot = torch.zeros_like(p).scatter_(1, y[:, None], 1.0)
    return {
        "n": int(p.shape[0]),
        "accuracy": float(correct.double().mean()),
        "confidence": float(conf.mean()),
        "ece": expected_calibration_error(conf, correct, n_bins, "width"),
        "ece_mass": expected_calibration_error(conf, correct, n_bins, "mass"),
        "nll": float(-p_label.clamp(min=1e-12).log().mean()) + 0.0,  # no "-0.0"
        "brier": float(((p - onehot) ** 2).sum(-1).mean()),
    }


def binary_calibration_metrics(confidence, correct, n_bins: int = 10) -> dict[str, float]:
    """Calibration of yes/no confidences (e.g. "this final answer is right").

    Args:
        confidence: ``[N]`` the probability the model gives to being right.
        correct: ``[N]`` whether it was.

    Returns:
        ``{"n", "accuracy" (mean correct), "confidence" (mean), "ece", "ece_mass", "nll" (binary
        log loss, clamped at 1e-12), "brier" (mean ``(confidence - correct)^2``, in [0, 1])}``.
    """
    conf, ok = _confidence_and_correct("binary_calibration_metrics", confidence, correct)
    likelihood = torch.where(ok > 0, conf, 1 - conf).clamp(min=1e-12)
    return {
        "n": int(conf.numel()),
        "accuracy": float(ok.mean()),
        "confidence": float(conf.mean()),
        "ece": expected_calibration_error(conf, ok, n_bins, "width"),
        "ece_mass": expected_calibration_error(conf, ok, n_bins, "mass"),
        "nll": float(-likelihood.log().mean()) + 0.0,
        "brier": float(((conf - ok) ** 2).mean()),
    }


def reliability_diagram(confidence, correct, path: str | Path, *, n_bins: int = 10,
                        binning: str = "width", title: str | None = None) -> Path:
    """Write a reliability diagram (accuracy against confidence per bin, with the diagonal and
    the bin counts) as a PNG to ``path``; returns the path. Needs matplotlib (imported here)."""
    bins = reliability_bins(confidence, correct, n_bins, binning)
    ece = expected_calibration_error(confidence, correct, n_bins, binning)
    plt = pyplot("reliability_diagram")
    filled = (bins.count > 0).numpy()
    conf = bins.confidence.numpy()[filled]
    acc = bins.accuracy.numpy()[filled]
    counts = bins.count.numpy()[filled]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(4.5, 5.5), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect")
    width = 0.8 / n_bins
    top.bar(conf, acc, width=width, color="tab:blue", alpha=0.8, label="accuracy")
    top.plot(conf, acc, "o", color="tab:blue", markersize=3)
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"{title + ': ' if title else ''}ECE {ece:.3f} ({binning} bins)", fontsize=9)
    bottom.bar(conf, counts, width=width, color="0.4")
    bottom.set_yscale("log")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("count")
    return save(fig, path)


def topk_confidence(teacher_logprobs, temperature_c: float = 1.0) -> Tensor:
    """FIRST's rescaled teacher, ``P' = softmax(logprobs / c)`` over the stored top-k.

    Args:
        teacher_logprobs: ``[N, k]`` log-probabilities (``-inf`` allowed, not a whole row).
        temperature_c: ``c > 0``; ``c < 1`` sharpens, ``c > 1`` flattens.

    Returns:
        ``[N, k]`` float64 probabilities (rows sum to 1).
    """
    c = check_real("topk_confidence", "temperature_c", temperature_c, positive=True)
    lp = torch.as_tensor(teacher_logprobs).detach().to("cpu", torch.float64)
    return torch.softmax(lp / c, dim=-1)


class TemperatureSearch(NamedTuple):
    """The result of :func:`calibrate_temperature`: the chosen ``c``, its ECE, the ECE at c = 1
    and every ``(c, ece)`` tried, in the order tried."""

    temperature_c: float
    ece: float
    ece_at_1: float
    tried: list[tuple[float, float]]


def _grid(fn: str, name: str, values: Sequence[float]) -> list[float]:
    out = [check_real(fn, name, v, positive=True) for v in values]
    if not out:
        raise ValueError(f"{fn}: {name} is empty")
    return out


def calibrate_temperature(teacher_ids, teacher_logprobs, labels, *,
                          coarse: Sequence[float] | None = None, fine_step: float = 0.02,
                          fine_span: float | None = None, n_bins: int = 10) -> TemperatureSearch:
    """FIRST's "trustworthy maximisation": the ``c`` minimising the ECE of the rescaled teacher.

    On a validation split the teacher's top-1 after rescaling, ``softmax(logprobs / c)[0]``, is
    the confidence and ``teacher_ids[:, 0] == labels`` the correctness; the ECE uses ``n_bins``
    equal-width bins (the paper's 10). The search is the paper's: a coarse grid (by default
    0.1, 0.2, ..., 1.0), then a fine grid of step ``fine_step`` within ``fine_span`` (default: the
    coarse grid's spacing) either side of the coarse winner. The default coarse grid stops at 1,
    as the paper's (c < 1 sharpens the top-k: it fixes an under-confident teacher); an
    over-confident teacher wants c > 1 (flatter): pass e.g. ``coarse=[0.1 * i for i in
    range(1, 31)]``. Ties go to the c closest to 1 (the smallest change to the teacher).

    Args:
        teacher_ids: ``[N, k]`` the stored top-k ids (sorted by decreasing log-probability, as
            :func:`ponder.ops.lm_head.topk_logprobs` returns them).
        teacher_logprobs: ``[N, k]`` their log-probabilities.
        labels: ``[N]`` the true next tokens.

    Returns:
        :class:`TemperatureSearch`.
    """
    fn = "calibrate_temperature"
    ids = torch.as_tensor(teacher_ids).detach().to("cpu")
    lp = torch.as_tensor(teacher_logprobs).detach().to("cpu", torch.float64)
    y = torch.as_tensor(labels).detach().to("cpu")
    if ids.dim() != 2 or lp.shape != ids.shape or ids.shape[0] == 0:
        raise ValueError(f"{fn}: teacher_ids and teacher_logprobs must both have shape [N >= 1, k],"
                         f" got {tuple(ids.shape)} and {tuple(lp.shape)}")
    if y.shape != (ids.shape[0],):
        raise ValueError(f"{fn}: labels must have shape [N = {ids.shape[0]}], got {tuple(y.shape)}")
    if torch.isnan(lp).any() or (lp > 1e-4).any():
        raise ValueError(f"{fn}: teacher_logprobs must be log-probabilities (<= 0, no NaN); "
                         "probabilities or logits were passed?")
    coarse_grid = _grid(fn, "coarse", [round(0.1 * i, 10) for i in range(1, 11)]
                        if coarse is None else list(coarse))
    step = check_real(fn, "fine_step", fine_step, positive=True)
    if fine_span is None:
        ordered = sorted(set(coarse_grid))
        fine_span = min((b - a for a, b in zip(ordered, ordered[1:])), default=step)
    span = check_real(fn, "fine_span", fine_span, nonnegative=True)
    n = check_int(fn, "n_bins", n_bins, minimum=1)
    correct = ids[:, 0] == y

    tried: dict[float, float] = {}

    def ece_at(c: float) -> float:
        c = round(c, 10)
        if c not in tried:
            tried[c] = expected_calibration_error(topk_confidence(lp, c)[:, 0], correct, n)
        return tried[c]

    def best(cands: list[float]) -> float:
        return min(cands, key=lambda c: (ece_at(c), abs(c - 1.0)))

    c0 = best(coarse_grid)
    steps = int(math.floor(span / step + 1e-9))
    fine = [c0 + i * step for i in range(-steps, steps + 1)]
    c1 = best([c for c in fine if c > 0] + [c0])
    return TemperatureSearch(round(c1, 10), ece_at(c1), ece_at(1.0), list(tried.items()))


def summarise(values: Any) -> dict[str, float]:
    """Mean, min, max and the 5/25/50/75/95th percentiles of a 1-D tensor of values."""
    v = torch.as_tensor(values).detach().to("cpu", torch.float64).reshape(-1)
    if v.numel() == 0:
        return {"n": 0}
    q = torch.quantile(v, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.float64))
    return {"n": int(v.numel()), "mean": float(v.mean()), "min": float(v.min()),
            "p5": float(q[0]), "p25": float(q[1]), "p50": float(q[2]), "p75": float(q[3]),
            "p95": float(q[4]), "max": float(v.max())}
