"""ponder.samplers.targets: densities, gradients, OU marginals, minibatches, user functions.

Deterministic checks (gradients, normalisation, minibatch sums) use float64 and tolerances of a
few hundred ulp. The sampling checks use fixed seeds; their thresholds are ~4 Monte-Carlo
standard errors, so a correct sampler fails for a random seed with probability < 1e-4.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import torch
from ponder.samplers.targets import (
    TARGETS,
    BayesianLogisticRegression,
    CorrelatedGaussian,
    DiffusionTarget,
    DoubleWell,
    FiniteSumTarget,
    Gaussian,
    GaussianMixture,
    Target,
    checked_grad_logp,
    checked_logp_and_grad,
    checked_logp_and_score,
    checked_score,
    make_target,
)

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _spd(d: int, seed: int) -> torch.Tensor:
    a = torch.randn(d, d, generator=_gen(seed), dtype=F64)
    return a @ a.T / d + 0.5 * torch.eye(d, dtype=F64)


def _targets() -> dict[str, Target]:
    """One of each kind and covariance layout, small enough to be quick."""
    d = 3
    means = torch.randn(4, d, generator=_gen(1), dtype=F64) * 2
    return {
        "gaussian-iso": Gaussian(torch.tensor([1.0, -2.0, 0.5]), std=1.5),
        "gaussian-diag": Gaussian(torch.zeros(d), std=torch.tensor([0.5, 1.0, 2.0])),
        "gaussian-full": Gaussian(torch.tensor([1.0, 0.0, -1.0]), cov=_spd(d, 2)),
        "correlated": CorrelatedGaussian(0.8, std=(1.0, 2.0)),
        "mixture-iso": GaussianMixture([1.0, 2.0, 3.0, 4.0], means, stds=[0.5, 1.0, 1.5, 0.7]),
        "mixture-diag": GaussianMixture(
            [1.0] * 4, means, stds=torch.rand(4, d, generator=_gen(3), dtype=F64) + 0.3
        ),
        "mixture-full": GaussianMixture(
            [0.1, 0.2, 0.3, 0.4], means, covs=torch.stack([_spd(d, s) for s in range(4)])
        ),
        "mixture-symmetric": make_target("mixture", dim=5),
        "logistic": BayesianLogisticRegression.synthetic(n=200, d=3, seed=1),
        "double-well": DoubleWell(3, a=3.0),
    }


TARGET_CASES = _targets()


def _autograd(fn, x):
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(leaf).sum(), leaf)
    return g


@pytest.mark.parametrize("name", list(TARGET_CASES))
def test_gradient_matches_autograd_of_logp(name):
    target = TARGET_CASES[name]
    x = 1.5 * torch.randn(17, target.dim, generator=_gen(5), dtype=F64)
    logp, grad = target.logp_and_grad(x)
    assert logp.shape == (17,) and grad.shape == (17, target.dim)
    assert logp.dtype == F64 and grad.dtype == F64
    torch.testing.assert_close(grad, _autograd(target.logp, x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logp, target.logp(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, target.grad_logp(x), rtol=1e-12, atol=1e-12)
    # checked_* pass them through unchanged.
    lc, gc = checked_logp_and_grad(target, x)
    assert torch.equal(lc, logp) and torch.equal(gc, grad)


@pytest.mark.parametrize("name", ["gaussian-full", "mixture-full", "logistic", "double-well"])
def test_float32_follows_float64(name):
    target = TARGET_CASES[name]
    x = torch.randn(9, target.dim, generator=_gen(6), dtype=F64)
    lp64, g64 = target.logp_and_grad(x)
    lp32, g32 = target.to(dtype=torch.float32).logp_and_grad(x.float())
    assert lp32.dtype == torch.float32 and g32.dtype == torch.float32
    # float32 rounding of O(10^3) log-likelihood sums (logistic) is ~1e-4 relative at worst.
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-3)


def _scipy_mixture_logpdf(weights, means, covs, x):
    dens = sum(
        w * scipy.stats.multivariate_normal(m, c).pdf(x) for w, m, c in zip(weights, means, covs)
    )
    return np.log(dens)


@pytest.mark.parametrize("name", ["gaussian-full", "gaussian-diag", "mixture-iso", "mixture-full"])
def test_mixture_logp_matches_scipy(name):
    target = TARGET_CASES[name]
    x = 1.5 * torch.randn(11, target.dim, generator=_gen(7), dtype=F64)
    ref = _scipy_mixture_logpdf(
        target.weights.numpy(), target.means.numpy(), target.component_covs().numpy(), x.numpy()
    )
    np.testing.assert_allclose(target.logp(x).numpy(), ref, rtol=1e-10, atol=1e-10)


def test_mixture_density_integrates_to_one():
    # 2-D, full covariances; trapezoid on a grid covering every mode to > 8 sigma: the missed
    # mass is < 1e-12 and the trapezoid error of a smooth density at spacing 0.02 is ~1e-9.
    target = GaussianMixture(
        [1.0, 3.0],
        [[-2.0, 0.0], [2.0, 1.0]],
        covs=[[[1.0, 0.3], [0.3, 0.5]], [[0.4, 0.0], [0.0, 1.5]]],
    )
    axis = torch.linspace(-12.0, 12.0, 1201, dtype=F64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    dens = target.logp(grid).exp().reshape(1201, 1201)
    total = torch.trapezoid(torch.trapezoid(dens, axis, dim=1), axis)
    assert abs(float(total) - 1.0) < 1e-7


def test_mixture_far_away_is_finite():
    # logsumexp: each component underflows, the log-density does not.
    target = TARGET_CASES["mixture-full"]
    x = torch.full((2, target.dim), 60.0, dtype=F64)
    logp, score = target.logp_and_grad(x)
    assert torch.isfinite(logp).all() and torch.isfinite(score).all()


def test_double_well_normalised_and_sampled():
    target = DoubleWell(2, a=3.0)
    z1, _ = scipy.integrate.quad(lambda u: math.exp(-3.0 * (u * u - 1.0) ** 2), -np.inf, np.inf)
    expected = math.log(z1) + 0.5 * math.log(2 * math.pi)
    assert abs(target.log_normalizer - expected) < 1e-10
    # KS of the exact sampler's x_1 against the numerically integrated CDF. n = 20000:
    # the 99.99% point of the Kolmogorov distribution is 2.0, so D < 2 / sqrt(n) = 0.014.
    x = target.sample(20000, generator=3)
    assert x.shape == (20000, 2)

    def cdf(u):
        return (
            scipy.integrate.quad(lambda v: math.exp(-3.0 * (v * v - 1.0) ** 2), -np.inf, u)[0] / z1
        )

    grid = np.linspace(-2.0, 2.0, 401)
    cdf_grid = np.array([cdf(u) for u in grid])
    d = scipy.stats.kstest(x[:, 0].numpy(), lambda u: np.interp(u, grid, cdf_grid)).statistic
    assert d < 2.0 / math.sqrt(20000)
    assert scipy.stats.kstest(x[:, 1].numpy(), "norm").statistic < 2.0 / math.sqrt(20000)


def test_double_well_is_not_log_concave():
    target = DoubleWell(1, a=2.0)
    x = torch.tensor([[0.0], [1.0]], dtype=F64)
    logp = target.logp(x)
    assert float(logp[1] - logp[0]) == pytest.approx(2.0)  # barrier of height a


def test_gaussian_samples_have_the_right_moments():
    # n = 40000: the mean's standard error is sqrt(Sigma_jj / n) <= 0.008, so 0.04 is > 4 s.e.;
    # a covariance entry's standard error is <= sqrt(2) Sigma_max / sqrt(n) ~ 0.02: 0.1 is > 4.
    target = TARGET_CASES["gaussian-full"]
    x = target.sample(40000, generator=11)
    torch.testing.assert_close(x.mean(0), target.mean, rtol=0, atol=0.04)
    torch.testing.assert_close(torch.cov(x.T), target.covariance, rtol=0, atol=0.1)
    # The same seed gives the same samples.
    assert torch.equal(target.sample(5, generator=11), target.sample(5, generator=11))


def test_mixture_samples_have_the_right_moments():
    target = TARGET_CASES["mixture-diag"]
    x = target.sample(40000, generator=_gen(12))
    # Mixture variances here are <= 8: mean s.e. <= 0.015 (0.07 > 4 s.e.); covariance
    # entries' s.e. <= ~0.1 with these heavier-tailed mixtures (0.4 > 4 s.e.).
    torch.testing.assert_close(x.mean(0), target.mean, rtol=0, atol=0.07)
    torch.testing.assert_close(torch.cov(x.T), target.covariance, rtol=0, atol=0.4)


def test_correlated_gaussian():
    target = CorrelatedGaussian(-0.5, std=(2.0, 0.5))
    expected = torch.tensor([[4.0, -0.5], [-0.5, 0.25]], dtype=F64)
    torch.testing.assert_close(target.covariance, expected)
    with pytest.raises(ValueError, match="rho"):
        CorrelatedGaussian(1.0)


# ---- OU marginals ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mixture-iso", "mixture-full", "gaussian-full"])
def test_ou_marginal_at_zero_is_the_target(name):
    target = TARGET_CASES[name]
    x = torch.randn(13, target.dim, generator=_gen(8), dtype=F64)
    lp, sc = target.logp_and_score(x, 0.0)
    torch.testing.assert_close(lp, target.logp(x), rtol=0, atol=0)
    torch.testing.assert_close(sc, target.grad_logp(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["mixture-iso", "mixture-full"])
@pytest.mark.parametrize("t", [0.05, 0.7, 3.0])
def test_ou_marginal_matches_scipy_and_autograd(name, t):
    target = TARGET_CASES[name]
    x = torch.randn(13, target.dim, generator=_gen(9), dtype=F64)
    d = target.dim
    decay = math.exp(-t)
    covs = decay**2 * target.component_covs().numpy() + (1 - decay**2) * np.eye(d)
    ref = _scipy_mixture_logpdf(
        target.weights.numpy(), decay * target.means.numpy(), covs, x.numpy()
    )
    lp, score = target.logp_and_score(x, t)
    np.testing.assert_allclose(lp.numpy(), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        score, _autograd(lambda z: target.logp_t(z, t), x), rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(target.score(x, t), score, rtol=0, atol=0)


def test_ou_marginal_tends_to_standard_normal():
    # At t = 30, e^-t |mu| ~ 1e-13 and the covariance differs from I by e^-60: N(0, I) exactly
    # to float64 precision.
    target = TARGET_CASES["mixture-full"]
    x = torch.randn(7, target.dim, generator=_gen(10), dtype=F64)
    lp, score = target.logp_and_score(x, 30.0)
    normal = -0.5 * (x * x).sum(1) - 0.5 * target.dim * math.log(2 * math.pi)
    torch.testing.assert_close(lp, normal, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(score, -x, rtol=1e-10, atol=1e-10)


def test_sample_t_moments():
    # Var of X_t = e^-2t Var X_0 + (1 - e^-2t); 20000 samples: s.e. of each variance < 0.05.
    target = Gaussian([3.0, -3.0], std=[2.0, 0.5])
    t = 0.5
    x = target.sample_t(20000, t, generator=4)
    decay = math.exp(-t)
    torch.testing.assert_close(x.mean(0), decay * target.mean, rtol=0, atol=0.05)
    var = decay**2 * torch.tensor([4.0, 0.25], dtype=F64) + 1 - decay**2
    torch.testing.assert_close(x.var(0), var, rtol=0, atol=0.2)


def test_checked_score_and_bad_time():
    target = TARGET_CASES["mixture-iso"]
    x = torch.randn(4, target.dim, dtype=F64)
    _lp, sc = checked_logp_and_score(target, x, 0.3)
    torch.testing.assert_close(checked_score(target, x, 0.3), sc)
    with pytest.raises(ValueError, match="t must be >= 0"):
        target.logp_t(x, -1.0)
    with pytest.raises(TypeError, match="DiffusionTarget"):
        checked_score(TARGET_CASES["double-well"], x, 0.3)


# ---- finite sums -------------------------------------------------------------------------------


def test_minibatch_estimates_are_unbiased():
    # Averaging the estimates over a partition of the data into equal batches gives the full
    # log-density and gradient exactly (up to float64 summation order).
    target = BayesianLogisticRegression.synthetic(n=240, d=3, seed=2, prior_std=2.0)
    assert isinstance(target, FiniteSumTarget)
    x = torch.randn(5, 3, generator=_gen(13), dtype=F64)
    full_lp, full_g = target.logp_and_grad(x)
    perm = torch.randperm(240, generator=_gen(14))
    for batch in (1, 16, 240):
        parts = [target.logp_and_grad_minibatch(x, idx) for idx in perm.split(batch)]
        lp = torch.stack([p[0] for p in parts]).mean(0)
        g = torch.stack([p[1] for p in parts]).mean(0)
        torch.testing.assert_close(lp, full_lp, rtol=1e-11, atol=1e-9)
        torch.testing.assert_close(g, full_g, rtol=1e-11, atol=1e-9)
    # The full logp is -sum_i f_i: log-likelihood plus the log-prior (no constants).
    z = x @ target.features.T
    loglik = (target.labels * z - torch.nn.functional.softplus(z)).sum(1)
    torch.testing.assert_close(full_lp, loglik - 0.5 * (x * x).sum(1) / 4.0)


def test_minibatch_bad_indices():
    target = BayesianLogisticRegression.synthetic(n=50, d=3)
    x = torch.zeros(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"idx must be in \[0, n_data = 50\)"):
        target.logp_and_grad_minibatch(x, torch.tensor([0, 50]))
    with pytest.raises(TypeError, match="idx must have dtype"):
        target.logp_and_grad_minibatch(x, torch.tensor([0.0]))
    with pytest.raises(ValueError, match="at least one"):
        target.logp_and_grad_minibatch(x, torch.tensor([], dtype=torch.int64))
    with pytest.raises(TypeError, match="FiniteSumTarget"):
        checked_logp_and_grad(
            TARGET_CASES["gaussian-iso"], torch.zeros(1, 3, dtype=F64), torch.tensor([0])
        )
    idx = target.random_batch(10, generator=0)
    assert idx.dtype == torch.int64 and idx.unique().numel() == 10
    torch.testing.assert_close(
        checked_grad_logp(target, x, idx), target.logp_and_grad_minibatch(x, idx)[1]
    )


def test_logistic_synthetic_data():
    target = BayesianLogisticRegression.synthetic()
    assert (target.n_data, target.dim) == (3000, 3)
    torch.testing.assert_close(target.true_weights, torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    # The posterior mode is near the truth (N = 3000: the MLE's s.e. is ~0.1 per weight).
    w = torch.zeros(1, 3, dtype=F64)
    for _ in range(50):  # Newton's method on the concave log-posterior
        z = (w @ target.features.T)[0]
        s = torch.sigmoid(z)
        hess = -(target.features.T * (s * (1 - s))) @ target.features - torch.eye(3) / 100.0
        w = w - torch.linalg.solve(hess, target.grad_logp(w)[0])[None]
    torch.testing.assert_close(w[0], target.true_weights, rtol=0, atol=0.5)
    with pytest.raises(NotImplementedError):
        target.sample(3)


# ---- user functions ----------------------------------------------------------------------------


def _quadratic_logp(x):
    return -0.5 * ((x - 1.0) ** 2 / torch.tensor([1.0, 4.0], dtype=x.dtype)).sum(-1)


def test_from_functions_autograd_matches_analytic():
    target = Target.from_functions(2, logp=_quadratic_logp)
    x = torch.randn(6, 2, generator=_gen(15), dtype=F64)
    analytic = -(x - 1.0) / torch.tensor([1.0, 4.0], dtype=F64)
    lp, g = checked_logp_and_grad(target, x)
    torch.testing.assert_close(g, analytic, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(target.grad_logp(x), analytic, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(lp, _quadratic_logp(x))
    assert not lp.requires_grad and not g.requires_grad
    # Also under no_grad / inference mode, as a sampler loop runs.
    with torch.inference_mode():
        torch.testing.assert_close(checked_logp_and_grad(target, x)[1], analytic)


def test_from_functions_variants():
    def grad(x):
        return -(x - 1.0) / torch.tensor([1.0, 4.0], dtype=x.dtype)

    x = torch.randn(3, 2, generator=_gen(16), dtype=F64)
    pair = Target.from_functions(2, logp_and_grad=lambda z: (_quadratic_logp(z), grad(z)))
    both = Target.from_functions(2, logp=_quadratic_logp, grad_logp=grad)
    for t in (pair, both):
        torch.testing.assert_close(checked_logp_and_grad(t, x)[1], grad(x))
    only_grad = Target.from_functions(2, grad_logp=grad)
    assert not only_grad.has_logp
    torch.testing.assert_close(checked_grad_logp(only_grad, x), grad(x))
    with pytest.raises(NotImplementedError, match="no log-density"):
        only_grad.logp(x)
    with pytest.raises(ValueError, match="at least one"):
        Target.from_functions(2)
    with pytest.raises(ValueError, match="either logp_and_grad"):
        Target.from_functions(2, logp=_quadratic_logp, logp_and_grad=lambda z: z)
    with pytest.raises(TypeError, match="callable"):
        Target.from_functions(2, logp=3.0)


def test_bad_user_functions_raise_naming_the_problem():
    x = torch.randn(4, 2, generator=_gen(17), dtype=F64)

    def logp_wrong_shape(z):
        return -0.5 * (z * z).sum(-1, keepdim=True)

    with pytest.raises(ValueError, match=r"logp_wrong_shape.*logp of shape \(4, 1\), expected"):
        checked_logp_and_grad(Target.from_functions(2, logp=logp_wrong_shape), x)

    def grad_wrong_shape(z):
        return -z[:, :1]

    bad = Target.from_functions(2, logp=_quadratic_logp, grad_logp=grad_wrong_shape)
    with pytest.raises(ValueError, match=r"grad_wrong_shape.*grad_logp of shape \(4, 1\)"):
        checked_logp_and_grad(bad, x)

    def nan_grad(z):
        g = -z.clone()
        g[1, 0] = float("nan")
        return _quadratic_logp(z), g

    with pytest.raises(ValueError, match=r"nan_grad.*non-finite grad_logp.*chain 1"):
        checked_logp_and_grad(Target.from_functions(2, logp_and_grad=nan_grad), x)

    def nan_in_logp(z):
        # x_0 < 0 lies outside the support: the NaN log-density rejects the proposal.
        return torch.where(z[:, 0] < 0, torch.nan, -0.5 * (z * z).sum(-1))

    z = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=F64)
    lp, _g = checked_logp_and_grad(Target.from_functions(2, logp=nan_in_logp), z)
    assert torch.isnan(lp[0]) and torch.isfinite(lp[1])
    # ... but a gradient-only sampler must not get a NaN gradient on any chain.
    nan_target = Target.from_functions(2, logp_and_grad=nan_grad)
    with pytest.raises(ValueError, match="non-finite"):
        checked_grad_logp(nan_target, x)

    def through_numpy(z):
        return torch.as_tensor(-0.5 * (z.detach().numpy() ** 2).sum(-1))

    with pytest.raises(ValueError, match=r"through_numpy.*pass grad_logp"):
        checked_logp_and_grad(Target.from_functions(2, logp=through_numpy), x)

    def returns_float(z):
        return 1.0

    with pytest.raises(TypeError, match="returns_float.*must return a torch.Tensor"):
        checked_logp_and_grad(Target.from_functions(2, logp=returns_float), x)

    with pytest.raises(ValueError, match=r"x must have shape \[C, 2\]"):
        checked_logp_and_grad(Target.from_functions(2, logp=_quadratic_logp), torch.zeros(3, 3))


def test_diffusion_from_functions():
    gm = TARGET_CASES["mixture-iso"]
    x = torch.randn(5, gm.dim, generator=_gen(18), dtype=F64)
    from_logp = DiffusionTarget.from_functions(gm.dim, logp_t=gm.logp_t)
    lp, sc = checked_logp_and_score(from_logp, x, 0.4)
    ref_lp, ref_sc = gm.logp_and_score(x, 0.4)
    torch.testing.assert_close(lp, ref_lp)
    torch.testing.assert_close(sc, ref_sc, rtol=1e-10, atol=1e-10)
    score_only = DiffusionTarget.from_functions(gm.dim, score=gm.score)
    assert not score_only.has_logp
    torch.testing.assert_close(checked_score(score_only, x, 0.4), ref_sc)

    def bad_score(z, t):
        return torch.full_like(z, torch.nan)

    with pytest.raises(ValueError, match="bad_score.*non-finite score"):
        checked_score(DiffusionTarget.from_functions(gm.dim, score=bad_score), x, 0.4)


# ---- construction, registry, devices -----------------------------------------------------------


def test_registry_builds_every_target():
    assert set(TARGETS) == {"gaussian", "correlated-gaussian", "mixture", "logistic", "double-well"}
    for name in TARGETS:
        target = make_target(name, dim=2)
        assert target.dim == 2
        x = torch.zeros(3, 2, dtype=F64)
        lp, _g = checked_logp_and_grad(target, x)
        assert torch.isfinite(lp).all()
    assert make_target("mixture", dim=10).n_components == 8
    assert make_target("mixture", dim=1).n_components == 2
    torch.testing.assert_close(
        make_target("logistic", dim=3).true_weights, torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    )
    with pytest.raises(ValueError, match="unknown target 'nope'"):
        make_target("nope")
    with pytest.raises(ValueError, match="2-D"):
        make_target("correlated-gaussian", dim=3)
    with pytest.raises(TypeError, match="mixture"):
        make_target("mixture", dim=2, bogus=1)


def test_to_returns_a_converted_copy():
    target = TARGET_CASES["mixture-full"]
    t32 = target.to(dtype=torch.float32)
    assert t32 is not target
    assert t32.means.dtype == torch.float32 and target.means.dtype == F64
    assert t32.sample(3, generator=0).dtype == torch.float32
    assert DoubleWell(2).to(dtype=torch.float32).sample(3, generator=0).dtype == torch.float32
    with pytest.raises(TypeError, match="float32 or float64"):
        target.to(dtype=torch.float16)


def test_construction_errors():
    with pytest.raises(ValueError, match="covs must be positive definite"):
        Gaussian([0.0, 0.0], cov=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="covs must be symmetric"):
        Gaussian([0.0, 0.0], cov=[[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="weights must be > 0"):
        GaussianMixture([1.0, 0.0], [[0.0], [1.0]])
    with pytest.raises(ValueError, match="stds must be"):
        GaussianMixture([1.0, 1.0], [[0.0], [1.0]], stds=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="mean must be finite"):
        Gaussian([0.0, float("nan")])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        BayesianLogisticRegression(torch.zeros(3, 2), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="a must be > 0"):
        DoubleWell(2, a=0.0)
    with pytest.raises(ValueError, match="dim must be an integer >= 1"):
        DoubleWell(0)
    with pytest.raises(TypeError, match="x must have dtype"):
        TARGET_CASES["gaussian-iso"].logp(torch.zeros(2, 3, dtype=torch.int64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs():
    for target in TARGET_CASES.values():
        x = torch.randn(5, target.dim, generator=_gen(19), dtype=F64)
        lp, g = checked_logp_and_grad(target, x.cuda())
        ref_lp, ref_g = target.logp_and_grad(x)
        torch.testing.assert_close(lp.cpu(), ref_lp)
        torch.testing.assert_close(g.cpu(), ref_g)
        moved = target.to(device="cuda")
        lp2, _g2 = checked_logp_and_grad(moved, x.cuda())
        torch.testing.assert_close(lp2.cpu(), ref_lp)
