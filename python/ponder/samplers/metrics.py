"""Distances between sample sets (and targets), and the effective sample size of chains.

Samples are tensors ``[n, d]`` (a 1-D tensor is read as ``[n, 1]``; numpy and other DLPack
arrays are accepted too); everything is computed in float64 on the samples' device and returned
as a Python float, or a float64 tensor ``[d]`` for the per-coordinate metrics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..validation import as_generator, check_int
from .protocol import Target

__all__ = [
    "effective_sample_size",
    "ks_per_coordinate",
    "mmd_rbf",
    "sliced_wasserstein",
    "tv_histogram",
]

# Kernel / distance blocks are at most this many elements (float64: 32 MiB).
_BLOCK_ELEMENTS = 1 << 22


def _as_samples(op: str, name: str, x: object, *, min_rows: int = 1) -> Tensor:
    """``x`` as a float64 tensor ``[n, d]``."""
    if not isinstance(x, Tensor):
        if hasattr(x, "__dlpack__"):
            x = torch.from_dlpack(x)
        else:
            raise TypeError(f"{op}: {name} must be a tensor [n, d], got {type(x).__name__}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"{op}: {name} must be a real (floating) tensor, got {x.dtype}")
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2:
        raise ValueError(f"{op}: {name} must have shape [n, d] (or [n]), got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{op}: {name} must have at least one coordinate, got {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{op}: {name} needs at least {min_rows} samples, got {x.shape[0]}")
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{op}: {name} contains NaN or inf")
    return x


def _pair(op: str, x: object, y: object, *, min_rows: int = 1) -> tuple[Tensor, Tensor]:
    x = _as_samples(op, "x", x, min_rows=min_rows)
    y = _as_samples(op, "y", y, min_rows=min_rows)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"{op}: x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}"
        )
    return x, y.to(x.device)


# --------------------------------------------------------------------------------------------
# Total variation from histograms
# --------------------------------------------------------------------------------------------


def _bin_index(x: Tensor, lo: Tensor, hi: Tensor, bins: Sequence[int]) -> Tensor:
    """Flat bin index of each row of ``x: [n, k]``; ``-1`` outside the range."""
    n_bins = torch.tensor(bins, dtype=torch.int64, device=x.device)
    rel = (x - lo) / (hi - lo)
    inside = ((rel >= 0) & (rel <= 1)).all(dim=1)
    # The upper edge belongs to the last bin, as in numpy.histogram.
    idx = torch.minimum((rel * n_bins).floor().clamp_min(0).long(), n_bins - 1)
    flat = idx[:, 0]
    for j in range(1, x.shape[1]):
        flat = flat * bins[j] + idx[:, j]
    return torch.where(inside, flat, torch.full_like(flat, -1))


def _histogram(x: Tensor, lo: Tensor, hi: Tensor, bins: Sequence[int]) -> Tensor:
    """Probabilities ``[prod(bins) + 1]``: the bins, then the mass outside the range."""
    flat = _bin_index(x, lo, hi, bins)
    total = math.prod(bins)
    flat = torch.where(flat < 0, torch.full_like(flat, total), flat)
    counts = torch.bincount(flat, minlength=total + 1).to(torch.float64)
    return counts / x.shape[0]


def _target_histogram(
    target: Target, lo: Tensor, hi: Tensor, bins: Sequence[int], subdivisions: int
) -> Tensor:
    """Bin probabilities of ``target`` by a midpoint rule on ``subdivisions`` points per bin
    and axis, normalised over the range (the mass outside it is taken as 0)."""
    axes = []
    for j, b in enumerate(bins):
        m = b * subdivisions
        width = (hi[j] - lo[j]) / m
        axes.append(lo[j] + width * (torch.arange(m, dtype=torch.float64, device=lo.device) + 0.5))
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(bins))
    logp = torch.cat([target.logp(chunk).to(torch.float64) for chunk in grid.split(1 << 16)])
    if not bool(torch.isfinite(logp).any()):
        raise ValueError("tv_histogram: target.logp is not finite anywhere on the range")
    dens = torch.exp(logp - logp.max()).nan_to_num(0.0)
    shape = [s for b in bins for s in (b, subdivisions)]
    dens = dens.reshape(shape)
    for axis in range(len(bins)):  # sum the sub-points of each bin, axis by axis
        dens = dens.sum(dim=axis + 1)
    probs = dens.reshape(-1) / dens.sum()
    return torch.cat([probs, probs.new_zeros(1)])


def tv_histogram(
    samples: object,
    reference: Tensor | Target,
    bins: int | Sequence[int] | None = None,
    range: Sequence[Sequence[float]] | None = None,
    *,
    subdivisions: int = 8,
) -> float:
    """Total variation between histograms, for 1-D or 2-D samples.

    ``TV = 1/2 sum_b |p_b - q_b|`` over the bins plus one more "outside the range" bin.

    Parameters
    ----------
    samples : [n, d], d in {1, 2}
    reference : [m, d] samples, or a :class:`Target`
        With a target, its bin probabilities come from its density (a midpoint rule with
        ``subdivisions`` points per bin and axis, normalised over the range: ``logp`` may be
        unnormalised; the target's mass outside the range is taken as 0).
    bins : int or (int, int), optional
        Bins per axis; default 50 in 1-D and 30 per axis in 2-D.
    range : ((lo, hi),) or ((lo1, hi1), (lo2, hi2)), optional
        Default: the joint min / max of both sample sets. With a target reference the default
        comes from 20000 exact samples of the target (fixed seed), widened by 5%; for a target
        without exact samples, ``range`` is required. Never derive it from ``samples`` alone: a
        sampler stuck in one mode would shrink the range to that mode and hide its error.

    Returns
    -------
    float in [0, 1].

    Notes
    -----
    Bias: binning can only merge differences, so the histogram TV of the true distributions is
    at most their TV (coarse bins miss fine structure). The finite-sample estimate is biased
    *up*: even two samples of the same distribution give about
    ``1/2 sum_b sqrt(2 p_b (1/n + 1/m) / pi)`` (at most ``sqrt(B (1/n + 1/m) / (2 pi))`` for
    ``B`` bins), e.g. about 0.06 for 50 bins and n = m = 10^4. Compare samplers at equal ``n``
    and keep ``B`` well below ``n``; a target reference removes the ``1/m`` part.
    """
    op = "tv_histogram"
    x = _as_samples(op, "samples", samples)
    d = x.shape[1]
    if d > 2:
        raise ValueError(
            f"{op}: histograms are for 1-D or 2-D samples, got d = {d}; "
            "use mmd_rbf or ks_per_coordinate"
        )
    if bins is None:
        bins = [50] if d == 1 else [30, 30]
    elif isinstance(bins, int) and not isinstance(bins, bool):
        bins = [bins] * d
    else:
        bins = list(bins)
    if len(bins) != d or not all(isinstance(b, int) and b >= 1 for b in bins):
        raise ValueError(f"{op}: bins must be a positive int or {d} positive ints, got {bins}")
    subdivisions = check_int(op, "subdivisions", subdivisions, minimum=1)

    ref_samples = None
    if isinstance(reference, Target):
        if reference.dim != d:
            raise ValueError(f"{op}: the target has dim {reference.dim}, samples have {d}")
        if range is None:
            try:
                ref_samples = _as_samples(op, "target samples", reference.sample(20000, 0))
            except NotImplementedError as err:
                raise ValueError(f"{op}: pass range= for a target without exact samples") from err
    else:
        ref_samples = _as_samples(op, "reference", reference).to(x.device)
        if ref_samples.shape[1] != d:
            raise ValueError(f"{op}: reference has dim {ref_samples.shape[1]}, samples have {d}")

    if range is None and isinstance(reference, Target):
        ref_samples = ref_samples.to(x.device)
        lo, hi = ref_samples.min(0).values, ref_samples.max(0).values
        lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    elif range is None:
        pool = torch.cat([x, ref_samples])
        lo, hi = pool.min(0).values, pool.max(0).values
    else:
        rng = torch.as_tensor(range, dtype=torch.float64, device=x.device).reshape(-1, 2)
        if rng.shape[0] != d:
            raise ValueError(f"{op}: range must hold {d} (lo, hi) pairs, got {range}")
        lo, hi = rng[:, 0], rng[:, 1]
    if not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
        raise ValueError(f"{op}: range must be finite")
    # A degenerate axis (all values equal) still gets a bin of positive width.
    hi = torch.where(hi > lo, hi, lo + 1.0)

    p = _histogram(x, lo, hi, bins)
    if isinstance(reference, Target):
        q = _target_histogram(reference, lo, hi, bins, subdivisions)
    else:
        q = _histogram(ref_samples, lo, hi, bins)
    return float(0.5 * (p - q).abs().sum())


# --------------------------------------------------------------------------------------------
# MMD
# --------------------------------------------------------------------------------------------


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """``|a_i - b_j|^2``, ``[n, m]`` (float64, clamped at 0 against rounding)."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min(0.0)


def _kernel_sum(a: Tensor, b: Tensor, gamma: float) -> float:
    """``sum_ij exp(-gamma |a_i - b_j|^2)``, in row blocks of bounded size."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, b.shape[0]))
    total = 0.0
    for block in a.split(rows):
        total += float(torch.exp(-gamma * _sq_dists(block, b)).sum())
    return total


def _median_bandwidth(x: Tensor, y: Tensor, max_points: int = 1000) -> float:
    """Median pairwise distance of the pooled samples (at most ``max_points`` of each,
    evenly spaced, so the result is deterministic)."""

    def thin(t: Tensor) -> Tensor:
        if t.shape[0] <= max_points:
            return t
        idx = torch.linspace(0, t.shape[0] - 1, max_points, device=t.device).round().long()
        return t[idx]

    z = torch.cat([thin(x), thin(y)])
    d2 = _sq_dists(z, z)
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    med = float(d2[iu[0], iu[1]].median().sqrt())
    return med if med > 0 else 1.0


def mmd_rbf(x: object, y: object, bandwidth: float | None = None) -> float:
    """Unbiased squared maximum mean discrepancy with an RBF kernel.

    ``k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2))`` and
    ``MMD^2_u = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)``.

    Parameters
    ----------
    x : [n, d], n >= 2
    y : [m, d], m >= 2
    bandwidth : float, optional
        Default: the median heuristic, the median pairwise distance of the pooled samples (from
        at most 1000 evenly spaced points of each set). Pass a fixed value to compare MMDs
        across runs: the heuristic moves with the samples.

    Returns
    -------
    float: unbiased, so it can be slightly negative when ``x`` and ``y`` share a distribution
    (its standard deviation is then of order ``1/n``).

    The kernel sums are computed in row blocks of at most 4M entries, so 10^4 x 10^4 samples
    take ~32 MiB at a time.
    """
    op = "mmd_rbf"
    x, y = _pair(op, x, y, min_rows=2)
    if bandwidth is None:
        bandwidth = _median_bandwidth(x, y)
    else:
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)):
            raise TypeError(f"{op}: bandwidth must be a number, got {type(bandwidth).__name__}")
        if not (math.isfinite(bandwidth) and bandwidth > 0):
            raise ValueError(f"{op}: bandwidth must be finite and > 0, got {bandwidth}")
    gamma = 1.0 / (2.0 * float(bandwidth) ** 2)
    n, m = x.shape[0], y.shape[0]
    # k(a, a) = 1: the diagonal of the within-set sums is exactly n (resp. m).
    kxx = (_kernel_sum(x, x, gamma) - n) / (n * (n - 1))
    kyy = (_kernel_sum(y, y, gamma) - m) / (m * (m - 1))
    kxy = _kernel_sum(x, y, gamma) / (n * m)
    return kxx + kyy - 2.0 * kxy


# --------------------------------------------------------------------------------------------
# Sliced Wasserstein
# --------------------------------------------------------------------------------------------


def _wasserstein_1d_sorted(xs: Tensor, ys: Tensor, p: int) -> Tensor:
    """``W_p^p`` between the empirical laws of each row pair, from sorted rows.

    ``xs: [P, n]``, ``ys: [P, m]`` -> ``[P]``: integrate ``|F^-1(u) - G^-1(u)|^p`` over the
    merged quantile levels ``{i/n} U {j/m}``, where both quantile functions are constant.
    """
    n, m = xs.shape[1], ys.shape[1]
    dev = xs.device
    levels = (
        torch.cat(
            [
                torch.arange(1, n + 1, dtype=torch.float64, device=dev) / n,
                torch.arange(1, m + 1, dtype=torch.float64, device=dev) / m,
            ]
        )
        .sort()
        .values
    )
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    mid = levels - 0.5 * widths
    ix = (mid * n).floor().long().clamp(0, n - 1)
    iy = (mid * m).floor().long().clamp(0, m - 1)
    gap = (xs[:, ix] - ys[:, iy]).abs() ** p
    return (gap * widths).sum(1)


def sliced_wasserstein(
    x: object,
    y: object,
    n_projections: int = 128,
    generator: torch.Generator | int | None = None,
    *,
    p: int = 1,
) -> float:
    """Sliced Wasserstein-``p`` distance (default ``p = 1``: SW_1).

    ``SW_p(x, y) = (E_theta W_p^p(<theta, x>, <theta, y>))^(1/p)`` with ``theta`` uniform on
    the unit sphere, estimated with ``n_projections`` random directions; each 1-D ``W_p`` is
    exact for the two empirical distributions (any sizes ``n``, ``m``).

    Parameters
    ----------
    x : [n, d]
    y : [m, d]
    n_projections : int
    generator : torch.Generator, int seed, or None
        The directions' randomness. None means a fixed seed (0), so the metric is
        deterministic; in 1-D the projection is exact whatever the seed.
    p : 1 or 2

    Notes
    -----
    In 1-D this is ``W_p`` itself (a shift by ``m`` gives ``|m|``). In ``d`` dimensions a
    shift of length ``s`` gives ``s E|theta_1|``, about ``s sqrt(2 / (pi d))`` (p = 1): sliced
    distances are smaller than ``W_p`` and are comparable only at the same ``d``.
    """
    op = "sliced_wasserstein"
    x, y = _pair(op, x, y)
    n_projections = check_int(op, "n_projections", n_projections, minimum=1)
    if p not in (1, 2):
        raise ValueError(f"{op}: p must be 1 or 2, got {p}")
    d = x.shape[1]
    if d == 1:
        theta = torch.ones(1, 1, dtype=torch.float64, device=x.device)
    else:
        gen = as_generator(op, 0 if generator is None else generator, torch.device("cpu"))
        theta = torch.randn(n_projections, d, generator=gen, dtype=torch.float64, device=gen.device)
        theta = (theta / theta.norm(dim=1, keepdim=True)).to(x.device)
    xs = (theta @ x.T).sort(dim=1).values
    ys = (theta @ y.T).sort(dim=1).values
    return float(_wasserstein_1d_sorted(xs, ys, p).mean() ** (1.0 / p))


# --------------------------------------------------------------------------------------------
# Kolmogorov-Smirnov
# --------------------------------------------------------------------------------------------


def ks_per_coordinate(x: object, y: object) -> Tensor:
    """Two-sample Kolmogorov-Smirnov statistic of each coordinate.

    ``D_j = sup_t |F_x,j(t) - F_y,j(t)|`` (the ``statistic`` of ``scipy.stats.ks_2samp``).

    Parameters
    ----------
    x : [n, d]
    y : [m, d]

    Returns
    -------
    Tensor ``[d]``, float64. Under the null, ``D_j`` is about ``sqrt((n + m) / (n m))`` times a
    Kolmogorov variable (95% quantile 1.36).
    """
    x, y = _pair("ks_per_coordinate", x, y)
    n, m = x.shape[0], y.shape[0]
    xs = x.T.contiguous().sort(dim=1).values  # [d, n]
    ys = y.T.contiguous().sort(dim=1).values
    points = torch.cat([xs, ys], dim=1)  # the sup is attained at a sample point
    fx = torch.searchsorted(xs, points, right=True).to(torch.float64) / n
    fy = torch.searchsorted(ys, points, right=True).to(torch.float64) / m
    return (fx - fy).abs().amax(dim=1)


# --------------------------------------------------------------------------------------------
# Effective sample size
# --------------------------------------------------------------------------------------------


def _autocovariance(x: Tensor) -> Tensor:
    """Biased autocovariance (divided by T) of each centred series: ``x: [T, ...]`` ->
    ``[T, ...]``, by FFT with zero padding (no circular wrap-around)."""
    t = x.shape[0]
    centred = x - x.mean(0, keepdim=True)
    size = 1 << (2 * t - 1).bit_length()
    spec = torch.fft.rfft(centred, n=size, dim=0)
    return torch.fft.irfft(spec * spec.conj(), n=size, dim=0)[:t] / t


def effective_sample_size(chains: object) -> Tensor:
    """Effective sample size of each coordinate, over all chains together.

    Parameters
    ----------
    chains : [T, C, d] (T steps of C chains) or [T, d] (one chain); T >= 4

    Returns
    -------
    Tensor ``[d]``, float64: ``C T / tau`` with ``tau`` the integrated autocorrelation time.

    Method (Stan's, without splitting chains; Vehtari et al. 2021): per-chain autocovariances
    by FFT, combined over chains as ``rho_t = 1 - (W - mean_c gamma_c(t)) / var_plus`` with
    ``W`` the mean within-chain variance and ``var_plus = (T - 1) / T W + B / T`` (``B / T``:
    the variance of the chain means), so chains stuck in different modes lower the ESS. Then
    Geyer's initial positive sequence: pair sums ``rho_2k + rho_2k+1`` are summed while
    positive, made monotone (initial monotone sequence), and ``tau = -1 + 2 sum_k P_k``.
    For one chain this is the classical ``tau = 1 + 2 sum_t rho_t`` with Geyer's truncation.
    A constant coordinate has no defined ESS: NaN.
    """
    op = "effective_sample_size"
    if not isinstance(chains, Tensor):
        if hasattr(chains, "__dlpack__"):
            chains = torch.from_dlpack(chains)
        else:
            raise TypeError(f"{op}: chains must be a tensor [T, C, d] or [T, d]")
    if chains.dim() == 2:
        chains = chains[:, None, :]
    if chains.dim() != 3:
        raise ValueError(
            f"{op}: chains must have shape [T, C, d] or [T, d], got {tuple(chains.shape)}"
        )
    t, c, d = chains.shape
    if t < 4 or c < 1 or d < 1:
        raise ValueError(f"{op}: need T >= 4 steps, C >= 1 chains, d >= 1, got {(t, c, d)}")
    x = chains.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{op}: chains contain NaN or inf")

    acov = _autocovariance(x)  # [T, C, d]
    within = acov[0].mean(0) * t / (t - 1)  # W: mean unbiased within-chain variance
    between = x.mean(0).var(0, unbiased=True) if c > 1 else torch.zeros_like(within)
    var_plus = (t - 1) / t * within + between
    rho = 1.0 - (within - acov.mean(1)) / var_plus  # [T, d]; rho_0 = 1 when C = 1

    n_pairs = t // 2
    pairs = rho[: 2 * n_pairs].reshape(n_pairs, 2, d).sum(1)  # P_k = rho_2k + rho_2k+1
    positive = torch.cumprod((pairs > 0).to(torch.float64), dim=0)  # up to the first P_k <= 0
    monotone = torch.cummin(pairs, dim=0).values
    tau = -1.0 + 2.0 * (monotone * positive).sum(0)
    # tau >= 1/log10(CT) caps the ESS of antithetic chains at C T log10(C T), as Stan does.
    tau = tau.clamp_min(1.0 / math.log10(max(c * t, 10)))
    ess = c * t / tau
    return torch.where(var_plus > 0, ess, torch.full_like(ess, float("nan")))
