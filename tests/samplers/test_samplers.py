"""ponder.samplers: the samplers themselves (ULA/SGLD, MALA, ULD, SPS-SGLD, SPS-MALA, DDPM,
RTK-MALA, RTK-ULD), end to end through Sampler.run / sample().

Targets and metrics have their own tests (test_targets.py, test_metrics.py), and the fused step
kernels theirs (tests/ops/test_langevin.py); here the subject is what the samplers add: state and
caching, minibatches, the SPS and RTK outer loops, budget accounting, seeding, and input checks.

Statistical tests: every run has a fixed seed, so each test is deterministic. Where a threshold
is a number of Monte-Carlo standard errors it is N_SE = 4.5 of them, for the estimator from
i.i.d. final states of independent chains (many chains x few steps, the burn-in chosen so that
< 1e-6 of the start is left); a correct sampler then fails for a random seed with probability
~7e-6 per check. The MMD thresholds were found by running (numbers in each test's docstring) and
set with a stated margin. Long runs use one thread (the `one_thread` fixture): the results do
not depend on the thread count, and the run time then does not depend on the machine's load.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from ponder.ops.langevin import uld_coefficients
from ponder.samplers import (
    DDPM,
    MALA,
    RTK_MALA,
    RTK_ULD,
    SPS_MALA,
    SPS_SGLD,
    ULA,
    ULD,
    BayesianLogisticRegression,
    CorrelatedGaussian,
    DiffusionResult,
    DiffusionTarget,
    Gaussian,
    GaussianMixture,
    Target,
    Trace,
    mmd_rbf,
)

F64 = torch.float64
N_SE = 4.5  # two-sided normal tail: 6.8e-6


@pytest.fixture
def one_thread(restore_threads):
    torch.set_num_threads(1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _se_var(var: float, n: int) -> float:
    """Standard error of the sample variance of n i.i.d. normal draws."""
    return var * math.sqrt(2.0 / (n - 1))


# Small targets shared by the API tests (cheap to build; float64 parameters).
GAUSS = Gaussian(torch.tensor([0.5, -1.0], dtype=F64), std=torch.tensor([1.0, 2.0], dtype=F64))
LOGREG = BayesianLogisticRegression.synthetic(n=100, d=2, true_weights=(1.0, 2.0), seed=3)
MIX = GaussianMixture.symmetric(2)

# One constructor per sampler kind: factory(generator) -> sampler.
LANGEVIN = {
    "ula": lambda gen: ULA(GAUSS, 0.2, generator=gen),
    "sgld": lambda gen: ULA(LOGREG, 1e-3, batch_size=10, generator=gen),
    "mala": lambda gen: MALA(GAUSS, 0.5, generator=gen),
    "uld": lambda gen: ULD(GAUSS, 0.3, 1.5, generator=gen),
    "uld-batch": lambda gen: ULD(LOGREG, 1e-3, 1.5, batch_size=10, generator=gen),
    "sps-sgld": lambda gen: SPS_SGLD(LOGREG, 0.01, 0.005, 3, batch_size=10, generator=gen),
    "sps-mala": lambda gen: SPS_MALA(GAUSS, 1.0, 0.5, 3, generator=gen),
    "sps-mala-batch": lambda gen: SPS_MALA(LOGREG, 0.01, 0.005, 3, batch_size=10, generator=gen),
}
DIFFUSION = {
    "ddpm": lambda gen: DDPM(MIX, 20, generator=gen),
    "rtk-mala": lambda gen: RTK_MALA(MIX, 4, 3, generator=gen),
    "rtk-mala-simpson": lambda gen: RTK_MALA(MIX, 4, 3, energy="simpson", generator=gen),
    "rtk-uld": lambda gen: RTK_ULD(MIX, 4, 3, generator=gen),
}


def _x0(chains: int = 6, dtype=F64) -> torch.Tensor:
    return torch.randn(chains, 2, generator=_gen(99), dtype=dtype)


# ============================================================================================
# Correctness on targets with known answers (docs/samplers.md, "Correctness tests")
# ============================================================================================


def test_mala_recovers_gaussian_1d(one_thread):
    """MALA on N(1, 2^2), 20k chains from x = -3, h = 2, 200 steps; the final states are i.i.d.
    Mean and variance within 4.5 standard errors (0.064 and 0.18, i.e. 4.5% of the variance).
    h = 2 is deliberately large: ULA there would have variance 4 / (1 - 2/8) = 5.33, 33 standard
    errors off, so a missing or wrong Metropolis step fails. The burn-in: MALA contracts the
    offset by about (1 - h/4) = 0.5 per accepted step (acceptance ~0.92): 200 steps leave
    nothing of the start."""
    mu, s, h, chains, steps = 1.0, 2.0, 2.0, 20_000, 200
    target = Gaussian(torch.tensor([mu], dtype=F64), std=s)
    trace = MALA(target, h, generator=1).run(torch.full((chains, 1), -3.0, dtype=F64), steps)
    x = trace.state.x[:, 0]
    assert abs(x.mean().item() - mu) < N_SE * s / math.sqrt(chains)
    assert abs(x.var().item() - s**2) < N_SE * _se_var(s**2, chains)
    ula_var = s**2 / (1 - h / (2 * s**2))
    assert ula_var - s**2 > 20 * _se_var(s**2, chains)  # the test can tell MALA from ULA
    assert 0.5 < trace.stats["acceptance"] < 1.0
    assert trace.state.grad_calls == steps + 1  # one call per step plus the initial one
    assert trace.stats["grad_calls"] == steps + 1


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_ula_stationary_variance_is_exact(temperature, one_thread):
    """ULA on f = x^2 / (2 s^2) (s = 2, h = 1) is the AR(1) x' = (1 - h/s^2) x + sqrt(2hT) xi:
    stationary variance T s^2 / (1 - h / (2 s^2)) = 4.571 T exactly, 14% above the target's
    T s^2, i.e. 28 standard errors of the 100k-chain sample variance: the test sees the bias.
    60 steps of contraction 0.75 leave 0.75^120 ~ 1e-15 of the start's variance."""
    s, h, chains = 2.0, 1.0, 100_000
    exact = temperature * s**2 / (1 - h / (2 * s**2))
    target = Gaussian(torch.zeros(1, dtype=F64), std=s)
    sampler = ULA(target, h, temperature=temperature, generator=2)
    x = sampler.run(torch.zeros(chains, 1, dtype=F64), 60).state.x[:, 0]
    assert abs(x.var().item() - exact) < N_SE * _se_var(exact, chains)
    assert abs(x.mean().item()) < N_SE * math.sqrt(exact / chains)
    assert exact - temperature * s**2 > 20 * _se_var(exact, chains)


def test_mala_correlated_gaussian_moments(one_thread):
    """MALA on a 2-D Gaussian with rho = 0.9, stds (1, 2), mean (1, -1) (condition number 31):
    20k chains, h = 0.25, 400 steps from 0. Means, variances and the correlation of the final
    states within 4.5 standard errors: s_i / sqrt(n), s_i^2 sqrt(2 / (n - 1)) and
    (1 - rho^2) / sqrt(n). Burn-in: the slow direction (variance 4.84) contracts by about
    1 - 0.25 * 0.6 / 4.84 = 0.97 per step at acceptance 0.6: 0.97^400 ~ 5e-6."""
    rho, std, mean = 0.9, (1.0, 2.0), (1.0, -1.0)
    chains = 20_000
    target = CorrelatedGaussian(rho, std=std, mean=mean)
    trace = MALA(target, 0.25, generator=3).run(torch.zeros(chains, 2, dtype=F64), 400)
    x = trace.state.x
    cov = torch.cov(x.T)
    for i in range(2):
        assert abs(x[:, i].mean().item() - mean[i]) < N_SE * std[i] / math.sqrt(chains), i
        assert abs(cov[i, i].item() - std[i] ** 2) < N_SE * _se_var(std[i] ** 2, chains), i
    r = (cov[0, 1] / cov.diag().prod().sqrt()).item()
    assert abs(r - rho) < N_SE * (1 - rho**2) / math.sqrt(chains)
    assert 0.3 < trace.stats["acceptance"] < 0.95


def test_uld_stationary_covariance_matches_lyapunov(one_thread):
    """ULD (exact OU integrator, gradient frozen over a step) on a correlated 2-D Gaussian
    N(m, Sigma) is linear: (x, v) -> M (x, v) + noise with M = [[I - e P, b I], [-b P, a I]],
    P = Sigma^-1, and noise covariance Q from uld_coefficients. Its exact stationary covariance
    solves S = M S M^T + Q (docs/samplers.md). All 10 entries of the joint (x, v) covariance of
    100k chains within 4.5 standard errors of S (sqrt((S_ii S_jj + S_ij^2) / n)), and the mean of
    x within 4.5 standard errors of m (the scheme's stationary mean is exact). At h = 0.3,
    gamma = 2 the target's own variances are 17 (x_1) and 35 (x_2) standard errors from S's, so
    this is tight: it checks the scheme, not just closeness to the target."""
    h, gamma, chains, steps = 0.3, 2.0, 100_000, 100
    target = CorrelatedGaussian(0.5, std=(1.0, 0.7), mean=(0.5, -1.0))
    sigma = target.covariance.numpy()
    prec = np.linalg.inv(sigma)
    a, b, e, sv, sxv, sx = uld_coefficients(h, gamma)
    eye = np.eye(2)
    m = np.block([[eye - e * prec, b * eye], [-b * prec, a * eye]])
    q = np.block([[(sxv**2 + sx**2) * eye, sxv * sv * eye], [sxv * sv * eye, sv**2 * eye]])
    exact = scipy.linalg.solve_discrete_lyapunov(m, q)
    radius = max(abs(np.linalg.eigvals(m)))
    assert radius**steps < 1e-8  # 0.80^100: nothing of the start is left

    trace = ULD(target, h, gamma, generator=4).run(torch.zeros(chains, 2, dtype=F64), steps)
    xv = torch.cat([trace.state.x, trace.state.v], dim=1).numpy()
    emp = np.cov(xv.T)
    se = np.sqrt((np.outer(np.diag(exact), np.diag(exact)) + exact**2) / chains)
    assert (np.abs(emp - exact) < N_SE * se).all(), (emp, exact)
    mean_err = xv[:, :2].mean(0) - np.array([0.5, -1.0])
    assert (np.abs(mean_err) < N_SE * np.sqrt(np.diag(exact)[:2] / chains)).all()
    assert abs(exact[0, 0] - sigma[0, 0]) > 15 * se[0, 0]  # biased at O(h), measurably
    assert trace.state.grad_calls == steps + 1


def test_sps_mala_is_exact_on_gaussian(one_thread):
    """SPS-MALA with the inner chain started at the current x (inner_init="x") is a Gibbs
    sampler on (x, y) ~ p(x) N(y; x, eta) whose x-update is a Metropolis-corrected kernel for
    the RGO p(x | y), started from a draw of it: exact for any inner_steps. N(1, 2^2), 20k chains
    from -3, eta = 2, tau = 1, S = 2, 150 outer steps (the outer chain's autocorrelation is about
    s^2 / (s^2 + eta) = 0.67 per step): mean and variance within 4.5 standard errors. Without
    the Metropolis test (SPS-SGLD, same settings) the variance would be 5.51, 38 standard errors
    away. (The default inner_init="y" starts the inner chain at the proximal centre, which is
    not a draw from the RGO: exact only as S grows; at S = 2 here its variance is 4.29.)"""
    mu, s, eta, tau, inner, chains, steps = 1.0, 2.0, 2.0, 1.0, 2, 20_000, 150
    target = Gaussian(torch.tensor([mu], dtype=F64), std=s)
    sampler = SPS_MALA(target, eta, tau, inner, inner_init="x", generator=5)
    trace = sampler.run(torch.full((chains, 1), -3.0, dtype=F64), steps)
    x = trace.state.x[:, 0]
    assert abs(x.mean().item() - mu) < N_SE * s / math.sqrt(chains)
    assert abs(x.var().item() - s**2) < N_SE * _se_var(s**2, chains)
    assert 0.5 < trace.stats["acceptance"] < 1.0
    assert trace.state.grad_calls == steps * (inner + 1)


def _sps_sgld_gaussian_law(s: float, eta: float, tau: float, inner: int, init: str
                           ) -> tuple[float, float]:
    """(stationary variance, contraction) of SPS-SGLD with full gradients on N(m, s^2).

    Centred at m: y = x + sqrt(eta) xi', then S inner steps z' = A z + c y + sqrt(2 tau) xi_k,
    A = 1 - tau/eta - tau/s^2, c = tau/eta, from z = x (init "x") or z = y (init "y"). With
    alpha = A^S, beta = c sum_{k<S} A^k, r = alpha + beta and N = 2 tau sum_{k<S} A^2k:
    init "x": x' = r x + beta sqrt(eta) xi' + noise(N); init "y": x' = r y + noise(N)."""
    a = 1 - tau / eta - tau / s**2
    alpha = a**inner
    beta = (tau / eta) * sum(a**k for k in range(inner))
    noise = 2 * tau * sum(a ** (2 * k) for k in range(inner))
    r = alpha + beta
    centre = beta if init == "x" else r
    return (centre**2 * eta + noise) / (1 - r**2), r


@pytest.mark.parametrize("init", ["x", "y"])
def test_sps_sgld_stationary_variance_is_exact(init, one_thread):
    """SPS-SGLD with full gradients on N(1, 2^2) is linear (see _sps_sgld_gaussian_law): its
    stationary mean is exactly 1 and its variance, at eta = 2, tau = 1, S = 2, is 5.51 (inner
    chain from x) or 5.82 (from y), 38-46% above the target's 4, i.e. > 40 standard errors of
    100k chains. Both within 4.5 standard errors. 60 outer steps at contraction 0.69 leave
    < 1e-9 of the start."""
    mu, s, eta, tau, inner, chains, steps = 1.0, 2.0, 2.0, 1.0, 2, 100_000, 60
    var, r = _sps_sgld_gaussian_law(s, eta, tau, inner, init)
    assert abs(r) ** steps < 1e-9
    target = Gaussian(torch.tensor([mu], dtype=F64), std=s)
    sampler = SPS_SGLD(target, eta, tau, inner, inner_init=init, generator=6)
    trace = sampler.run(torch.full((chains, 1), -3.0, dtype=F64), steps)
    x = trace.state.x[:, 0]
    assert abs(x.mean().item() - mu) < N_SE * math.sqrt(var / chains)
    assert abs(x.var().item() - var) < N_SE * _se_var(var, chains)
    assert var - s**2 > 20 * _se_var(var, chains)
    assert trace.state.grad_calls == steps * inner


# ---- Bayesian logistic regression (N = 3000, d = 3, true weights (1, 2, 3)) ------------------


@pytest.fixture(scope="module")
def logistic():
    """The target, its MAP (Newton's method), and MALA's posterior mean as the reference.

    MALA: 64 chains from 0, h = 0.003 (acceptance ~0.75), 300 steps, the last 200 kept. Its
    posterior mean agreed with the MAP to < 0.013 in exploration (the posterior's skew; posterior
    sds 0.07-0.13, Monte-Carlo errors 0.002-0.005)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        target = BayesianLogisticRegression.synthetic()
        feats, labels = target.features, target.labels
        w = torch.zeros(3, dtype=F64)
        for _ in range(25):
            p = torch.sigmoid(feats @ w)
            grad = feats.T @ (labels - p) - w / target.prior_std**2
            hess = (feats.T * (p * (1 - p))) @ feats + torch.eye(3, dtype=F64) / target.prior_std**2
            w = w + torch.linalg.solve(hess, grad)
        post_sd = torch.linalg.inv(hess).diagonal().sqrt()
        trace = MALA(target, 0.003, generator=7).run(torch.zeros(64, 3, dtype=F64), 300,
                                                     burn_in=100)
        mala_mean = trace.samples.reshape(-1, 3).mean(0)
        return target, w, post_sd, mala_mean, trace
    finally:
        torch.set_num_threads(threads)


def test_logistic_mala_posterior_mean(logistic):
    """MALA's posterior mean is within 0.03 of the MAP (~0.25 posterior sd: the skew seen in
    exploration was < 0.013) and within 0.35 of the true weights (1, 2, 3): for this data set
    (seed 0) the posterior itself sits 0.08-0.22 (1.2-2.1 posterior sds) from the truth."""
    target, w_map, post_sd, mala_mean, trace = logistic
    truth = target.true_weights
    assert torch.equal(truth, torch.tensor([1.0, 2.0, 3.0], dtype=F64))
    assert target.n_data == 3000 and target.dim == 3
    assert (mala_mean - w_map).abs().max() < 0.03, (mala_mean, w_map)
    assert (mala_mean - truth).abs().max() < 0.35, mala_mean
    assert bool((post_sd > 0.05).all() and (post_sd < 0.15).all())  # the scales quoted above
    assert 0.5 < trace.stats["acceptance"] < 0.95


@pytest.mark.parametrize("kind", ["sgld", "sps-sgld"])
def test_logistic_stochastic_gradient_posterior_means(kind, logistic, one_thread):
    """SGLD (ULA with batch_size = 100, h = 5e-4, 1200 steps, the last 1000 kept) and SPS-SGLD
    (batch_size = 100, eta = 0.002, tau = 0.001, S = 3, inner chain from y, 600 steps, the last
    500 kept), 100 chains from 0: posterior means within 0.1 of MALA's and within 0.4 of the
    truth (MALA's is 0.08-0.22 from it, see above). Over 8 seeds
    in exploration their errors against the MAP had a bias < 0.03 and a spread (sd) < 0.018 per
    coordinate (all chains share each minibatch, so the chains' errors are correlated and the
    spread comes from the time average): 0.1 is > 4 sds beyond the bias. A minibatch gradient
    scaled wrongly (say without n / B) would put the mean near 0."""
    target, _, _, mala_mean, _ = logistic
    x0 = torch.zeros(100, 3, dtype=F64)
    if kind == "sgld":
        steps, batch = 1200, 100
        trace = ULA(target, 5e-4, batch_size=batch, generator=8).run(x0, steps, burn_in=200)
        assert trace.state.data_grads == steps * batch
        assert trace.state.grad_calls == steps
    else:
        steps, batch, inner = 600, 100, 3
        sampler = SPS_SGLD(target, 0.002, 0.001, inner, batch_size=batch, inner_init="y",
                           generator=9)
        trace = sampler.run(x0, steps, burn_in=100)
        assert trace.state.data_grads == steps * inner * batch
        assert trace.state.grad_calls == steps * inner
    mean = trace.samples.reshape(-1, 3).mean(0)
    assert (mean - mala_mean).abs().max() < 0.1, (mean, mala_mean)
    assert (mean - target.true_weights).abs().max() < 0.4, mean


# ============================================================================================
# The targets: MMD within a budget of gradient / score calls (2-D mixture)
# ============================================================================================

MMD_BANDWIDTH = math.sqrt(2.0)  # sqrt(d): the distance scale of two draws from one mode
MMD_LEVEL = 0.003
N_MMD = 2000


@pytest.fixture(scope="module")
def mixture_reference():
    """GaussianMixture.symmetric(2): 4 unit-std modes at +-4 e_j. 2000 exact reference draws.
    Two independent exact sets of 2000 give an unbiased MMD^2 of 0 +- 0.0003 (sd over 20 seeds,
    max 0.0005), so MMD_LEVEL = 0.003 is ~10 floor sds: a sampler below it is close to exact."""
    return MIX, MIX.sample(N_MMD, generator=1)


def test_sps_mala_reaches_mmd_on_mixture(mixture_reference, one_thread):
    """SPS-MALA (eta = 4, tau = 0.8, S = 5, inner chain from the proximal centre y), 2000 chains
    all started in the mode at +4 e_1: MMD^2 <= 0.003 within a budget of 300 gradient calls per
    chain (50 outer steps of S + 1 calls). In exploration (seeds 0-4) it was at the floor
    (|MMD^2| < 0.0006) already after 120 calls and stayed there: a budget margin of 2.5x. (With
    the inner chain from x it needs 600-780 calls.) The start (one mode only) is at MMD^2 ~0.77,
    250 times the threshold."""
    target, ref = mixture_reference
    budget, eta, tau, inner = 300, 4.0, 0.8, 5
    x0 = target.means[0] + 0.1 * torch.randn(N_MMD, 2, generator=_gen(0), dtype=F64)
    assert mmd_rbf(x0, ref, bandwidth=MMD_BANDWIDTH) > 100 * MMD_LEVEL
    sampler = SPS_MALA(target, eta, tau, inner, inner_init="y", generator=0)
    trace = sampler.run(x0, budget // (inner + 1))
    assert trace.stats["grad_calls"] == budget
    assert trace.state.grad_calls == budget
    assert mmd_rbf(trace.state.x, ref, bandwidth=MMD_BANDWIDTH) < MMD_LEVEL


def _rgo_step(c: float, segments: int = 10, horizon: float = 5.0) -> float:
    """c / (1 + e^-2eta / (1 - e^-2eta)), eta = horizon / segments: RTK's inner step rule."""
    eta = horizon / segments
    return c / (1.0 + math.exp(-2 * eta) / -math.expm1(-2 * eta))


@pytest.mark.parametrize("name,budget", [("rtk-uld", 110), ("rtk-mala", 60), ("ddpm", 1000)])
def test_diffusion_reaches_mmd_on_mixture(name, budget, mixture_reference):
    """2000 samples with MMD^2 <= 0.003 within a budget of score evaluations per sample:
    RTK-ULD (K = 10, S = 10, friction 2, inner step 0.5 / (1 + e^-2eta / (1 - e^-2eta)) = 0.32):
    110; RTK-MALA (K = 10, S = 5, exact energies, its default inner step, same rule): 60; DDPM
    with 1000 steps: 1000. The settings are spelled out, not left to defaults, so a change of
    defaults does not move these numbers. Exploration over seeds 0-2 gave MMD^2 <= 0.0006
    (RTK-ULD), <= 0.0003 (RTK-MALA), <= 0.0003 (DDPM): thresholds at >= 5x the worst seen.
    (RTK-ULD here with S = 5 was at ~0.03 and RTK-MALA with K = 5, S = 3 at ~0.007: the budgets
    are not generous.) The reverse process's start, N(0, I), is at MMD^2 > 0.1 from the
    mixture.

    This RTK-ULD setting is one whose result stays put as S grows (S = 20, 40: <= 0.0003). With
    the current defaults (friction 1, inner step 0.63) RTK-ULD is good at S = 3-5 but drifts to
    ~0.007-0.015 at S = 10-40: the inner ULD's own O(h) stationary bias."""
    target, ref = mixture_reference
    sampler = {
        "rtk-uld": lambda: RTK_ULD(target, 10, 10, friction=2.0, inner_step_size=_rgo_step(0.5),
                                   generator=0),
        "rtk-mala": lambda: RTK_MALA(target, 10, 5, inner_step_size=_rgo_step(0.5), generator=0),
        "ddpm": lambda: DDPM(target, 1000, generator=0),
    }[name]()
    result = sampler.sample(N_MMD)
    assert isinstance(result, DiffusionResult)
    assert result.samples.shape == (N_MMD, 2) and result.samples.dtype == torch.float32
    assert result.nfe == budget
    prior = torch.randn(N_MMD, 2, generator=_gen(2), dtype=F64)
    assert mmd_rbf(prior, ref, bandwidth=MMD_BANDWIDTH) > 30 * MMD_LEVEL
    assert mmd_rbf(result.samples, ref, bandwidth=MMD_BANDWIDTH) < MMD_LEVEL


def test_rtk_mala_simpson_on_a_score_only_target(mixture_reference):
    """A score model alone (DiffusionTarget.from_functions(dim, score=...)): RTK-MALA with
    energy="simpson" (one extra score call per inner step: NFE = K (2S + 1)) reaches the same
    MMD level as the exact-energy run, with acceptance rates within 0.01 of each other (0.892 for
    both in exploration: Simpson's rule on a smooth log-density is nearly exact)."""
    target, ref = mixture_reference
    score_only = DiffusionTarget.from_functions(2, score=target.score)
    assert not score_only.has_logp
    segments, inner = 10, 5
    step = _rgo_step(0.5)
    simpson = RTK_MALA(score_only, segments, inner, inner_step_size=step, energy="simpson",
                       generator=0).sample(N_MMD)
    exact = RTK_MALA(target, segments, inner, inner_step_size=step, generator=0).sample(N_MMD)
    assert simpson.nfe == segments * (2 * inner + 1)
    assert exact.nfe == segments * (inner + 1)
    assert mmd_rbf(simpson.samples, ref, bandwidth=MMD_BANDWIDTH) < MMD_LEVEL
    assert abs(simpson.acceptance - exact.acceptance) < 0.01
    # energy="exact" (also the default) needs logp_t: an error up front, naming the fix.
    with pytest.raises(ValueError, match="exact.*simpson"):
        RTK_MALA(score_only, segments, inner, energy="exact")
    with pytest.raises(ValueError, match="logp_t"):
        RTK_MALA(score_only)


def test_score_only_target_gives_the_same_draws_to_ddpm():
    """DDPM only needs scores: on a score-only wrapper of the mixture it gives exactly the draws
    it gives on the mixture itself (same seed)."""
    score_only = DiffusionTarget.from_functions(2, score=MIX.score)
    draws = DDPM(score_only, 30, generator=3).sample(50).samples
    assert torch.equal(draws, DDPM(MIX, 30, generator=3).sample(50).samples)


# ============================================================================================
# Budget accounting: the counters match the oracle calls actually made
# ============================================================================================


def _counting_target(dim: int = 2):
    """N(0, I) from a user logp_and_grad function that counts its (batched) calls."""
    calls = {"n": 0}

    def logp_and_grad(x):
        calls["n"] += 1
        return -0.5 * (x * x).sum(-1), -x

    return Target.from_functions(dim, logp_and_grad=logp_and_grad), calls


@pytest.mark.parametrize("kind,per_step,initial", [
    ("ula", 1, 0), ("mala", 1, 1), ("uld", 1, 1), ("sps-sgld", 4, 0), ("sps-mala", 5, 0),
])
def test_grad_calls_count_the_oracle_calls(kind, per_step, initial):
    """grad_calls == the number of calls of the user's function: ULA `steps`, MALA and ULD
    `steps + 1` (the initial gradient is cached), SPS-SGLD `steps * S`, SPS-MALA
    `steps * (S + 1)` (S = 4). Without a finite sum, data_grads == grad_calls."""
    target, calls = _counting_target()
    make = {
        "ula": lambda: ULA(target, 0.1, generator=0),
        "mala": lambda: MALA(target, 0.1, generator=0),
        "uld": lambda: ULD(target, 0.1, generator=0),
        "sps-sgld": lambda: SPS_SGLD(target, 1.0, 0.1, 4, generator=0),
        "sps-mala": lambda: SPS_MALA(target, 1.0, 0.1, 4, generator=0),
    }[kind]
    steps = 7
    trace = make().run(_x0(), steps)
    expected = steps * per_step + initial
    assert calls["n"] == expected
    assert trace.state.grad_calls == trace.state.data_grads == expected
    assert trace.stats["grad_calls"] == trace.stats["data_grads"] == expected
    assert trace.state.step == steps and trace.stats["steps"] == steps


@pytest.mark.parametrize("kind", ["sgld", "uld-batch", "sps-sgld", "sps-mala-batch", "full"])
def test_data_grads_count_per_datum_gradients(kind):
    """Finite sums: data_grads counts per-datum gradients per chain. SGLD: steps * batch_size;
    ULD: (steps + 1) * batch_size; SPS-SGLD: steps * S * batch_size (a fresh batch per inner
    step); SPS-MALA: steps * (S + 1) * batch_size (one batch per outer step); full gradients:
    n_data per call."""
    steps, batch, inner, n = 6, 10, 3, LOGREG.n_data
    sampler, calls = {
        "sgld": (LANGEVIN["sgld"](0), steps),
        "uld-batch": (LANGEVIN["uld-batch"](0), steps + 1),
        "sps-sgld": (LANGEVIN["sps-sgld"](0), steps * inner),
        "sps-mala-batch": (LANGEVIN["sps-mala-batch"](0), steps * (inner + 1)),
        "full": (MALA(LOGREG, 1e-3, generator=0), steps + 1),
    }[kind]
    trace = sampler.run(_x0(), steps)
    assert trace.state.grad_calls == calls
    assert trace.state.data_grads == calls * (n if kind == "full" else batch)


def test_diffusion_nfe_counts_the_score_calls():
    """DiffusionResult.nfe == the calls of the user's function: DDPM n_steps; RTK K (S + 1)
    with exact energies (RTK-MALA) and for RTK-ULD; K (2S + 1) with energy="simpson"."""
    calls = {"n": 0}

    def logp_and_score(x, t):
        calls["n"] += 1
        return MIX.logp_and_score(x, t)

    def score(x, t):
        calls["n"] += 1
        return MIX.score(x, t)

    full = DiffusionTarget.from_functions(2, logp_and_score=logp_and_score)
    score_only = DiffusionTarget.from_functions(2, score=score)
    k, s = 4, 3
    cases = [
        (DDPM(full, 17, generator=0), 17),
        (RTK_MALA(full, k, s, generator=0), k * (s + 1)),
        (RTK_ULD(full, k, s, generator=0), k * (s + 1)),
        (RTK_MALA(score_only, k, s, energy="simpson", generator=0), k * (2 * s + 1)),
        (DDPM(score_only, 9, generator=0), 9),
    ]
    for sampler, expected in cases:
        calls["n"] = 0
        result = sampler.sample(8)
        assert result.nfe == expected == calls["n"], type(sampler).__name__


# ============================================================================================
# Reproducibility
# ============================================================================================


def _draws(kind: str, generator) -> torch.Tensor:
    if kind in LANGEVIN:
        return LANGEVIN[kind](generator).run(_x0(), 5).samples
    return DIFFUSION[kind](generator).sample(16).samples


@pytest.mark.parametrize("kind", [*LANGEVIN, *DIFFUSION])
def test_seeds_reproduce_runs(kind):
    """The same int seed gives an identical trace; another seed a different one; a
    torch.Generator seeded the same gives the int seed's trace; one sampler object run twice
    with an int seed repeats itself (every run reseeds)."""
    first = _draws(kind, 11)
    assert torch.isfinite(first).all()
    assert torch.equal(first, _draws(kind, 11))
    assert not torch.equal(first, _draws(kind, 12))
    assert torch.equal(first, _draws(kind, _gen(11)))
    if kind in LANGEVIN:
        sampler = LANGEVIN[kind](11)
        assert torch.equal(sampler.run(_x0(), 5).samples, sampler.run(_x0(), 5).samples)
    else:
        sampler = DIFFUSION[kind](11)
        assert torch.equal(sampler.sample(16).samples, sampler.sample(16).samples)


def test_unseeded_runs_differ():
    """generator=None draws from torch's default generator, which moves on between runs."""
    sampler = MALA(GAUSS, 0.5)
    assert not torch.equal(sampler.run(_x0(), 3).samples, sampler.run(_x0(), 3).samples)


@pytest.mark.parametrize("kind", [*LANGEVIN, *DIFFUSION])
def test_manual_seed_reproduces_unseeded_runs(kind):
    """generator=None means torch's default generator, as in ponder.ops: torch.manual_seed
    before a run reproduces it."""
    torch.manual_seed(5)
    first = _draws(kind, None)
    torch.manual_seed(5)
    assert torch.equal(first, _draws(kind, None))
    torch.manual_seed(6)
    assert not torch.equal(first, _draws(kind, None))


# ============================================================================================
# Inputs
# ============================================================================================


@pytest.mark.parametrize("kind", list(LANGEVIN))
def test_x0_as_numpy_array(kind):
    """x0 as a numpy array (DLPack) gives the same trace as the equivalent tensor, keeps
    float64, and is not modified."""
    x0 = _x0().numpy().copy()
    before = x0.copy()
    trace = LANGEVIN[kind](0).run(x0, 4)
    assert trace.samples.dtype == F64
    assert torch.equal(trace.samples, LANGEVIN[kind](0).run(torch.from_numpy(before), 4).samples)
    np.testing.assert_array_equal(x0, before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", list(LANGEVIN))
def test_x0_dtype_is_kept(kind, dtype):
    trace = LANGEVIN[kind](0).run(_x0(dtype=dtype), 3)
    assert trace.samples.dtype == dtype and trace.state.x.dtype == dtype
    assert trace.samples.shape == (3, 6, 2)
    if trace.state.v is not None:
        assert trace.state.v.dtype == dtype


def test_x0_integer_array_becomes_float32():
    trace = MALA(GAUSS, 0.5, generator=0).run(np.zeros((3, 2), dtype=np.int64), 2)
    assert trace.samples.dtype == torch.float32


@pytest.mark.parametrize("bad,match", [
    (torch.zeros(4, 3, dtype=F64), "x0 has dim 3"),
    (torch.zeros(4, 1, dtype=F64), "x0 has dim 1"),
    (torch.zeros(4, dtype=F64), r"x0 must be \[chains, dim\]"),
    (torch.zeros(2, 4, 2, dtype=F64), r"x0 must be \[chains, dim\]"),
    (torch.tensor([[0.0, math.nan]], dtype=F64), "x0 has non-finite"),
    (torch.tensor([[math.inf, 0.0]], dtype=F64), "x0 has non-finite"),
    (np.array([[0.0, -np.inf]]), "x0 has non-finite"),
], ids=["dim3", "dim1", "1d", "3d", "nan", "inf", "numpy-inf"])
@pytest.mark.parametrize("kind", list(LANGEVIN))
def test_bad_x0_is_named(kind, bad, match):
    with pytest.raises(ValueError, match=match):
        LANGEVIN[kind](0).run(bad, 2)


# ============================================================================================
# Bad arguments: a clear error naming the problem
# ============================================================================================

_NONPOSITIVE = [(math.nan, "finite"), (math.inf, "finite"), (-math.inf, "finite"),
                (0.0, "> 0"), (-0.1, "> 0")]

# (constructor taking the bad value, argument name in the message)
_STEP_ARGS = {
    "ula-step_size": (lambda v: ULA(GAUSS, v), "step_size"),
    "mala-step_size": (lambda v: MALA(GAUSS, v), "step_size"),
    "uld-step_size": (lambda v: ULD(GAUSS, v), "step_size"),
    "uld-friction": (lambda v: ULD(GAUSS, 0.1, v), "friction"),
    "sps-sgld-eta": (lambda v: SPS_SGLD(GAUSS, v, 0.1, 2), "eta"),
    "sps-sgld-inner_step_size": (lambda v: SPS_SGLD(GAUSS, 1.0, v, 2), "inner_step_size"),
    "sps-mala-eta": (lambda v: SPS_MALA(GAUSS, v, 0.1, 2), "eta"),
    "sps-mala-inner_step_size": (lambda v: SPS_MALA(GAUSS, 1.0, v, 2), "inner_step_size"),
    "rtk-mala-inner_step_size": (lambda v: RTK_MALA(MIX, inner_step_size=v), "inner_step_size"),
    "rtk-uld-inner_step_size": (lambda v: RTK_ULD(MIX, inner_step_size=v), "inner_step_size"),
    "rtk-uld-friction": (lambda v: RTK_ULD(MIX, friction=v), "friction"),
    "rtk-horizon": (lambda v: RTK_MALA(MIX, horizon=v), "horizon"),
    "ddpm-horizon": (lambda v: DDPM(MIX, 10, horizon=v), "horizon"),
}


@pytest.mark.parametrize("value,problem", _NONPOSITIVE, ids=["nan", "inf", "-inf", "0", "neg"])
@pytest.mark.parametrize("arg", list(_STEP_ARGS))
def test_bad_step_size_is_named(arg, value, problem):
    make, name = _STEP_ARGS[arg]
    with pytest.raises(ValueError, match=f"{name} must be {problem}"):
        make(value)


_NON_NUMBERS = {"bool": True, "str": "0.1", "tensor": torch.tensor(0.1), "none": None}


@pytest.mark.parametrize("arg,value", [
    pytest.param(arg, value, id=f"{arg}-{vid}")
    for arg in _STEP_ARGS for vid, value in _NON_NUMBERS.items()
    # None is RTK's documented default inner step size (a rule of the segment length).
    if not (value is None and arg.startswith("rtk") and arg.endswith("inner_step_size"))
])
def test_non_number_step_size_is_a_type_error(arg, value):
    make, name = _STEP_ARGS[arg]
    with pytest.raises(TypeError, match=f"{name} must be a real number"):
        make(value)


def test_ula_temperature_is_checked():
    with pytest.raises(ValueError, match="temperature must be finite"):
        ULA(GAUSS, 0.1, temperature=math.nan)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        ULA(GAUSS, 0.1, temperature=-1.0)
    # T = 0 is allowed: gradient ascent, no noise.
    trace = ULA(GAUSS, 0.1, temperature=0.0, generator=0).run(_x0(), 1)
    x0 = _x0()
    assert torch.allclose(trace.state.x, x0 + 0.1 * GAUSS.grad_logp(x0))


@pytest.mark.parametrize("make", [
    lambda b: ULA(GAUSS, 0.1, batch_size=b),
    lambda b: ULD(GAUSS, 0.1, batch_size=b),
    lambda b: SPS_SGLD(GAUSS, 1.0, 0.1, 2, batch_size=b),
    lambda b: SPS_MALA(GAUSS, 1.0, 0.1, 2, batch_size=b),
], ids=["ula", "uld", "sps-sgld", "sps-mala"])
def test_batch_size_needs_a_finite_sum(make):
    with pytest.raises(ValueError, match="batch_size needs a FiniteSumTarget"):
        make(10)


@pytest.mark.parametrize("batch", [0, -1, LOGREG.n_data + 1, 2.5])
@pytest.mark.parametrize("make", [
    lambda b: ULA(LOGREG, 0.1, batch_size=b),
    lambda b: ULD(LOGREG, 0.1, batch_size=b),
    lambda b: SPS_SGLD(LOGREG, 1.0, 0.1, 2, batch_size=b),
    lambda b: SPS_MALA(LOGREG, 1.0, 0.1, 2, batch_size=b),
], ids=["ula", "uld", "sps-sgld", "sps-mala"])
def test_batch_size_out_of_range(make, batch):
    # A non-integer is a TypeError, an integer out of range a ValueError; same message.
    with pytest.raises((TypeError, ValueError), match=rf"batch_size must be an integer in \[1, {LOGREG.n_data}\]"):
        make(batch)


def test_mala_takes_no_batch_size():
    """MALA's Metropolis test needs the exact log-density: no minibatch argument at all."""
    with pytest.raises(TypeError, match="batch_size"):
        MALA(LOGREG, 0.1, batch_size=10)  # type: ignore[call-arg]


@pytest.mark.parametrize("make,match", [
    (lambda: SPS_SGLD(GAUSS, 1.0, 0.1, 0), "inner_steps must be an integer >= 1"),
    (lambda: SPS_MALA(GAUSS, 1.0, 0.1, -2), "inner_steps must be an integer >= 1"),
    (lambda: SPS_MALA(GAUSS, 1.0, 0.1, 1.5), "inner_steps must be an integer >= 1"),  # TypeError
    (lambda: SPS_SGLD(GAUSS, 1.0, 0.1, 2, inner_init="z"), "inner_init must be 'x' or 'y'"),
    (lambda: RTK_MALA(MIX, 0, 3), "segments must be an integer >= 1"),
    (lambda: RTK_ULD(MIX, 3, 0), "inner_steps must be an integer >= 1"),
    (lambda: RTK_MALA(MIX, inner_init="x"), "inner_init must be 'mean' or 'next'"),
    (lambda: RTK_MALA(MIX, energy="trapezoid"), "energy must be 'exact' or 'simpson'"),
    (lambda: DDPM(MIX, 0), "n_steps must be an integer >= 1"),
    (lambda: DDPM(MIX, -5), "n_steps must be an integer >= 1"),
    (lambda: DDPM(MIX, 10).sample(0), "n must be an integer >= 1"),
    (lambda: RTK_ULD(MIX, 2, 2).sample(-1), "n must be an integer >= 1"),
], ids=["sps-sgld-S0", "sps-mala-S-2", "sps-mala-S1.5", "sps-init", "rtk-K0", "rtk-S0",
        "rtk-init", "rtk-energy", "ddpm-0", "ddpm-neg", "ddpm-n0", "rtk-n-neg"])
def test_bad_counts_and_options(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


@pytest.mark.parametrize("make", [
    lambda t: DDPM(t, 10), lambda t: RTK_MALA(t), lambda t: RTK_ULD(t),
], ids=["ddpm", "rtk-mala", "rtk-uld"])
@pytest.mark.parametrize("target", [LOGREG, Target.from_functions(2, logp=lambda x: -x.sum(-1))],
                         ids=["logistic", "user"])
def test_diffusion_samplers_need_a_diffusion_target(make, target):
    with pytest.raises(TypeError, match="DiffusionTarget"):
        make(target)


@pytest.mark.parametrize("make", [
    lambda t: ULA(t, 0.1), lambda t: MALA(t, 0.1), lambda t: ULD(t, 0.1),
    lambda t: SPS_SGLD(t, 1.0, 0.1, 2), lambda t: SPS_MALA(t, 1.0, 0.1, 2),
], ids=["ula", "mala", "uld", "sps-sgld", "sps-mala"])
def test_langevin_samplers_need_a_target(make):
    with pytest.raises(TypeError, match="Target.from_functions"):
        make(lambda x: -x)


def _bad_grad_wrong_shape(x):
    return -x[:, :1]


def _bad_logp_wrong_shape(x):
    return -0.5 * (x * x).sum(-1, keepdim=True)


def _bad_grad_nan(x):
    g = -x.clone()
    g[1, 0] = math.nan
    return g


def _good_logp(x):
    return -0.5 * (x * x).sum(-1)


def _good_grad(x):
    return -x


_LANGEVIN_ON = {
    "ula": lambda t: ULA(t, 0.1, generator=0),
    "mala": lambda t: MALA(t, 0.1, generator=0),
    "uld": lambda t: ULD(t, 0.1, generator=0),
    "sps-sgld": lambda t: SPS_SGLD(t, 1.0, 0.1, 2, generator=0),
    "sps-mala": lambda t: SPS_MALA(t, 1.0, 0.1, 2, generator=0),
}


@pytest.mark.parametrize("logp,grad,match", [
    (_good_logp, _bad_grad_wrong_shape,
     r"_bad_grad_wrong_shape' returned grad_logp of shape \(6, 1\), expected \(6, 2\)"),
    (_bad_logp_wrong_shape, _good_grad,
     r"_bad_logp_wrong_shape' returned logp of shape \(6, 1\), expected \(6,\)"),
    (_good_logp, _bad_grad_nan,
     r"_bad_grad_nan' returned a non-finite grad_logp \(NaN or inf\) for 1 of 6 chains"),
], ids=["grad-shape", "logp-shape", "grad-nan"])
@pytest.mark.parametrize("kind", list(_LANGEVIN_ON))
def test_bad_target_function_is_named(kind, logp, grad, match):
    """A user function returning the wrong shape or a NaN gradient (where logp is finite) is a
    ValueError naming the function and the problem, never a silent wrong sample."""
    target = Target.from_functions(2, logp=logp, grad_logp=grad)
    if kind in ("ula", "uld", "sps-sgld") and logp is _bad_logp_wrong_shape:
        # Gradient-only samplers never evaluate the log-density: nothing to complain about.
        assert torch.isfinite(_LANGEVIN_ON[kind](target).run(_x0(), 3).samples).all()
        return
    with pytest.raises(ValueError, match=match):
        _LANGEVIN_ON[kind](target).run(_x0(), 3)


def _nan_score(x, t):
    s = MIX.score(x, t)
    s[0, 1] = math.nan
    return s


def _short_score(x, t):
    return MIX.score(x, t)[:, :1]


@pytest.mark.parametrize("score,match", [
    (_nan_score, "_nan_score' returned a non-finite score"),
    (_short_score, r"_short_score' returned score of shape \(8, 1\), expected \(8, 2\)"),
], ids=["nan", "shape"])
@pytest.mark.parametrize("make", [
    lambda t: DDPM(t, 5, generator=0), lambda t: RTK_ULD(t, 2, 2, generator=0),
    lambda t: RTK_MALA(t, 2, 2, energy="simpson", generator=0),
], ids=["ddpm", "rtk-uld", "rtk-mala-simpson"])
def test_bad_score_function_is_named(make, score, match):
    # logp_t given too (unused by these samplers), so that RTK-ULD accepts the target.
    target = DiffusionTarget.from_functions(2, logp_t=MIX.logp_t, score=score)
    with pytest.raises(ValueError, match=match):
        make(target).sample(8)


def _half_normal(bad: float):
    """N(0, 1) restricted to x > 0, with logp = `bad` (NaN or -inf) and a NaN gradient outside."""

    def logp_and_grad(x):
        inside = x[:, 0] > 0
        logp = torch.where(inside, -0.5 * x[:, 0] ** 2, torch.full_like(x[:, 0], bad))
        grad = torch.where(inside[:, None], -x, torch.full_like(x, math.nan))
        return logp, grad

    return Target.from_functions(1, logp_and_grad=logp_and_grad)


@pytest.mark.parametrize("bad", [math.nan, -math.inf], ids=["nan", "-inf"])
def test_mala_rejects_proposals_with_non_finite_logp(bad, one_thread):
    """A proposal where logp is NaN (or -inf) is rejected, without error and without its
    (NaN) gradient reaching the state: MALA on the half-normal |N(0, 1)| written this way is
    exact. 20k chains from x = 1, h = 0.5, 300 steps (acceptance ~0.6): every state stays in
    x > 0, and the mean sqrt(2/pi) and variance 1 - 2/pi are within 4.5 standard errors (the
    variance's from the half-normal's fourth central moment 3 - 2m^2 - 3m^4, m = sqrt(2/pi))."""
    chains = 20_000
    trace = MALA(_half_normal(bad), 0.5, generator=13).run(torch.ones(chains, 1, dtype=F64), 300)
    x = trace.state.x[:, 0]
    assert bool((trace.samples > 0).all())
    assert bool(torch.isfinite(trace.state.grad).all() and torch.isfinite(trace.state.logp).all())
    m = math.sqrt(2 / math.pi)
    var = 1 - m**2
    mu4 = 3 - 2 * m**2 - 3 * m**4
    assert abs(x.mean().item() - m) < N_SE * math.sqrt(var / chains)
    assert abs(x.var().item() - var) < N_SE * math.sqrt((mu4 - var**2) / chains)
    assert 0.3 < trace.stats["acceptance"] < 0.9


@pytest.mark.parametrize("make", [
    lambda t: MALA(t, 0.3, generator=0),
    lambda t: SPS_MALA(t, 1.0, 0.3, 3, inner_init="x", generator=0),
], ids=["mala", "sps-mala-from-x"])
def test_all_proposals_non_finite_means_the_chain_stays_put(make):
    """logp finite only at the start: every proposal is rejected, the chain stays exactly where
    it is, acceptance is 0, and the calls are still counted. (SPS-MALA with its default inner
    chain from y: see the regression tests at the end.)"""
    x0 = _x0()

    def logp(x):
        at_start = (x == x0).all(-1)
        return torch.where(at_start, torch.zeros_like(x[:, 0]), torch.full_like(x[:, 0], math.nan))

    target = Target.from_functions(2, logp=logp, grad_logp=lambda x: torch.zeros_like(x))
    trace = make(target).run(x0, 5)
    assert torch.equal(trace.samples, x0.expand(5, -1, -1))
    assert trace.stats["acceptance"] == 0.0
    assert trace.state.grad_calls > 0


# ---- run(): arguments, burn-in and thinning ------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    ({"n_steps": -1}, "n_steps must be an integer >= 0"),
    ({"n_steps": 2.5}, "n_steps must be an integer >= 0"),
    ({"n_steps": 3, "thin": 0}, "thin must be an integer >= 1"),
    ({"n_steps": 3, "thin": 1.5}, "thin must be an integer >= 1"),
    ({"n_steps": 3, "burn_in": -1}, "burn_in must be an integer >= 0"),
])
def test_run_arguments_are_checked(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        MALA(GAUSS, 0.5, generator=0).run(_x0(), **kwargs)


@pytest.mark.parametrize("n_steps,burn_in,thin", [
    (10, 0, 1), (10, 3, 1), (10, 3, 2), (10, 0, 3), (10, 9, 1), (10, 10, 1), (10, 12, 2),
    (7, 2, 5), (7, 2, 6), (0, 0, 1),
])
def test_burn_in_and_thin_keep_the_documented_states(n_steps, burn_in, thin):
    """run() keeps every thin-th state after burn_in steps: floor((n - burn_in) / thin) rows
    (none if burn_in >= n), namely the states after steps burn_in + thin, burn_in + 2 thin, ...;
    the callback sees every step's state; the final state is returned whatever is kept."""
    seen = []
    x0 = _x0()
    trace = MALA(GAUSS, 0.5, generator=0).run(
        x0, n_steps, burn_in=burn_in, thin=thin, callback=lambda s: seen.append(s.x.clone()))
    rows = max(0, (n_steps - burn_in) // thin)
    assert isinstance(trace, Trace)
    assert trace.samples.shape == (rows, 6, 2)
    assert len(seen) == n_steps
    for k in range(rows):
        assert torch.equal(trace.samples[k], seen[burn_in + (k + 1) * thin - 1]), k
    assert torch.equal(trace.state.x, seen[-1] if seen else x0)
    assert trace.state.step == n_steps


# ============================================================================================
# Trace, state and statistics
# ============================================================================================


def test_acceptance_is_reported_for_mala_type_samplers_only():
    for kind in ("mala", "sps-mala", "sps-mala-batch"):
        trace = LANGEVIN[kind](0).run(_x0(), 20)
        acc = trace.stats["acceptance"]
        assert 0.0 <= acc <= 1.0, kind
        assert acc == pytest.approx(trace.state.accepted.double().mean().item()
                                    / trace.state.proposals)
    for kind in ("ula", "sgld", "uld", "sps-sgld"):
        assert "acceptance" not in LANGEVIN[kind](0).run(_x0(), 3).stats, kind
    for kind in ("rtk-mala", "rtk-mala-simpson"):
        acc = DIFFUSION[kind](0).sample(50).acceptance
        assert acc is not None and 0.0 <= acc <= 1.0
    for kind in ("ddpm", "rtk-uld"):
        assert DIFFUSION[kind](0).sample(5).acceptance is None
    assert "acceptance" not in MALA(GAUSS, 0.5, generator=0).run(_x0(), 0).stats


def test_cached_logp_and_gradient_travel_with_the_state():
    """MALA caches (logp, grad) at the current state between steps and ULD the gradient: after
    a run they are the target's values at the final x (a stale cache would bias MALA)."""
    trace = MALA(GAUSS, 0.8, generator=0).run(_x0(64), 30)
    logp, grad = GAUSS.logp_and_grad(trace.state.x)
    assert 0.0 < trace.stats["acceptance"] < 1.0  # some chains rejected on the last steps
    torch.testing.assert_close(trace.state.logp, logp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(trace.state.grad, grad, rtol=1e-12, atol=1e-12)
    trace = ULD(GAUSS, 0.3, generator=0).run(_x0(64), 10)
    torch.testing.assert_close(trace.state.grad, GAUSS.grad_logp(trace.state.x))


def test_logp_only_target_uses_autograd():
    """A target given by logp alone gets its gradient from autograd: MALA on it follows the
    same path as on the equivalent Gaussian (up to rounding in the acceptance ratio)."""
    mean, std = GAUSS.means[0], GAUSS.stds[0]

    def logp(x):
        return -0.5 * (((x - mean) / std) ** 2).sum(-1)

    auto = MALA(Target.from_functions(2, logp=logp), 0.5, generator=0).run(_x0(), 20)
    ref = MALA(GAUSS, 0.5, generator=0).run(_x0(), 20)
    torch.testing.assert_close(auto.samples, ref.samples, rtol=1e-12, atol=1e-12)


def test_progress_bar(capsys):
    """progress=True shows a tqdm bar (on stderr) and changes nothing else."""
    plain = MALA(GAUSS, 0.5, generator=0).run(_x0(), 5)
    shown = MALA(GAUSS, 0.5, generator=0).run(_x0(), 5, progress=True)
    assert torch.equal(plain.samples, shown.samples)
    assert "mala" in capsys.readouterr().err
    for kind in ("ddpm", "rtk-mala", "rtk-uld"):
        result = DIFFUSION[kind](0).sample(8, progress=True)
        assert torch.equal(result.samples, DIFFUSION[kind](0).sample(8).samples)
        assert kind.split("-")[0] in capsys.readouterr().err


def test_diffusion_dtype():
    for kind, make in (("ddpm", lambda: DDPM(MIX, 5, generator=0, dtype=F64)),
                       ("rtk", lambda: RTK_MALA(MIX, 2, 2, generator=0, dtype=F64))):
        assert make().sample(4).samples.dtype == F64, kind


# ============================================================================================
# Bugs found by these tests, now fixed: regression tests
# ============================================================================================


@pytest.mark.parametrize("kind", ["ula", "uld", "sps-sgld"])
def test_gradient_only_target_works_with_gradient_samplers(kind):
    grad_only = Target.from_functions(2, grad_logp=_good_grad)
    full = Target.from_functions(2, logp=_good_logp, grad_logp=_good_grad)
    make = _LANGEVIN_ON[kind]
    assert torch.equal(make(grad_only).run(_x0(), 4).samples, make(full).run(_x0(), 4).samples)


def _sqrt_logp(x):
    """Defined for x > 0 only: NaN logp and (by autograd) NaN gradient for x < 0."""
    return (torch.sqrt(x) - 0.5 * x * x).sum(-1)


@pytest.mark.parametrize("kind", ["ula", "uld", "sps-sgld"])
def test_nan_gradient_with_nan_logp_is_an_error_for_gradient_samplers(kind):
    target = Target.from_functions(1, logp=_sqrt_logp)
    with pytest.raises(ValueError, match="non-finite grad_logp"):
        _LANGEVIN_ON[kind](target).run(-torch.ones(4, 1, dtype=F64), 3)


@pytest.mark.parametrize("kind", ["mala", "sps-mala"])
def test_x0_with_nan_logp_is_an_error_for_mala_samplers(kind):
    target = Target.from_functions(1, logp=lambda x: (torch.log(x) - x).sum(-1))
    with pytest.raises(ValueError):
        _LANGEVIN_ON[kind](target).run(-torch.ones(4, 1, dtype=F64), 20)


def test_rtk_uld_accepts_a_score_only_target():
    score_only = DiffusionTarget.from_functions(2, score=MIX.score)
    result = RTK_ULD(score_only, 4, 3, generator=3).sample(50)
    assert result.nfe == 4 * (3 + 1)
    assert torch.equal(result.samples, RTK_ULD(MIX, 4, 3, generator=3).sample(50).samples)


@pytest.mark.parametrize("bad", [math.nan, -math.inf], ids=["nan", "-inf"])
def test_sps_mala_default_stays_in_the_support(bad):
    trace = SPS_MALA(_half_normal(bad), 1.0, 0.3, 3, generator=0).run(
        torch.ones(1000, 1, dtype=F64), 50)
    assert bool((trace.samples > 0).all())
