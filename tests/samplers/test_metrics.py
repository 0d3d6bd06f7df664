"""ponder.samplers.metrics: exact cases, agreement with scipy, and calibrated statistical checks.

Every random input has a fixed seed, so each test is deterministic. Statistical thresholds are
stated with their reasoning; they sit at >= 4 standard deviations of the estimator, so a correct
implementation fails for a random seed with probability well below 1e-3.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from ponder.samplers import metrics
from ponder.samplers.metrics import (
    effective_sample_size,
    ks_per_coordinate,
    mmd_rbf,
    sliced_wasserstein,
    tv_histogram,
)
from ponder.samplers.targets import Gaussian, GaussianMixture, Target

F64 = torch.float64


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ---- TV ----------------------------------------------------------------------------------------


def test_tv_exact_histograms_1d():
    # Bins [0, 1), [1, 2] on range (0, 2): x puts 3/4 in bin 0, y puts 1/4; TV = 1/2.
    x = torch.tensor([0.5, 0.5, 0.5, 1.5])
    y = torch.tensor([0.2, 1.1, 1.9, 2.0])  # 2.0 is the upper edge: last bin
    assert tv_histogram(x, y, bins=2, range=[(0.0, 2.0)]) == pytest.approx(0.5, abs=1e-15)
    # Samples outside the range fall in the extra "outside" bin.
    z = torch.tensor([0.5, 0.5, 5.0, 5.0])
    assert tv_histogram(x, z, bins=2, range=[(0.0, 2.0)]) == pytest.approx(0.5, abs=1e-15)
    assert tv_histogram(x, x, bins=7) == 0.0


def test_tv_exact_histograms_2d():
    # 2 x 2 bins on the unit square: x is uniform over the 4 cells, y is all in one cell.
    cells = torch.tensor([[0.25, 0.25], [0.25, 0.75], [0.75, 0.25], [0.75, 0.75]])
    y = torch.tensor([[0.1, 0.9]] * 4)
    tv = tv_histogram(cells, y, bins=(2, 2), range=[(0, 1), (0, 1)])
    assert tv == pytest.approx(0.75, abs=1e-15)


def test_tv_against_a_target():
    target = GaussianMixture([1.0, 1.0], [[-3.0, 0.0], [3.0, 0.0]], stds=0.7)
    x = target.sample(20000, generator=1)
    # Exact samples vs the exact binned density: only the sampling noise of x, about
    # 1/2 sum_b sqrt(2 p_b / (pi n)) <= sqrt(B / (2 pi n)) = 0.085 for B = 900; typically half.
    tv_exact = tv_histogram(x, target)
    assert tv_exact < 0.085
    # All the mass in one mode: the TV is about 1/2 (plus noise), and the target-derived range
    # still covers both modes.
    one_mode = x[x[:, 0] > 0]
    assert 0.45 < tv_histogram(one_mode, target) < 0.6
    # From reference samples instead: two noise terms, so a larger floor.
    y = target.sample(20000, generator=2)
    assert tv_histogram(x, y) < 0.12
    # An unnormalised log-density gives the same bin probabilities (normalised over the range).
    shifted = Target.from_functions(2, logp=lambda z: target.logp(z) + 5.0)
    rng = [(-6.0, 6.0), (-3.0, 3.0)]
    assert tv_histogram(x, shifted, range=rng) == pytest.approx(
        tv_histogram(x, target, range=rng), abs=1e-12
    )


def test_tv_errors():
    x = _randn(10, 3, seed=0)
    with pytest.raises(ValueError, match="1-D or 2-D"):
        tv_histogram(x, x)
    with pytest.raises(ValueError, match="bins must be"):
        tv_histogram(x[:, :2], x[:, :2], bins=(3,))
    with pytest.raises(ValueError, match="reference has dim 1"):
        tv_histogram(x[:, :2], x[:, 0])
    fn_target = Target.from_functions(1, logp=lambda z: -(z * z).sum(-1))
    with pytest.raises(ValueError, match="pass range="):
        tv_histogram(x[:, :1], fn_target)


# ---- MMD ---------------------------------------------------------------------------------------


def test_mmd_same_and_shifted():
    x, y = _randn(1500, 2, seed=1), _randn(1500, 2, seed=2)
    same = mmd_rbf(x, y)
    # Under the null the unbiased MMD^2 has mean 0 and standard deviation O(1/n); with
    # n = 1500 and the median bandwidth it is ~3.5e-4 here (8 seeds), so 3e-3 is > 8 sd.
    assert abs(same) < 3e-3
    shifted = mmd_rbf(x, y + torch.tensor([1.0, 0.0], dtype=F64))
    # A unit shift at the median bandwidth (~2): MMD^2 is ~0.12, far above the noise.
    assert shifted > 0.05
    assert mmd_rbf(x, y, bandwidth=1.0) != same


def test_mmd_can_be_negative_and_is_symmetric():
    # Unbiased: for identical distributions some seeds give MMD^2 < 0.
    values = [mmd_rbf(_randn(50, 1, seed=s), _randn(50, 1, seed=100 + s)) for s in range(20)]
    assert min(values) < 0 < max(values)
    x, y = _randn(40, 3, seed=3), _randn(60, 3, seed=4) + 0.5
    assert mmd_rbf(x, y, 1.3) == pytest.approx(mmd_rbf(y, x, 1.3), rel=1e-12)


def test_mmd_matches_the_definition_and_chunking(monkeypatch):
    x, y = _randn(70, 2, seed=5), _randn(50, 2, seed=6) * 1.5
    bw = 0.9

    def k(a, b):
        return torch.exp(-(torch.cdist(a, b) ** 2) / (2 * bw**2))

    kxx, kyy = k(x, x), k(y, y)
    ref = (
        (kxx.sum() - kxx.diagonal().sum()) / (70 * 69)
        + (kyy.sum() - kyy.diagonal().sum()) / (50 * 49)
        - 2 * k(x, y).mean()
    )
    assert mmd_rbf(x, y, bw) == pytest.approx(float(ref), rel=1e-10, abs=1e-13)
    # Tiny blocks (a few rows at a time) give the same sums.
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 200)
    assert mmd_rbf(x, y, bw) == pytest.approx(float(ref), rel=1e-10, abs=1e-13)


def test_mmd_errors():
    x = _randn(10, 2, seed=0)
    with pytest.raises(ValueError, match="same dimension"):
        mmd_rbf(x, _randn(10, 3, seed=1))
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd_rbf(x[:1], x)
    with pytest.raises(ValueError, match="bandwidth must be finite and > 0"):
        mmd_rbf(x, x, bandwidth=0.0)
    with pytest.raises(ValueError, match=r"shape \[n, d\]"):
        mmd_rbf(torch.zeros(2, 2, 2), x)
    with pytest.raises(ValueError, match="NaN"):
        mmd_rbf(torch.full((3, 2), float("nan")), x)
    with pytest.raises(TypeError, match="must be a tensor"):
        mmd_rbf([[0.0, 1.0]], x)


# ---- Sliced Wasserstein ------------------------------------------------------------------------


def test_sliced_wasserstein_1d_shift():
    # W1(N(0,1), N(m,1)) = |m|; the empirical estimate at n = 5000 is off by ~1/sqrt(n) = 0.015
    # (its standard deviation is below that), so 0.06 is a > 4-sigma tolerance.
    x = _randn(5000, 1, seed=7)
    for m in (0.5, 2.0):
        y = _randn(5000, 1, seed=8) + m
        assert sliced_wasserstein(x, y) == pytest.approx(m, abs=0.06)


def test_sliced_wasserstein_matches_scipy_in_1d():
    # Unequal sizes: the merged-quantile integral is exact.
    x, y = _randn(37, 1, seed=9), _randn(53, 1, seed=10) * 2 + 1
    ref = scipy.stats.wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy())
    assert sliced_wasserstein(x, y) == pytest.approx(ref, rel=1e-12)
    # W2 for equal sizes: the root mean square of the sorted differences.
    y = y[:37]
    ref2 = float(((x[:, 0].sort().values - y[:, 0].sort().values) ** 2).mean().sqrt())
    assert sliced_wasserstein(x, y, p=2) == pytest.approx(ref2, rel=1e-12)


def test_sliced_wasserstein_in_d_dimensions():
    # A shift s e_1 in d = 5: SW_1 ~ s E|theta_1| = s Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2));
    # with 512 projections the Monte-Carlo error of E|theta_1| is ~0.3 / sqrt(512) = 0.013.
    d, s = 5, 3.0
    x, y = _randn(4000, d, seed=11), _randn(4000, d, seed=12)
    y[:, 0] += s
    expected = s * math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2))
    got = sliced_wasserstein(x, y, n_projections=512)
    assert got == pytest.approx(expected, abs=0.1)
    # Deterministic by default, seeded otherwise.
    assert sliced_wasserstein(x, y) == sliced_wasserstein(x, y)
    assert sliced_wasserstein(x, y, generator=1) != sliced_wasserstein(x, y, generator=2)
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        sliced_wasserstein(x, y, p=3)


# ---- KS ----------------------------------------------------------------------------------------


def test_ks_matches_scipy():
    x = _randn(300, 3, seed=13)
    y = _randn(451, 3, seed=14) * torch.tensor([1.0, 1.5, 1.0], dtype=F64) + 0.2
    # Ties within and across the samples (rounded values) are handled like scipy.
    x[:, 2], y[:, 2] = x[:, 2].round(decimals=1), y[:, 2].round(decimals=1)
    ks = ks_per_coordinate(x, y)
    assert ks.shape == (3,) and ks.dtype == F64
    for j in range(3):
        ref = scipy.stats.ks_2samp(x[:, j].numpy(), y[:, j].numpy()).statistic
        assert float(ks[j]) == pytest.approx(ref, abs=1e-15)
    assert torch.equal(ks_per_coordinate(x, x), torch.zeros(3, dtype=F64))
    # numpy input through DLPack, 1-D input as one coordinate.
    np_ks = ks_per_coordinate(x[:, 0].numpy(), y[:, 0].numpy())
    assert float(np_ks[0]) == pytest.approx(float(ks[0]))


# ---- ESS ---------------------------------------------------------------------------------------


def _ar1(t: int, c: int, d: int, phi: float, seed: int) -> torch.Tensor:
    """Stationary AR(1) chains [T, C, d] with unit marginal variance."""
    noise = _randn(t, c, d, seed=seed)
    x = torch.empty_like(noise)
    x[0] = noise[0]
    scale = math.sqrt(1 - phi * phi)
    for i in range(1, t):
        x[i] = phi * x[i - 1] + scale * noise[i]
    return x


def test_ess_of_iid_samples():
    # iid: tau = 1, ESS = C T = 20000. Geyer's estimate of tau has a relative sd of a few
    # percent here; 15% is > 4 sd.
    x = _randn(5000, 4, 3, seed=15)
    ess = effective_sample_size(x)
    assert ess.shape == (3,)
    assert torch.all((ess - 20000).abs() < 0.15 * 20000)


@pytest.mark.parametrize("phi", [0.5, 0.9])
def test_ess_of_ar1_chains(phi):
    # ESS = n (1 - phi) / (1 + phi). Over 10 seeds the relative error of the estimate had
    # mean -2% / -4% and sd 4% / 7% at phi = 0.5 / 0.9 (4 chains x 5000), and sd 9% / 10% for
    # one chain: 25% and 40% are > 3 sd from the mean.
    t, c, d = 5000, 4, 2
    x = _ar1(t, c, d, phi, seed=16)
    expected = c * t * (1 - phi) / (1 + phi)
    ess = effective_sample_size(x)
    assert torch.all((ess / expected - 1).abs() < 0.25), (ess, expected)
    # One chain: [T, d].
    ess1 = effective_sample_size(x[:, 0])
    assert torch.all((ess1 / (expected / c) - 1).abs() < 0.4), (ess1, expected / c)


def test_ess_sees_chains_stuck_apart():
    # Two groups of iid chains with different means: the between-chain variance dominates
    # var_plus, so the ESS collapses far below C T.
    x = _randn(1000, 4, 1, seed=17)
    x[:, :2] += 5.0
    assert float(effective_sample_size(x)[0]) < 0.05 * 4000


def test_ess_errors_and_constant_chains():
    with pytest.raises(ValueError, match="T >= 4"):
        effective_sample_size(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"\[T, C, d\]"):
        effective_sample_size(torch.zeros(5))
    const = torch.zeros(10, 2, 2, dtype=F64)
    const[:, :, 1] = _randn(10, 2, seed=18)
    ess = effective_sample_size(const)
    assert torch.isnan(ess[0]) and torch.isfinite(ess[1])


def test_metrics_accept_float32_and_numpy():
    g = Gaussian([0.0, 0.0])
    x = g.sample(500, generator=19).float()
    y = np.asarray(g.sample(500, generator=20))
    assert isinstance(mmd_rbf(x, y), float)
    assert isinstance(sliced_wasserstein(x, y), float)
    assert isinstance(tv_histogram(x, y), float)
