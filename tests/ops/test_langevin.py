"""ponder.ops.langevin: every op against its *_reference, on every backend that runs here.

Randomised ops are tested twice (docs/design.md, "The op contract"): exactly, with the noise passed
in, and statistically, with the kernels' own generators. Every statistical test below uses a
fixed seed, so it is deterministic: it passes or fails the same way on every run. The stated
false-alarm rate is the probability that a *correct* implementation fails for a seed drawn at
random; it is what the thresholds were chosen by.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import ponder
import pytest
import scipy.linalg
import scipy.stats
import torch
from ponder import _backend
from ponder.ops import langevin as L

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# chains x dim: a single element, odd sizes, a row longer than one 1024-wide Triton block, and
# empty tensors of both kinds.
SHAPES = [(1, 1), (7, 97), (3, 1025), (0, 5), (5, 0)]
LAYOUTS = ["strided", "transposed"]


def _triton_interpreted_bf16(backend: str, dtype: torch.dtype) -> bool:
    return backend == "triton" and dtype == torch.bfloat16 and _backend.triton_interpreted()


def _relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` in a non-contiguous layout over the last two dimensions."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "strided":  # every other element of a row twice as long: not dense
        buf = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        buf[..., ::2] = t
        out = buf[..., ::2]
    elif layout == "transposed":  # dense, but column-major
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    else:  # pragma: no cover
        raise AssertionError(layout)
    assert torch.equal(out, t)
    if t.numel() > 1 and t.shape[-1] > 1 and t.shape[-2] > 1:
        assert not out.is_contiguous()
    return out


def assert_matches_reference(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Per-dtype tolerance against a reference computed from the same low-precision inputs.

    Kernels and reference both compute in float32 (float64 for float64) and round once; they may
    differ by float32 rounding (an FMA, another order of the terms). float32: ~8 ulp, float64:
    ~1e-12. float16/bfloat16: the two float32 results round to the same or an adjacent value, so
    allow 2 ulp of the output dtype (rtol ~2e-3 for fp16, ~1.6e-2 for bf16) plus a small absolute
    slack for results near 0, where a float32 rounding of O(1) terms exceeds a half-precision ulp.
    """
    assert out.dtype == ref.dtype
    assert out.shape == ref.shape
    if ref.dtype in (torch.float16, torch.bfloat16):
        mag = ref.abs()
        ulp = (torch.nextafter(mag, torch.full_like(mag, math.inf)) - mag).double()
        diff = (out.double() - ref.double()).abs()
        bound = 2 * ulp + 1e-5
        assert bool((diff <= bound).all()), (
            f"max |out - ref| = {diff.max().item():.3g} exceeds 2 ulp of {ref.dtype}"
        )
    else:
        tol = 1e-6 if ref.dtype == torch.float32 else 1e-12
        torch.testing.assert_close(out, ref, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------
# The elementwise ops, described once
# --------------------------------------------------------------------------------------------

ELEMENTWISE = {
    # name: (op, reference, tensor arguments, scalar arguments, noise streams)
    "ula_step": (L.ula_step, L.ula_step_reference, ("x", "grad_logp"),
                 {"step_size": 0.3, "temperature": 0.7}, 1),
    "mala_propose": (L.mala_propose, L.mala_propose_reference, ("x", "grad_logp"),
                     {"step_size": 0.3}, 1),
    "proximal_step": (L.proximal_step, L.proximal_step_reference, ("z", "y", "grad_logp"),
                      {"step_size": 0.1, "eta": 0.4}, 1),
    "uld_step": (L.uld_step, L.uld_step_reference, ("x", "v", "grad_logp"),
                 {"step_size": 0.4, "friction": 1.3}, 2),
}
ALL_OPS = [*ELEMENTWISE, "mala_accept"]


def _noise_shape(name: str, shape) -> tuple[int, ...]:
    return (2, *shape) if ELEMENTWISE[name][4] == 2 else tuple(shape)


def elementwise_inputs(name, shape, dtype, seed=0, layout="contiguous"):
    """``(tensors, scalars, noise)`` for one elementwise op."""
    _, _, names, scalars, _ = ELEMENTWISE[name]
    gen = torch.Generator().manual_seed(seed)

    def normal(s):
        return _relayout(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype), layout)

    tensors = {arg: normal(shape) for arg in names}
    return tensors, dict(scalars), normal(_noise_shape(name, shape))


def as_tuple(result) -> tuple[torch.Tensor, ...]:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def call_elementwise(name, tensors, scalars, backend, **random):
    return as_tuple(ELEMENTWISE[name][0](**tensors, **scalars, backend=backend, **random))


def reference_elementwise(name, tensors, scalars, noise):
    return as_tuple(ELEMENTWISE[name][1](**tensors, **scalars, noise=noise))


# --------------------------------------------------------------------------------------------
# mala_accept inputs
# --------------------------------------------------------------------------------------------

MALA_H = 0.1


def mala_inputs(shape, dtype, seed=0, logp_dtype=torch.float64, layout="contiguous"):
    """Random states, gradients and log-densities for mala_accept, with log alpha ~ N(0, 1.5^2).

    The states and gradients are independent normals, so the proposal part of log alpha is
    O(sqrt(dim)) per chain (a backend that got it wrong would disagree on many chains); logp_prop
    is then shifted so that log alpha itself is spread around 0 and about half the chains move.
    Returns ``(args, uniforms)`` with ``args = [x, logp, grad, x_prop, logp_prop, grad_prop]``.
    """
    chains, dim = shape
    gen = torch.Generator().manual_seed(seed)

    def normal(*s):
        return torch.randn(*s, generator=gen, dtype=torch.float64)

    x, g, xp, gp = (normal(chains, dim).to(dtype) for _ in range(4))
    logp = normal(chains)
    ratio = L.mala_log_alpha_reference(x, logp, g, xp, logp, gp, MALA_H)  # logp' = logp: ratio
    logp_prop = logp - ratio + 1.5 * normal(chains)
    uniforms = 1.0 - torch.rand(chains, generator=gen, dtype=torch.float64)  # (0, 1]
    x, g, xp, gp = (_relayout(t, layout) for t in (x, g, xp, gp))
    return [x, logp.to(logp_dtype), g, xp, logp_prop.to(logp_dtype), gp], uniforms


def _decision_margin(args) -> torch.Tensor:
    """How far from log u a chain's log alpha must be for every backend to agree on it.

    Backends compute each coordinate's proposal term in float32 (float64 for float64 inputs)
    and sum in double, in another order than the reference: the error is a few float32 ulp of
    each term, < 1e-6 * sum_j |term_j|. The brief's 1e-6 is the floor.
    """
    x, _, g, xp, _, gp = (t.double() for t in args)
    terms = 0.25 * (g + gp) * (2.0 * (xp - x) + MALA_H * (gp - g))
    return 1e-6 * (1.0 + terms.abs().sum(-1))


def check_mala_accept(out, args, uniforms):
    """``out`` agrees with mala_accept_reference, up to decisions within rounding of the
    threshold, and selects exactly the rows of its own decisions."""
    x, logp, g, xp, logp_prop, gp = args
    x_new, logp_new, g_new, accepted = out
    ref = L.mala_accept_reference(*args, MALA_H, uniforms=uniforms)
    for got, want in zip(out, ref, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
    assert accepted.dtype == torch.bool
    log_alpha = L.mala_log_alpha_reference(*args, MALA_H)
    near = (torch.log(uniforms) - log_alpha).abs() < _decision_margin(args)
    differ = accepted != ref[3]
    assert not bool((differ & ~near).any()), (
        f"{int((differ & ~near).sum())} chains decided differently from the reference "
        "away from the threshold"
    )
    # The selected rows are copies: bit-exact.
    row = accepted.unsqueeze(-1)
    assert torch.equal(x_new, torch.where(row, xp, x))
    assert torch.equal(g_new, torch.where(row, gp, g))
    assert torch.equal(logp_new, torch.where(accepted, logp_prop, logp))


# --------------------------------------------------------------------------------------------
# Parity on the explicit-noise path
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_matches_reference(name, dtype, shape, cpu_backend):
    tensors, scalars, noise = elementwise_inputs(name, shape, dtype)
    if _triton_interpreted_bf16(cpu_backend, dtype):
        with pytest.raises(TypeError, match="bfloat16"):
            call_elementwise(name, tensors, scalars, cpu_backend, noise=noise)
        return
    out = call_elementwise(name, tensors, scalars, cpu_backend, noise=noise)
    ref = reference_elementwise(name, tensors, scalars, noise)
    assert len(out) == len(ref)
    for got, want in zip(out, ref, strict=True):
        assert got.is_contiguous()
        assert_matches_reference(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_non_contiguous(name, layout, dtype, cpu_backend):
    """Non-contiguous inputs (and noise) give the values of their contiguous copies."""
    tensors, scalars, noise = elementwise_inputs(name, (7, 97), dtype, layout=layout)
    out = call_elementwise(name, tensors, scalars, cpu_backend, noise=noise)
    ref = reference_elementwise(
        name, {k: t.contiguous() for k, t in tensors.items()}, scalars, noise.contiguous()
    )
    for got, want in zip(out, ref, strict=True):
        assert_matches_reference(got, want)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_output_is_contiguous(name, layout, cpu_backend):
    """The docstrings promise a contiguous result, and the registered fakes (what torch.compile
    plans with) return contiguous tensors: the real op must agree."""
    tensors, scalars, noise = elementwise_inputs(name, (7, 97), torch.float32, layout=layout)
    for out in call_elementwise(name, tensors, scalars, cpu_backend, noise=noise):
        assert out.is_contiguous(), f"strides {out.stride()} for shape {tuple(out.shape)}"


@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_any_shape(name, cpu_backend):
    """The elementwise steps accept any shape, not only [C, d]."""
    for shape in [(11,), (2, 3, 5)]:
        tensors, scalars, noise = elementwise_inputs(name, shape, torch.float64)
        out = call_elementwise(name, tensors, scalars, cpu_backend, noise=noise)
        ref = reference_elementwise(name, tensors, scalars, noise)
        for got, want in zip(out, ref, strict=True):
            assert_matches_reference(got, want)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_mala_accept_matches_reference(dtype, shape, cpu_backend):
    args, uniforms = mala_inputs(shape, dtype)
    if _triton_interpreted_bf16(cpu_backend, dtype):
        with pytest.raises(TypeError, match="bfloat16"):
            L.mala_accept(*args, MALA_H, uniforms=uniforms, backend=cpu_backend)
        return
    out = L.mala_accept(*args, MALA_H, uniforms=uniforms, backend=cpu_backend)
    check_mala_accept(out, args, uniforms)


@pytest.mark.parametrize("shape", [(1, 1), (7, 97), (3, 1025)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_mala_accept_log_alpha_is_accurate(dtype, shape, cpu_backend):
    """Bracket every chain's threshold: with u = exp(log_alpha_ref -+ delta), delta just above
    the rounding margin, every chain must move, then none. This pins each backend's log alpha
    to within ~1e-6 relative, far more sharply than random uniforms can."""
    if _triton_interpreted_bf16(cpu_backend, dtype):
        pytest.skip("no bfloat16 in the Triton interpreter (tested above)")
    args, _ = mala_inputs(shape, dtype)
    log_alpha = L.mala_log_alpha_reference(*args, MALA_H)
    args[4] = args[4] - log_alpha.clamp_min(0) - 0.5  # make every log alpha <= -0.5
    log_alpha = L.mala_log_alpha_reference(*args, MALA_H)
    delta = 2 * _decision_margin(args)
    assert bool((log_alpha + delta < 0).all())
    moved = L.mala_accept(*args, MALA_H, uniforms=torch.exp(log_alpha - delta),
                          backend=cpu_backend)[3]
    stayed = L.mala_accept(*args, MALA_H, uniforms=torch.exp(log_alpha + delta),
                           backend=cpu_backend)[3]
    assert bool(moved.all()) and not bool(stayed.any())


def test_mala_accept_inputs_are_discriminating():
    """mala_inputs makes a test that can fail: about half the chains move, and dropping the
    proposal part of log alpha would flip many decisions."""
    args, uniforms = mala_inputs((4000, 33), torch.float32)
    ref = L.mala_accept_reference(*args, MALA_H, uniforms=uniforms)[3]
    assert 0.3 < ref.double().mean().item() < 0.7
    without_ratio = torch.log(uniforms) < (args[4].double() - args[1].double())
    assert (without_ratio != ref).double().mean().item() > 0.2


@pytest.mark.parametrize("layout", LAYOUTS)
def test_mala_accept_non_contiguous(layout, cpu_backend):
    args, uniforms = mala_inputs((7, 97), torch.float32, layout=layout)
    strided_u = torch.zeros(14, dtype=torch.float64)
    strided_u[::2] = uniforms
    out = L.mala_accept(*args, MALA_H, uniforms=strided_u[::2], backend=cpu_backend)
    for t in (out[0], out[2]):
        assert t.is_contiguous()
    check_mala_accept(out, [t.contiguous() for t in args], uniforms)


def test_mala_accept_logp_float32_preserved(cpu_backend):
    args, uniforms = mala_inputs((64, 9), torch.float32, logp_dtype=torch.float32)
    out = L.mala_accept(*args, MALA_H, uniforms=uniforms, backend=cpu_backend)
    assert out[1].dtype == torch.float32
    check_mala_accept(out, args, uniforms)


def test_mala_accept_non_finite(cpu_backend):
    """A NaN log alpha (NaN log-density or gradient at the proposal) is rejected; -inf at the
    proposal is rejected; -inf at the current state (an impossible state) always moves."""
    args, uniforms = mala_inputs((6, 4), torch.float64)
    x, logp, g, xp, logp_prop, gp = args
    uniforms = torch.full((6,), 0.5, dtype=torch.float64)
    logp_prop[0] = math.nan
    gp[1, 2] = math.nan
    logp_prop[2] = -math.inf
    logp[3] = -math.inf
    logp_prop[4] = logp[4] + 100.0  # certainly accepted
    logp_prop[5] = logp[5] - 100.0  # certainly rejected
    # chains 4 and 5 must not depend on the proposal ratio: make it 0
    xp[4:] = x[4:]
    g[4:] = 0.0
    gp[4:] = 0.0
    out = L.mala_accept(*args, MALA_H, uniforms=uniforms, backend=cpu_backend)
    assert out[3].tolist() == [False, False, False, True, True, False]
    assert torch.equal(out[3], L.mala_accept_reference(*args, MALA_H, uniforms=uniforms)[3])
    assert out[1][0].item() == logp[0].item()  # rejected: keeps the current logp
    assert out[1][3].item() == logp_prop[3].item()


def test_mala_accept_uniform_one_is_allowed(cpu_backend):
    """u = 1 is in (0, 1]: log u = 0, so a chain with log alpha exactly 0 stays (strict <)."""
    x = torch.zeros(2, 3)
    logp = torch.tensor([0.0, 0.0], dtype=torch.float64)
    logp_prop = torch.tensor([0.0, 1e-3], dtype=torch.float64)
    out = L.mala_accept(x, logp, x, x.clone(), logp_prop, x.clone(), MALA_H,
                        uniforms=torch.ones(2, dtype=torch.float64), backend=cpu_backend)
    assert out[3].tolist() == [False, True]


@pytest.mark.parametrize("bad", [0.0, -0.25, 1.5, math.nan])
def test_mala_accept_uniforms_outside_unit_interval(bad, cpu_backend):
    args, uniforms = mala_inputs((5, 3), torch.float32)
    uniforms[2] = bad
    with pytest.raises(ValueError, match=r"uniforms must lie in \(0, 1\]"):
        L.mala_accept(*args, MALA_H, uniforms=uniforms, backend=cpu_backend)


# --------------------------------------------------------------------------------------------
# The internal generators: determinism
# --------------------------------------------------------------------------------------------


def _random_call(name, backend, shape=(33, 65), dtype=torch.float32):
    """A function ``random -> outputs`` calling op ``name`` with the kernel's own generator."""
    if name == "mala_accept":
        args, _ = mala_inputs(shape, dtype)
        return lambda **random: L.mala_accept(*args, MALA_H, backend=backend, **random)
    tensors, scalars, _ = elementwise_inputs(name, shape, dtype)
    return lambda **random: call_elementwise(name, tensors, scalars, backend, **random)


def _same(a, b) -> bool:
    return all(torch.equal(s, t) for s, t in zip(a, b, strict=True))


@pytest.mark.parametrize("name", ALL_OPS)
def test_int_seed_reproduces(name, cpu_backend):
    f = _random_call(name, cpu_backend)
    a, b, c = f(generator=1234), f(generator=1234), f(generator=1235)
    assert _same(a, b)
    assert not _same(a, c)


@pytest.mark.parametrize("name", ALL_OPS)
def test_torch_generator_reproduces(name, cpu_backend):
    f = _random_call(name, cpu_backend)
    gen = torch.Generator().manual_seed(7)
    a1, a2 = f(generator=gen), f(generator=gen)
    gen.manual_seed(7)
    b1, b2 = f(generator=gen), f(generator=gen)
    assert _same(a1, b1) and _same(a2, b2)
    assert not _same(a1, a2), "consecutive calls on one generator must differ"


@pytest.mark.parametrize("name", ALL_OPS)
def test_default_generator_follows_manual_seed(name, cpu_backend):
    f = _random_call(name, cpu_backend)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(99)
        a = f()
        torch.manual_seed(99)
        b = f()
        c = f()
    assert _same(a, b)
    assert not _same(b, c)


def test_numpy_int_seed_is_an_int_seed():
    f = _random_call("ula_step", "cpu")
    assert _same(f(generator=np.int64(5)), f(generator=5))


@pytest.mark.parametrize("name", ALL_OPS)
def test_noise_and_generator_together_is_an_error(name, cpu_backend):
    if name == "mala_accept":
        args, uniforms = mala_inputs((4, 3), torch.float32)
        with pytest.raises(ValueError, match="uniforms or generator, not both"):
            L.mala_accept(*args, MALA_H, uniforms=uniforms, generator=1, backend=cpu_backend)
        return
    tensors, scalars, noise = elementwise_inputs(name, (4, 3), torch.float32)
    with pytest.raises(ValueError, match="noise or generator, not both"):
        call_elementwise(name, tensors, scalars, cpu_backend, noise=noise, generator=1)


@pytest.mark.parametrize("name", ALL_OPS)
def test_cpu_result_independent_of_thread_count(name, restore_threads):
    """Above the kernels' parallel threshold (2**15 elements) the work is split among threads;
    the numbers drawn must not depend on how. 257 x 256 is not a multiple of the chunk size."""
    f = _random_call(name, "cpu", shape=(257, 256))
    results = []
    for threads in (1, 2, 3):
        torch.set_num_threads(threads)
        results.append(f(generator=2024))
    assert _same(results[0], results[1]) and _same(results[0], results[2])


# --------------------------------------------------------------------------------------------
# The internal generators: statistics, per backend
# --------------------------------------------------------------------------------------------

N_STAT = 200_000
# KS threshold: a correct generator fails with probability 1e-4 for a random seed; with the
# fixed seeds below each test is deterministic.
KS_P_MIN = 1e-4
# Moment tests use 5 standard errors: two-sided false-alarm rate 5.7e-7 per quantity.
N_SE = 5.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_normals_are_standard_normal(dtype, cpu_backend):
    """ula_step at x = 0, grad = 0, h = 0.5, T = 1 returns sqrt(2 h T) xi = xi exactly."""
    zeros = torch.zeros(N_STAT, dtype=dtype)
    xi = L.ula_step(zeros, zeros, 0.5, generator=31337, backend=cpu_backend).double()
    assert bool(torch.isfinite(xi).all())
    assert scipy.stats.kstest(xi.numpy(), "norm").pvalue > KS_P_MIN
    # KS is weak in the tails: check them (P(|xi| > 3) = 0.0027; 5 binomial standard errors).
    p3 = 2 * scipy.stats.norm.sf(3.0)
    tail = (xi.abs() > 3).double().mean().item()
    assert abs(tail - p3) < N_SE * math.sqrt(p3 * (1 - p3) / N_STAT)
    # Not a repeated block (KS cannot see that): nearly all values distinct, and neighbours
    # uncorrelated (lag-1 correlation ~ N(0, 1/n)).
    assert torch.unique(xi).numel() > 0.99 * N_STAT
    lag1 = torch.corrcoef(torch.stack([xi[:-1], xi[1:]]))[0, 1].item()
    assert abs(lag1) < N_SE / math.sqrt(N_STAT)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_uld_noise_covariance(dtype, cpu_backend):
    """From x = v = grad = 0 one step gives the noise alone: (v', x') must have covariance
    [[sv^2, sxv sv], [sxv sv, sxv^2 + sx^2]] (uld_coefficients). A wrong correlation, or the two
    streams being the same numbers, moves Cov(x', v') far outside its standard error."""
    h, gamma = 1.0, 1.0
    _, _, _, sv, sxv, sx = L.uld_coefficients(h, gamma)
    zeros = torch.zeros(N_STAT, dtype=dtype)
    x1, v1 = (t.double() for t in L.uld_step(zeros, zeros, zeros, h, gamma, generator=4242,
                                            backend=cpu_backend))
    var_v, cov, var_x = sv**2, sxv * sv, sxv**2 + sx**2
    n = N_STAT
    # Standard errors of Gaussian sample moments with known zero mean.
    assert abs((v1 * v1).mean().item() - var_v) < N_SE * var_v * math.sqrt(2 / n)
    assert abs((x1 * x1).mean().item() - var_x) < N_SE * var_x * math.sqrt(2 / n)
    assert abs((x1 * v1).mean().item() - cov) < N_SE * math.sqrt((var_x * var_v + cov**2) / n)
    # The same streams for n_v and n_x would give Cov = (sxv + sx) sv: far from cov.
    assert (sxv + sx) * sv - cov > 10 * N_SE * math.sqrt((var_x * var_v + cov**2) / n)
    # Marginals are Gaussian.
    assert scipy.stats.kstest((v1 / sv).numpy(), "norm").pvalue > KS_P_MIN
    assert scipy.stats.kstest((x1 / math.sqrt(var_x)).numpy(), "norm").pvalue > KS_P_MIN


@pytest.mark.parametrize("p", [0.01, 0.3, 0.9])
def test_mala_accept_internal_uniforms(p, cpu_backend):
    """With log alpha = log p on every chain (x' = x, zero gradients, logp' = logp + log p) the
    accepted fraction is Binomial(n, p) / n: within 5 standard errors (false alarm 5.7e-7).
    The Triton interpreter runs one program per chain at ~5 ms each: fewer chains there."""
    chains = 1_000 if cpu_backend == "triton" and _backend.triton_interpreted() else 20_000
    x = torch.zeros(chains, 1)
    logp = torch.randn(chains, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = L.mala_accept(x, logp, x, x.clone(), logp + math.log(p), x.clone(), MALA_H,
                        generator=777, backend=cpu_backend)
    frac = out[3].double().mean().item()
    assert abs(frac - p) < N_SE * math.sqrt(p * (1 - p) / chains)


def test_mala_same_int_seed_for_propose_and_accept(cpu_backend):
    """A natural way to seed a MALA step is one int seed for both calls. Then the Metropolis
    uniform of a chain must still be independent of that chain's proposal noise, or the chain
    is biased (on the cpu backend a run on N(0, I_4) with h = 1.5 and seed k for both calls of
    step k ends with variance 0.15 instead of 1). Statistic: the correlation between "accepted
    at log alpha = log 1/2" and the chain's |xi|^2, ~N(0, 1/chains) under independence; 5
    standard errors (false alarm 5.7e-7)."""
    interpreted = cpu_backend == "triton" and _backend.triton_interpreted()
    chains, dim, h, seed = (1_000 if interpreted else 20_000), 4, 0.5, 2024
    x = torch.zeros(chains, dim, dtype=torch.float64)
    xi = L.mala_propose(x, x, h, generator=seed, backend=cpu_backend) / math.sqrt(2 * h)
    logp = torch.zeros(chains, dtype=torch.float64)
    # x_prop = x and zero gradients: log alpha = log(1/2) exactly, so accepted <=> u < 1/2.
    accepted = L.mala_accept(x, logp, x, x.clone(), logp + math.log(0.5), x.clone(), h,
                             generator=seed, backend=cpu_backend)[3]
    r2 = (xi * xi).sum(-1)
    corr = torch.corrcoef(torch.stack([accepted.double(), r2]))[0, 1].item()
    assert abs(corr) < N_SE / math.sqrt(chains), corr


# --------------------------------------------------------------------------------------------
# Sampler correctness (docs/samplers.md, "Correctness tests"), cpu backend
# --------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread(restore_threads):
    """Hundreds of short parallel regions are fast on an idle machine but 10-70x slower when
    another process holds a core (OpenMP threads wait on each other at every region). The result
    does not depend on the thread count (test_cpu_result_independent_of_thread_count), so the
    long sampler runs below use one thread: same numbers, a run time that does not depend on
    the machine's load."""
    torch.set_num_threads(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_ula_stationary_variance_is_exact(temperature, dtype, one_thread):
    """ULA on f = x^2 / (2 s^2) is x' = (1 - h/s^2) x + sqrt(2 h T) xi: stationary variance
    T s^2 / (1 - h / (2 s^2)) exactly. h = 0.3, s = 1: 1.176 T, 18% above the target's T s^2,
    which is 50 standard errors away, so the test tells the two apart."""
    s, h, n = 1.0, 0.3, N_STAT
    exact = temperature * s**2 / (1 - h / (2 * s**2))
    x = torch.zeros(n, dtype=dtype)
    gen = torch.Generator().manual_seed(11)
    for _ in range(60):  # contraction 0.7 per step: 0.7^120 ~ 1e-19 of the start is left
        x = L.ula_step(x, -x / s**2, h, temperature=temperature, generator=gen, backend="cpu")
    xd = x.double()
    se_var = exact * math.sqrt(2 / (n - 1))
    assert abs(xd.var().item() - exact) < N_SE * se_var
    assert abs(xd.mean().item()) < N_SE * math.sqrt(exact / n)
    assert abs(temperature * s**2 - exact) > 20 * se_var


@pytest.mark.parametrize("h,steps", [(1.0, 150), (0.1, 600)])
def test_mala_recovers_gaussian(h, steps, one_thread):
    """MALA on N(1, 2^2) from x = 0: mean and variance of 50k samples (10k chains x 5
    independent coordinates, the last state of each) within 5 standard errors (mean: 4.5%,
    variance: 3.2%; false alarm ~1e-6 for both). At h = 1 ULA would be 14% off in variance
    (4 / (1 - 1/8) = 4.57), so a missing or wrong accept step fails. The burn-in leaves
    (1 - h/4)^steps < 1e-6 of the initial offset."""
    mu, s = 1.0, 2.0
    chains, dim = 10_000, 5

    def logp_grad(x):
        z = (x - mu) / s
        return -0.5 * (z * z).sum(-1), -z / s

    gen = torch.Generator().manual_seed(5)
    x = torch.zeros(chains, dim, dtype=torch.float64)
    logp, grad = logp_grad(x)
    accepted = 0.0
    for _ in range(steps):
        xp = L.mala_propose(x, grad, h, generator=gen, backend="cpu")
        logp_p, grad_p = logp_grad(xp)
        x, logp, grad, acc = L.mala_accept(x, logp, grad, xp, logp_p, grad_p, h,
                                           generator=gen, backend="cpu")
        accepted += acc.double().mean().item()
    n = chains * dim
    assert abs(x.mean().item() - mu) < N_SE * s / math.sqrt(n)
    assert abs(x.var().item() - s**2) < N_SE * s**2 * math.sqrt(2 / (n - 1))
    assert 0.5 < accepted / steps < 1.0  # it does reject, and mostly accepts
    assert torch.allclose(logp, logp_grad(x)[0])  # logp travels with its state


@pytest.mark.parametrize("h,gamma", [
    (1e-7, 1.0), (1e-3, 2.0), (0.05, 1.0), (0.0999, 1.0), (0.1, 1.0), (0.1001, 1.0),
    (0.5, 1.3), (2.0, 1.0), (0.01, 50.0), (3.0, 10.0),
])
def test_uld_coefficients_match_the_exact_formulas(h, gamma):
    """uld_coefficients (which the ULD tests below also use) against docs/samplers.md's formulas in
    50-digit arithmetic, on both sides of its series branch (gamma h < 0.1), where the plain
    formulas would cancel catastrophically in double."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):
        hh, g = mpmath.mpf(h), mpmath.mpf(gamma)
        a = mpmath.exp(-g * hh)
        b = (1 - a) / g
        e = (hh - b) / g
        var_v = 1 - a**2
        cov = (1 - a) ** 2 / g
        var_x = (2 / g) * (hh - 2 * (1 - a) / g + (1 - a**2) / (2 * g))
        sv = mpmath.sqrt(var_v)
        sxv = cov / sv
        sx = mpmath.sqrt(var_x - sxv**2)
        exact = [float(t) for t in (a, b, e, sv, sxv, sx)]
    got = L.uld_coefficients(h, gamma)
    assert len(got) == 6
    names = ("a", "b", "e", "sv", "sxv", "sx")
    for name, value, want in zip(names, got, exact, strict=True):
        assert value == pytest.approx(want, rel=1e-12, abs=0), name


def test_ula_at_zero_temperature_is_gradient_ascent(cpu_backend):
    """T = 0: no noise at all, whichever generator."""
    tensors, scalars, _ = elementwise_inputs("ula_step", (7, 97), torch.float64)
    out = L.ula_step(**tensors, step_size=0.3, temperature=0.0, generator=5, backend=cpu_backend)
    assert_matches_reference(out, tensors["x"] + 0.3 * tensors["grad_logp"])


def _uld_linear_map(s: float, h: float, gamma: float):
    """For grad_logp = -x / s^2 one ULD step is (x, v) -> M (x, v) + noise, noise ~ N(0, Q)."""
    a, b, e, sv, sxv, sx = L.uld_coefficients(h, gamma)
    m = np.array([[1 - e / s**2, b], [-b / s**2, a]])
    q = np.array([[sxv**2 + sx**2, sxv * sv], [sxv * sv, sv**2]])
    return m, q


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_uld_stationary_covariance_is_exact(dtype, one_thread):
    """docs/samplers.md: the frozen-gradient ULD step is linear on a Gaussian target, so its exact
    stationary covariance solves Sigma = M Sigma M^T + Q. Test against that, tightly (5 standard
    errors of each sample (co)variance over 200k chains, ~1.5% of the variances), not against the
    target's identity covariance, which at h = 0.5 is ~75 standard errors away (Var x = 1.32)."""
    s, h, gamma, n = 1.0, 0.5, 1.0, N_STAT
    m, q = _uld_linear_map(s, h, gamma)
    sigma = scipy.linalg.solve_discrete_lyapunov(m, q)
    assert max(abs(np.linalg.eigvals(m))) < 0.84  # 120 steps leave < 1e-9 of the start
    x = torch.zeros(n, dtype=dtype)
    v = torch.zeros(n, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    for _ in range(120):
        x, v = L.uld_step(x, v, -x / s**2, h, gamma, generator=gen, backend="cpu")
    xv = torch.stack([x.double(), v.double()])
    emp = torch.cov(xv).numpy()
    for i in range(2):
        for j in range(2):
            se = math.sqrt((sigma[i, i] * sigma[j, j] + sigma[i, j] ** 2) / n)
            assert abs(emp[i, j] - sigma[i, j]) < N_SE * se, (i, j, emp, sigma)
    assert abs(sigma[0, 0] - s**2) > 20 * sigma[0, 0] * math.sqrt(2 / n)
    assert bool((xv.mean(1).abs() < N_SE * torch.tensor(np.sqrt(np.diag(sigma)) / math.sqrt(n)))
                .all())


def test_proximal_step_stationary_law_is_exact(one_thread):
    """On N(0, s^2) with a fixed centre y the SPS inner step is the AR(1)
    z' = rho z + (tau/eta) y + sqrt(2 tau) xi, rho = 1 - tau/eta - tau/s^2: stationary mean
    (tau/eta) y / (1 - rho) and variance 2 tau / (1 - rho^2). (The RGO's own variance,
    1 / (1/eta + 1/s^2) = 0.333, is 0.392 here: ~45 standard errors away.)"""
    s, tau, eta, n = 1.0, 0.1, 0.5, N_STAT
    rho = 1 - tau / eta - tau / s**2
    y = torch.linspace(-2.0, 2.0, n, dtype=torch.float64)
    mean = (tau / eta) * y / (1 - rho)
    var = 2 * tau / (1 - rho**2)
    z = torch.zeros(n, dtype=torch.float64)
    gen = torch.Generator().manual_seed(8)
    for _ in range(80):  # 0.7^80 ~ 4e-13
        z = L.proximal_step(z, y, -z / s**2, tau, eta, generator=gen, backend="cpu")
    resid = z - mean
    assert abs(resid.mean().item()) < N_SE * math.sqrt(var / n)
    assert abs((resid * resid).mean().item() - var) < N_SE * var * math.sqrt(2 / n)
    assert abs(var - 1 / (1 / eta + 1 / s**2)) > 20 * var * math.sqrt(2 / n)


# --------------------------------------------------------------------------------------------
# Error paths: TypeError / ValueError naming the argument
# --------------------------------------------------------------------------------------------


def _valid_kwargs(name: str) -> dict:
    """Keyword arguments of a valid call of op ``name`` (explicit noise where it has one)."""
    if name == "mala_accept":
        args, uniforms = mala_inputs((4, 3), torch.float32)
        keys = ("x", "logp", "grad_logp", "x_prop", "logp_prop", "grad_logp_prop")
        return {**dict(zip(keys, args, strict=True)), "step_size": MALA_H,
                "uniforms": uniforms, "backend": "cpu"}
    tensors, scalars, noise = elementwise_inputs(name, (4, 3), torch.float32)
    return {**tensors, **scalars, "noise": noise, "backend": "cpu"}


def _op(name: str):
    return L.mala_accept if name == "mala_accept" else ELEMENTWISE[name][0]


def _first(name: str) -> str:
    return "z" if name == "proximal_step" else "x"


def _tensor_args(name: str) -> list[str]:
    kw = _valid_kwargs(name)
    return [k for k, v in kw.items() if isinstance(v, torch.Tensor)]


def _error_cases():
    """(op, argument, bad value or a function of the valid kwargs, exception, message regex)."""
    cases = []
    for name in ALL_OPS:
        first = _first(name)
        for arg in _tensor_args(name):
            like_logp = arg in ("logp", "logp_prop", "uniforms")
            cases += [
                (name, arg, lambda kw, a=arg: kw[a].to(torch.int32), TypeError,
                 rf"{arg} must have dtype"),
                (name, arg, lambda kw, a=arg: kw[a].tolist(), TypeError,
                 rf"{arg} must be a torch.Tensor, got list"),
                (name, arg, lambda kw, a=arg: kw[a].to("meta"), ValueError,
                 rf"{arg} is on meta" if arg != first else r"but the inputs are on meta"),
            ]
            if arg != first:
                if not like_logp:  # must have x's dtype
                    cases.append((name, arg, lambda kw, a=arg: kw[a].double(), TypeError,
                                  rf"{arg} must have dtype float32, got torch.float64"))
                elif arg == "logp_prop":  # must have logp's dtype
                    cases.append((name, arg, lambda kw, a=arg: kw[a].float(), TypeError,
                                  rf"{arg} must have dtype float64, got torch.float32"))
                cases.append((name, arg, lambda kw, a=arg: kw[a][..., :-1].contiguous(),
                              ValueError, rf"{arg} must have shape"))
        cases += [
            (name, "step_size", 0.0, ValueError, r"step_size must be > 0"),
            (name, "step_size", -0.1, ValueError, r"step_size must be > 0"),
            (name, "step_size", math.nan, ValueError, r"step_size must be finite"),
            (name, "step_size", math.inf, ValueError, r"step_size must be finite"),
            (name, "step_size", True, TypeError, r"step_size must be a real number, got bool"),
            (name, "step_size", "0.1", TypeError, r"step_size must be a real number"),
            (name, "step_size", torch.tensor(0.1), TypeError, r"step_size must be a real number"),
            (name, "generator", "seed", TypeError, r"generator must be None, an int seed"),
            (name, "generator", 1.5, TypeError, r"generator must be None, an int seed"),
            (name, "generator", True, TypeError, r"generator must be None, an int seed"),
            (name, "generator", -1, ValueError, r"integer generator \(seed\) must be in"),
            (name, "generator", 2**63, ValueError, r"integer generator \(seed\) must be in"),
            (name, "backend", "gpu", ValueError, r"backend='gpu' is not a backend"),
        ]
    cases += [
        ("ula_step", "temperature", -0.5, ValueError, r"temperature must be >= 0"),
        ("ula_step", "temperature", math.nan, ValueError, r"temperature must be finite"),
        ("uld_step", "friction", 0.0, ValueError, r"friction must be > 0"),
        ("uld_step", "friction", -1.0, ValueError, r"friction must be > 0"),
        ("uld_step", "friction", math.inf, ValueError, r"friction must be finite"),
        ("proximal_step", "eta", 0.0, ValueError, r"eta must be > 0"),
        ("proximal_step", "eta", -2.0, ValueError, r"eta must be > 0"),
        ("proximal_step", "eta", False, TypeError, r"eta must be a real number"),
        # Finite but beyond where the math holds (uld_coefficients raised OverflowError and
        # ZeroDivisionError; the others silently gave inf or NaN).
        ("uld_step", "friction", 1e200, ValueError,
         r"uld_step: friction must be in \[1e-150, 1e\+150\], got 1e\+200"),
        ("uld_step", "friction", 1e-200, ValueError,
         r"uld_step: friction must be in \[1e-150, 1e\+150\], got 1e-200"),
        ("uld_step", "friction", 1e-120, ValueError,
         r"uld_step: step_size \* friction must be in \[1e-100, "),
        ("uld_step", "step_size", 1e300, ValueError,
         r"uld_step: step_size and friction are too large: they give e = "),
        ("uld_step", "step_size", 1e40, ValueError,
         r"uld_step: step_size and friction are too large: they give e = .*float32"),
        ("ula_step", "step_size", 1e39, ValueError,
         r"ula_step: step_size and temperature are too large: they give step_size = 1e\+39"),
        ("ula_step", "temperature", 1e300, ValueError,
         r"ula_step: step_size and temperature are too large: they give "
         r"sqrt\(2 step_size temperature\) = 7\.7\d*e\+149, beyond float32's range"),
        ("mala_propose", "step_size", 1e39, ValueError, r"mala_propose: step_size is too large"),
        ("proximal_step", "eta", 1e-300, ValueError,
         r"proximal_step: step_size and eta are too large: they give step_size / eta"),
        # uld noise is [2, *x.shape]: x-shaped noise is wrong
        ("uld_step", "noise", lambda kw: kw["noise"][0].contiguous(), ValueError,
         r"noise must have shape \(2, 4, 3\)"),
        ("mala_accept", "x", lambda kw: kw["x"][0].contiguous(), ValueError,
         r"x must be \[chains, dim\]"),
        ("mala_accept", "x", lambda kw: kw["x"][None].contiguous(), ValueError,
         r"x must be \[chains, dim\]"),
        ("mala_accept", "logp", lambda kw: kw["logp"][:, None].contiguous(), ValueError,
         r"logp must have shape \(4,\)"),
        ("mala_accept", "logp", lambda kw: torch.zeros(5, dtype=torch.float64), ValueError,
         r"logp must have shape \(4,\)"),
    ]
    return cases


ERROR_CASES = _error_cases()


@pytest.mark.parametrize(
    "name,arg,bad,exc,match", ERROR_CASES,
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(ERROR_CASES)],
)
def test_bad_argument_is_named(name, arg, bad, exc, match):
    kwargs = _valid_kwargs(name)
    _op(name)(**kwargs)  # the unmodified call is valid
    kwargs[arg] = bad(kwargs) if callable(bad) else bad
    if arg == "generator":  # a generator replaces the explicit noise
        kwargs.pop("uniforms" if name == "mala_accept" else "noise")
    with pytest.raises(exc, match=match):
        _op(name)(**kwargs)


@pytest.mark.parametrize("name", ALL_OPS)
def test_non_tensor_first_argument(name):
    kwargs = _valid_kwargs(name)
    first = _first(name)
    kwargs[first] = np.asarray(kwargs[first])
    with pytest.raises(TypeError, match=rf"{first} must be a torch.Tensor, got ndarray"):
        _op(name)(**kwargs)


def test_native_launcher_rechecks_its_arguments():
    """The C++ side refuses what it would index with, whatever the caller did (ValueError)."""
    native = _backend.cpu_module()
    out, x = torch.empty(8), torch.zeros(8)
    # Each buffer is (address, element count); noise is absent: (0, 0).
    args = [out.data_ptr(), 8, x.data_ptr(), 8, x.data_ptr(), 8, 0, 0]
    with pytest.raises(ValueError, match="out is a null pointer"):
        native.ula_step(0, 0, *args[2:], 8, 0, 0.1, 0.1, 0, 1)
    with pytest.raises(ValueError, match="unknown dtype code 9"):
        native.ula_step(*args, 8, 9, 0.1, 0.1, 0, 1)
    with pytest.raises(ValueError, match="out has a negative size"):
        native.ula_step(*args, -1, 0, 0.1, 0.1, 0, 1)
    with pytest.raises(ValueError, match="threads must be >= 1"):
        native.ula_step(*args, 8, 0, 0.1, 0.1, 0, 0)
    native.ula_step(*args, 8, 0, 0.1, 0.0, 0, 1)  # and a valid call works: x + 0.1 * 0
    assert torch.equal(out, x)


# --------------------------------------------------------------------------------------------
# torch.library: opcheck and torch.compile
# --------------------------------------------------------------------------------------------


def _op_args(name, backend, layout="contiguous", noise=True):
    """Positional arguments of torch.ops.ponder.<name> (explicit noise, or a fixed seed)."""
    if name == "mala_accept":
        args, uniforms = mala_inputs((7, 97), torch.float32, layout=layout)
        return (*args, MALA_H, uniforms if noise else None, 17, backend)
    tensors, scalars, noise_t = elementwise_inputs(name, (7, 97), torch.float32, layout=layout)
    return (*tensors.values(), *scalars.values(), noise_t if noise else None, 17, backend)


@pytest.mark.parametrize("noise", [True, False], ids=["noise", "seed"])
@pytest.mark.parametrize("name", ALL_OPS)
def test_opcheck(name, noise, cpu_backend):
    torch.library.opcheck(getattr(torch.ops.ponder, name).default,
                          _op_args(name, cpu_backend, noise=noise))


@pytest.mark.parametrize("name", ALL_OPS)
def test_opcheck_transposed_inputs(name, cpu_backend):
    torch.library.opcheck(getattr(torch.ops.ponder, name).default,
                          _op_args(name, cpu_backend, layout="transposed"))


def _ula_then_more(x, g, noise):
    y = L.ula_step(x, g, 0.2, noise=noise, backend="cpu")
    return torch.tanh(y) * 2.0 + y.sum(-1, keepdim=True)


# Dynamo traces the public wrapper into ponder._backend, whose functools.cache'd lookups it
# warns about (UserWarning "Dynamo detected a call to a `functools.lru_cache`-wrapped
# function"). Harmless for the result (see the report); filtered here so the smoke test tests
# the numbers.
def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    x, g, noise = (torch.randn(7, 97, generator=gen) for _ in range(3))
    eager = _ula_then_more(x, g, noise)
    compiled = torch.compile(_ula_then_more, backend="aot_eager", fullgraph=False)
    torch.testing.assert_close(compiled(x, g, noise), eager, rtol=0, atol=0)
    x2 = torch.randn(7, 97, generator=gen)
    torch.testing.assert_close(compiled(x2, g, noise), _ula_then_more(x2, g, noise),
                               rtol=0, atol=0)


def test_custom_op_compiles_without_graph_break():
    """The registered op itself (not the Python wrapper) traces into one graph."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(1)
    x, g, noise = (torch.randn(7, 97, generator=gen) for _ in range(3))

    def f(x, g, noise):
        return torch.ops.ponder.ula_step(x, g, 0.2, 1.0, noise, 0, "cpu") * 3.0

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, g, noise), f(x, g, noise), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# GPU: the cuda and triton backends on a device (pytest -m gpu)
# --------------------------------------------------------------------------------------------

def _gpu_backends():
    if not torch.cuda.is_available():
        return ["cuda", "triton"]
    status = ponder.available_backends()
    return [b for b in ("cuda", "triton") if status[b].available and "cuda" in status[b].devices]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_reference(backend, name, dtype, shape):
    dev = torch.device("cuda")
    if name == "mala_accept":
        args, uniforms = mala_inputs(shape, dtype)
        out = L.mala_accept(*(t.to(dev) for t in args), MALA_H, uniforms=uniforms.to(dev),
                            backend=backend)
        check_mala_accept([t.cpu() for t in out], args, uniforms)
        return
    tensors, scalars, noise = elementwise_inputs(name, shape, dtype)
    out = call_elementwise(name, {k: t.to(dev) for k, t in tensors.items()}, scalars, backend,
                           noise=noise.to(dev))
    ref = reference_elementwise(name, tensors, scalars, noise)
    for got, want in zip(out, ref, strict=True):
        assert got.device.type == "cuda"
        assert_matches_reference(got.cpu(), want)


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_rng_is_deterministic(backend, name):
    dev = torch.device("cuda")
    if name == "mala_accept":
        args, _ = mala_inputs((513, 65), torch.float32)
        args = [t.to(dev) for t in args]

        def f(**random):
            return L.mala_accept(*args, MALA_H, backend=backend, **random)
    else:
        tensors, scalars, _ = elementwise_inputs(name, (513, 65), torch.float32)
        tensors = {k: t.to(dev) for k, t in tensors.items()}

        def f(**random):
            return call_elementwise(name, tensors, scalars, backend, **random)

    assert _same(f(generator=5), f(generator=5))
    assert not _same(f(generator=5), f(generator=6))
    gen = torch.Generator(device=dev).manual_seed(3)
    a = f(generator=gen)
    gen.manual_seed(3)
    assert _same(a, f(generator=gen))


@pytest.mark.parametrize("backend", _gpu_backends())
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_normals_are_standard_normal(backend):
    zeros = torch.zeros(N_STAT, device="cuda")
    xi = L.ula_step(zeros, zeros, 0.5, generator=31337, backend=backend).double().cpu()
    assert scipy.stats.kstest(xi.numpy(), "norm").pvalue > KS_P_MIN


def test_no_warnings_leak():
    """filterwarnings=error is on: a plain op call must not warn (e.g. a deprecation)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = torch.zeros(3, 4)
        L.ula_step(x, x, 0.1, generator=0)


def test_range_limits_keep_valid_inputs_valid():
    x = torch.zeros(4, 3, dtype=torch.float64)
    noise = torch.ones(2, 4, 3, dtype=torch.float64)
    # step_size * friction overflowing float64 is refused by name.
    with pytest.raises(ValueError, match=r"uld_step: step_size \* friction must be in .*"
                                         r"step_size=1e\+300, friction=1e\+100"):
        L.uld_step(x, x, x, 1e300, 1e100, noise=noise, backend="torch")
    # The ends of the ULD range give finite steps that match the limits of the dynamics: tiny
    # friction is a free particle (x + h v + h^2/2 g), huge friction barely moves.
    a, b, e, sv, sxv, sx = L.uld_coefficients(0.4, 1e-99)
    assert (a, b, e) == pytest.approx((1.0, 0.4, 0.08), rel=1e-12)
    assert max(sv, sxv, sx) < 1e-40
    for step_size, friction in ((0.4, 1e-99), (0.4, 1e150), (1e51, 1e-150)):
        out = L.uld_step(x, x + 1, x + 1, step_size, friction, noise=noise, backend="torch")
        assert all(bool(torch.isfinite(t).all()) for t in out)
    # float64 inputs keep float64's range: coefficients beyond float32's are still valid there.
    out = L.ula_step(x, x, 1e39, temperature=1.0, noise=noise[0], backend="torch")
    assert bool(torch.isfinite(out).all())
