"""Property-based tests of every public op (hypothesis): random shapes (empty and odd included),
dtypes, layouts (transposed, sliced with a step, offset windows, stride-0 broadcasts), values
(NaN, +-inf, 1e30, 1e-30, subnormals, signed zeros) and scalar arguments (huge, tiny, zero,
negative, NaN, ints, bools).

The property, for every backend that runs here: a call's *outcome* equals the reference's
(``backend="torch"``, the ``*_reference`` behind the same validation). Either both raise the same
class, ValueError or TypeError, or both return and the results agree: token ids, counts, booleans
and selected rows exactly (random ops get explicit noise / uniforms, so they are comparable), and
floats within a per-dtype tolerance that accounts for the rounding of every term (see
:func:`assert_values_close`). NaN where the reference is finite, or the reverse, is a failure;
so is any other exception type or a crash.

Examples are derandomised and their number fixed (``PROFILES``), so the file runs in the same way
and in bounded time everywhere; the Triton backend runs in the CPU interpreter here, so it gets
fewer examples of smaller tensors. Nothing is written to the repository: no example database,
and hypothesis' own cache goes to a temporary folder (``tests/strategies.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import ponder
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from ponder import _backend
from ponder.ops import langevin as L
from ponder.ops import prm as P
from ponder.ops import speculative as SP
from ponder.ops import think as T

from tests.strategies import (
    FLOAT_DTYPES,
    dtypes,
    float_tensors,
    relayout,
    scalars,
    sizes,
    special_values,
    uniforms_in_unit_interval,
)

# The backends compared with the reference: every one that runs on CPU tensors here.
BACKENDS = tuple(
    name for name, status in ponder.available_backends().items()
    if status.available and "cpu" in status.devices and name != "torch"
)

_COMMON = dict(
    derandomize=True,
    deadline=None,
    database=None,
    # No explain phase: it may write patch files; shrinking still reports a minimal example.
    phases=(Phase.explicit, Phase.generate, Phase.shrink),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=False,
)
settings.register_profile("ponder-ops", max_examples=40, **_COMMON)
# The Triton interpreter runs a kernel launch in tens to hundreds of milliseconds.
settings.register_profile("ponder-ops-triton", max_examples=8, **_COMMON)
PROFILES = {"native": "ponder-ops", "triton": "ponder-ops-triton"}


def run_property(
    backend: str,
    cases: Callable[[str], st.SearchStrategy[Any]],
    prop: Callable[[Any, str], None],
    examples: int | None = None,
) -> None:
    """Check ``prop(case, backend)`` on ``cases(backend)`` with the backend's profile."""
    profile = settings.get_profile(PROFILES["triton" if backend == "triton" else "native"])
    if examples is not None:
        profile = settings(profile, max_examples=examples)

    @profile
    @given(case=cases(backend))
    def holds(case):
        prop(case, backend)

    holds()


# --------------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------------


class Raised(NamedTuple):
    """A call that refused its arguments: ValueError or TypeError, and the message."""

    kind: type
    message: str


def outcome(call: Callable[[], Any]) -> Any:
    """The call's result, or :class:`Raised` for a ValueError / TypeError. Anything else
    propagates and fails the test."""
    try:
        return call()
    except ValueError as exc:
        return Raised(ValueError, str(exc))
    except TypeError as exc:
        return Raised(TypeError, str(exc))


def interpreter_refuses(backend: str, got: Any) -> bool:
    """The Triton interpreter has no bfloat16: a documented TypeError, the only refusal where
    a backend may differ from the reference."""
    return (
        backend == "triton"
        and _backend.triton_interpreted()
        and isinstance(got, Raised)
        and got.kind is TypeError
        and "no bfloat16" in got.message
    )


def assert_same_outcome(
    ref: Any, got: Any, backend: str, compare: Callable[[Any, Any], None]
) -> None:
    if interpreter_refuses(backend, got):
        return
    if isinstance(ref, Raised):
        assert isinstance(got, Raised) and got.kind is ref.kind, (
            f"the reference raised {ref.kind.__name__}({ref.message!r}); {backend} gave {got!r}"
        )
        return
    assert not isinstance(got, Raised), (
        f"the reference returned; {backend} raised {got.kind.__name__}({got.message!r})"
    )
    compare(got, ref)


def check_against_reference(
    op: Callable[..., Any], args: tuple, kwargs: dict, backend: str,
    compare: Callable[[Any, Any], None],
) -> None:
    """Run ``op`` on the reference and on ``backend`` and compare the outcomes."""
    ref = outcome(lambda: op(*args, **kwargs, backend="torch"))
    got = run_on(backend, lambda: op(*args, **kwargs, backend=backend))
    assert_same_outcome(ref, got, backend, compare)


def run_on(backend: str, call: Callable[[], Any]) -> Any:
    """:func:`outcome` of ``call`` on ``backend``. The Triton interpreter runs kernels in numpy,
    which warns (an error under pytest's filterwarnings) on the IEEE operations a GPU does
    silently, such as inf - inf = NaN: silence numpy there, and compare the values."""
    if backend == "triton" and _backend.triton_interpreted():
        with np.errstate(all="ignore"):
            return outcome(call)
    return outcome(call)


# --------------------------------------------------------------------------------------------
# Comparing floats that may be special
# --------------------------------------------------------------------------------------------


def _ordinal(t: torch.Tensor) -> torch.Tensor | None:
    """Each float's rank among the floats of its dtype (int64), so that adjacent floats differ by
    1 and the largest finite value is adjacent to inf. None for float64 (ranks overflow)."""
    bits = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}
    if t.dtype not in bits:
        return None
    width = torch.finfo(t.dtype).bits
    raw = t.contiguous().view(bits[t.dtype]).to(torch.int64)
    magnitude = raw & ((1 << (width - 1)) - 1)
    return torch.where(raw < 0, -magnitude, magnitude)


def assert_values_close(
    got: torch.Tensor,
    ref: torch.Tensor,
    *,
    acc: torch.dtype,
    mag: torch.Tensor | None = None,
    terms: float = 8.0,
    ulps: int = 4,
    exempt: torch.Tensor | None = None,
    what: str = "result",
) -> None:
    """``got`` equals ``ref`` up to the rounding of a computation in ``acc``.

    NaN exactly where the reference has NaN; infinities of the same sign, or the largest finite
    value next to an inf. Other values agree within ``ulps`` ulp of the output dtype (its final
    rounding; float16 / bfloat16 outputs round the float32 result once) or within
    ``terms * eps(acc) * mag``, where ``mag`` (float64, like ``ref``) bounds the sum of the
    magnitudes of the terms that were rounded: where terms cancel, a different order or an FMA
    changes the result by a few ulp of the terms, not of the result. Entries where ``mag`` exceeds
    ``acc``'s range (an intermediate may overflow in one order and not in another) or marked in
    ``exempt`` are not compared.
    """
    assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype}, reference {ref.dtype}"
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)}, reference {tuple(ref.shape)}"
    if ref.numel() == 0:
        return
    o, r = got.double(), ref.double()
    fin = torch.finfo(acc)
    skip = torch.zeros(ref.shape, dtype=torch.bool)
    if mag is not None:
        skip |= mag > fin.max
    if exempt is not None:
        skip |= exempt
    same = (o == r) | (o.isnan() & r.isnan())
    rank_o, rank_r = _ordinal(got), _ordinal(ref)
    if rank_o is not None:
        same |= ((rank_o - rank_r).abs() <= ulps) & ~o.isnan() & ~r.isnan()
    a = ref.abs()
    ulp = (torch.nextafter(a, torch.full_like(a, math.inf)) - a).double()
    tol = ulps * ulp + 2 * fin.smallest_normal * fin.eps
    if mag is not None:
        tol = tol + terms * fin.eps * mag
    close = same | ((o - r).abs() <= tol)
    bad = ~close & ~skip
    if bool(bad.any()):
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {ref.numel()} entries differ from the reference; "
            f"first at {where}: got {o[where].item()!r}, reference {r[where].item()!r}, "
            f"tolerance {tol[where].item():.3g}"
        )


def assert_exactly_equal(got: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert got.dtype == ref.dtype and got.shape == ref.shape, (
        f"{what}: {got.dtype} {tuple(got.shape)}, reference {ref.dtype} {tuple(ref.shape)}"
    )
    if got.is_floating_point():
        same = (got == ref) | (got.isnan() & ref.isnan())
    else:
        same = got == ref
    if not bool(same.all()):
        where = tuple(int(i) for i in (~same).nonzero()[0])
        raise AssertionError(
            f"{what}: differs from the reference at {where}: got {got[where].item()!r}, "
            f"reference {ref[where].item()!r}"
        )


def as_tuple(result: Any) -> tuple:
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


def corruption(draw) -> str | None:
    """One deliberate mistake in about one example out of nine, else None."""
    return draw(st.sampled_from(
        (None,) * 30 + ("dtype", "shape", "int_tensor", "not_tensor")
    ))


def corrupt(t: torch.Tensor, how: str | None) -> Any:
    if how == "dtype":
        return t.to(torch.float64 if t.dtype != torch.float64 else torch.float32)
    if how == "shape":
        return torch.zeros(*t.shape, 1, dtype=t.dtype)
    if how == "int_tensor":
        return torch.zeros(t.shape, dtype=torch.int32)
    if how == "not_tensor":
        return t.tolist()
    return t


# --------------------------------------------------------------------------------------------
# Langevin: ula_step, mala_propose, proximal_step, uld_step (elementwise) and mala_accept
# --------------------------------------------------------------------------------------------

ELEMENTWISE = {
    # name: (op, tensor arguments, scalar arguments and their ordinary ranges, noise streams)
    "ula_step": (L.ula_step, ("x", "grad_logp"),
                 {"step_size": (1e-3, 2.0), "temperature": (0.0, 5.0)}, 1),
    "mala_propose": (L.mala_propose, ("x", "grad_logp"), {"step_size": (1e-3, 2.0)}, 1),
    "proximal_step": (L.proximal_step, ("z", "y", "grad_logp"),
                      {"step_size": (1e-3, 1.0), "eta": (1e-2, 5.0)}, 1),
    "uld_step": (L.uld_step, ("x", "v", "grad_logp"),
                 {"step_size": (1e-3, 2.0), "friction": (1e-2, 50.0)}, 2),
}


def elementwise_cases(name: str) -> Callable[[str], st.SearchStrategy]:
    _, names, scalar_ranges, streams = ELEMENTWISE[name]

    def cases(backend: str):
        @st.composite
        def build(draw):
            ndim = draw(st.integers(0, 3))
            extra = () if backend == "triton" else (1025,)
            shape = tuple(draw(sizes(extra=extra if d == ndim - 1 else ())) for d in range(ndim))
            dtype = draw(dtypes())
            tensors = {n: draw(float_tensors(shape, dtype)) for n in names}
            noise_shape = (2, *shape) if streams == 2 else shape
            noise = draw(float_tensors(noise_shape, dtype))
            kwargs = {k: draw(scalars(*r)) for k, r in scalar_ranges.items()}
            how = corruption(draw)
            if how is not None:
                arg = draw(st.sampled_from((*names, "noise")))
                if arg == "noise":
                    noise = corrupt(noise, how)
                else:
                    tensors[arg] = corrupt(tensors[arg], how)
            return tensors, kwargs, noise

        return build()

    return cases


def elementwise_magnitudes(name: str, tensors: dict, kwargs: dict, noise: torch.Tensor):
    """Per output, sum_i |coefficient_i| |input_i| in float64: what the rounding scales with."""
    t = {k: v.double().abs() for k, v in tensors.items()}
    n = noise.double().abs()
    h = kwargs["step_size"]
    if name in ("ula_step", "mala_propose"):
        temp = kwargs.get("temperature", 1.0)
        return (t["x"] + h * t["grad_logp"] + math.sqrt(2 * h * temp) * n,)
    if name == "proximal_step":
        ratio = h / kwargs["eta"]
        return (abs(1 - ratio) * t["z"] + ratio * t["y"] + h * t["grad_logp"]
                + math.sqrt(2 * h) * n,)
    a, b, e, sv, sxv, sx = (abs(c) for c in L.uld_coefficients(h, kwargs["friction"]))
    return (
        t["x"] + b * t["v"] + e * t["grad_logp"] + sxv * n[0] + sx * n[1],
        a * t["v"] + b * t["grad_logp"] + sv * n[0],
    )


def _coefficient_rounding(backend: str, dtype: torch.dtype) -> torch.dtype:
    """Triton takes Python floats as float32 (ponder.ops.langevin._check_coefficients), so its
    coefficients carry float32 rounding even for float64 data."""
    if backend == "triton":
        return torch.float32
    return L.acc_dtype(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_steps(name, backend):
    op = ELEMENTWISE[name][0]

    def prop(case, backend):
        tensors, kwargs, noise = case

        def compare(got, ref):
            dtype = ref[0].dtype if isinstance(ref, tuple) else ref.dtype
            mags = elementwise_magnitudes(name, tensors, kwargs, noise)
            acc = _coefficient_rounding(backend, dtype)
            for i, (g, r, m) in enumerate(zip(as_tuple(got), as_tuple(ref), mags, strict=True)):
                assert g.is_contiguous(), f"output {i} is not contiguous"
                assert_values_close(g, r, acc=acc, mag=m, what=f"{name} output {i}")

        check_against_reference(op, (), {**tensors, **kwargs, "noise": noise}, backend, compare)

    run_property(backend, elementwise_cases(name), prop)


def mala_cases(backend: str):
    @st.composite
    def build(draw):
        chains, dim = draw(sizes()), draw(sizes())
        dtype = draw(dtypes())
        x, g, xp, gp = (draw(float_tensors((chains, dim), dtype)) for _ in range(4))
        logp_dtype = draw(dtypes())
        h = draw(scalars(1e-3, 2.0))
        logp = draw(float_tensors((chains,), torch.float64, specials=False))
        logp_prop = logp.clone()
        if isinstance(h, float) and 0 < h < math.inf and chains:
            # Spread log alpha around 0 so that chains go both ways (as tests/ops/test_langevin).
            ratio = L.mala_log_alpha_reference(x, logp, g, xp, logp, gp, h)
            ratio = torch.nan_to_num(ratio, nan=0.0, posinf=0.0, neginf=0.0)
            logp_prop = logp - ratio + 1.5 * torch.randn(
                chains, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))),
                dtype=torch.float64)
        for t in (logp, logp_prop):
            if chains and draw(st.booleans()):
                t[draw(st.integers(0, chains - 1))] = draw(st.sampled_from(special_values(dtype)))
        logp, logp_prop = logp.to(logp_dtype), logp_prop.to(logp_dtype)
        uniforms = draw(uniforms_in_unit_interval((chains,)))
        args = [x, logp, g, xp, logp_prop, gp]
        how = corruption(draw)
        if how is not None:
            i = draw(st.integers(0, 5))
            args[i] = corrupt(args[i], how)
        if draw(st.integers(0, 9)) == 0:
            uniforms = uniforms.float()
        return args, h, uniforms

    return build()


def _mala_decision_margin(args, h: float) -> torch.Tensor:
    """How far from log u a chain's log alpha must be for backends to agree on it: backends
    compute each coordinate's term in float32 (float64 for float64) and sum in another order
    (the margin of tests/ops/test_langevin.py, for any step size)."""
    x, logp, g, xp, logp_prop, gp = (t.double() for t in args)
    terms = 0.25 * (g + gp) * (2.0 * (xp - x) + h * (gp - g))
    return 1e-6 * (1.0 + terms.abs().sum(-1) + logp.abs() + logp_prop.abs())


@pytest.mark.parametrize("backend", BACKENDS)
def test_mala_accept(backend):
    def prop(case, backend):
        args, h, uniforms = case

        def compare(got, ref):
            x, logp, g, xp, logp_prop, gp = args
            x_new, logp_new, g_new, accepted = got
            assert accepted.dtype == torch.bool and accepted.shape == ref[3].shape
            differ = accepted != ref[3]
            if bool(differ.any()):
                log_alpha = L.mala_log_alpha_reference(*args, h)
                near = (torch.log(uniforms.double()) - log_alpha).abs() <= \
                    _mala_decision_margin(args, h)
                assert not bool((differ & ~near).any()), (
                    f"chains {differ.nonzero().flatten().tolist()} decided differently from the "
                    f"reference: log alpha {log_alpha[differ].tolist()}, log u "
                    f"{torch.log(uniforms.double())[differ].tolist()}"
                )
            # The selected rows are copies of the backend's own decisions: bit-exact.
            row = accepted.unsqueeze(-1)
            assert_exactly_equal(x_new, torch.where(row, xp, x), "x_new")
            assert_exactly_equal(g_new, torch.where(row, gp, g), "grad_logp_new")
            assert_exactly_equal(logp_new, torch.where(accepted, logp_prop, logp), "logp_new")
            assert x_new.dtype == ref[0].dtype and logp_new.dtype == ref[1].dtype

        check_against_reference(L.mala_accept, (*args, h), {"uniforms": uniforms}, backend,
                                compare)

    run_property(backend, mala_cases, prop)


# --------------------------------------------------------------------------------------------
# ThinK: channel_scores, pruned_decode_attention (backends); select_channels, compact_keys
# --------------------------------------------------------------------------------------------

THINK_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64: refused


def channel_scores_cases(backend: str):
    @st.composite
    def build(draw):
        batch, hkv, group = draw(sizes()), draw(sizes()), draw(st.sampled_from((1, 2, 3)))
        window, length, dim = draw(sizes()), draw(sizes()), draw(sizes())
        dtype = draw(dtypes(THINK_DTYPES))
        q = draw(float_tensors((batch, hkv * group, window, dim), dtype, constant_rows=True))
        k = draw(float_tensors((batch, hkv, length, dim), dtype, constant_rows=True))
        how = corruption(draw)
        if how is not None:
            if draw(st.booleans()):
                q = corrupt(q, how)
            else:
                k = corrupt(k, how)
        return q, k

    return build()


def _channel_score_bounds(q: torch.Tensor, k: torch.Tensor):
    """float64 value, the bound of its intermediate sums, and the float32 rounding slack of
    each factor (n terms summed, then divided) for channel_scores."""
    batch, hq, window, dim = q.shape
    hkv, length = k.shape[1], k.shape[2]
    q2 = q.double().pow(2).view(batch, hkv, hq // hkv, window, dim)
    k2 = k.double().pow(2)
    q_sum, k_sum = q2.sum((2, 3)), k2.sum(2)
    q_term, k_term = q_sum / (window * hq // hkv), k_sum / length
    return q_term, k_term, torch.maximum(q_sum, k_sum), (window * hq // hkv, length)


@pytest.mark.parametrize("backend", BACKENDS)
def test_channel_scores(backend):
    f32 = torch.finfo(torch.float32)

    def prop(case, backend):
        q, k = case

        def compare(got, ref):
            q_term, k_term, sums, (nq, nk) = _channel_score_bounds(q, k)
            # Sums of non-negative terms: a relative error of (n + 2) eps per factor, and an
            # absolute one of n subnormal steps where a factor underflows; the product rounds once.
            slack_q = (nq + 2) * (f32.eps * q_term + f32.smallest_normal * f32.eps * 4)
            slack_k = (nk + 2) * (f32.eps * k_term + f32.smallest_normal * f32.eps * 4)
            mag = (slack_q * k_term + slack_k * q_term) / f32.eps + q_term * k_term
            assert_values_close(got, ref, acc=torch.float32, mag=mag, terms=1.0,
                                exempt=sums > f32.max, what="channel_scores")

        check_against_reference(T.channel_scores, (q, k), {}, backend, compare)

    run_property(backend, channel_scores_cases, prop)


@st.composite
def _positions(draw, batch: int, length: int):
    """Optional (starts, lengths): mostly valid windows, sometimes out of range."""
    starts = lengths = None
    index_dtype = draw(st.sampled_from((torch.int64, torch.int32)))
    if draw(st.booleans()):
        starts = torch.tensor([draw(st.integers(0, max(length, 0))) for _ in range(batch)],
                              dtype=index_dtype)
    if draw(st.booleans()):
        lo = starts if starts is not None else torch.zeros(batch, dtype=torch.int64)
        lengths = torch.tensor([draw(st.integers(int(lo[b]), max(length, int(lo[b]))))
                                for b in range(batch)], dtype=index_dtype)
    if batch and draw(st.integers(0, 9)) == 0:  # out of range
        bad = torch.tensor([draw(st.sampled_from((-1, length + 1)))] * batch, dtype=index_dtype)
        if draw(st.booleans()):
            starts = bad
        else:
            lengths = bad
    return starts, lengths


def attention_cases(backend: str):
    @st.composite
    def build(draw):
        small = backend == "triton"
        batch, hkv = draw(sizes()), draw(st.sampled_from((1, 2) if small else (1, 2, 3) * 2 + (0,)))
        group, s_len = draw(st.sampled_from((1, 2, 3))), draw(st.sampled_from((0, 1, 1, 2, 3)))
        dim = draw(sizes())
        kept = draw(st.integers(0, dim))
        lp, lr, dv = draw(sizes()), draw(sizes()), draw(sizes())
        dtype = draw(dtypes(THINK_DTYPES))

        def tensor(*shape):
            return draw(float_tensors(shape, dtype, constant_rows=True))

        q = tensor(batch, hkv * group, s_len, dim)
        k_pruned = tensor(batch, hkv, lp, kept)
        k_recent = tensor(batch, hkv, lr, dim)
        v = tensor(batch, hkv, lp + lr, dv)
        gen = torch.Generator().manual_seed(draw(st.integers(0, 99)))
        idx = torch.stack([torch.randperm(dim, generator=gen)[:kept].sort().values
                           for _ in range(batch * hkv)]).view(batch, hkv, kept) \
            if batch * hkv else torch.zeros(batch, hkv, kept, dtype=torch.int64)
        idx = relayout(idx.to(draw(st.sampled_from((torch.int64, torch.int32)))),
                       draw(st.sampled_from(("contiguous", "transposed", "strided"))))
        starts, lengths = draw(_positions(batch, lp + lr))
        scale = draw(st.one_of(st.none(), st.none(), scalars(-2.0, 2.0)))
        args = [q, k_pruned, idx, k_recent, v]
        how = corruption(draw)
        if how is not None:
            i = draw(st.integers(0, 4))
            args[i] = corrupt(args[i], how)
        return args, {"lengths": lengths, "starts": starts, "scale": scale}

    return build()


def _attention_bounds(q, k_pruned, idx, k_recent, v, lengths, starts, scale):
    """float64 bounds for pruned_decode_attention: per query, the largest |scaled logit| bound
    sum_j |q_j k_j| |scale| over its visible keys, the largest |v| per value channel over them,
    the number of visible keys, and whether it sees any key."""
    batch, hq, s_len, dim = q.shape
    hkv, lp, lr = k_pruned.shape[1], k_pruned.shape[2], k_recent.shape[2]
    group, length = hq // hkv, lp + lr
    if scale is None:
        scale = 1.0 / math.sqrt(dim) if dim else 1.0
    qa = q.double().abs().reshape(batch, hkv, group * s_len, dim)
    q_kept = torch.gather(qa, 3, idx.long()[:, :, None, :].expand(-1, -1, group * s_len, -1))
    logit_mag = torch.cat([q_kept @ k_pruned.double().abs().transpose(-1, -2),
                           qa @ k_recent.double().abs().transpose(-1, -2)], -1) * abs(scale)
    pos = torch.arange(length)
    start = torch.zeros(batch, dtype=torch.long) if starts is None else starts.long()
    end = torch.full((batch,), length) if lengths is None else lengths.long()
    q_pos = end[:, None] - s_len + torch.arange(s_len)[None, :]
    visible = (pos[None, None, :] >= start[:, None, None]) & \
        (pos[None, None, :] <= q_pos[..., None])
    visible = visible[:, None, None].expand(batch, hkv, group, s_len, length).reshape(
        batch, hkv, group * s_len, length)
    logit_bound = torch.where(visible, logit_mag, torch.zeros_like(logit_mag)).amax(-1) \
        if length else torch.zeros(batch, hkv, group * s_len, dtype=torch.float64)
    va = v.double().abs()[:, :, None, :, :]  # [B, Hkv, 1, L, Dv]
    v_bound = torch.where(visible[..., None], va, torch.zeros_like(va)).amax(-2) \
        if length else torch.zeros(batch, hkv, group * s_len, v.shape[-1], dtype=torch.float64)
    n_visible = visible.sum(-1)
    shape = (batch, hq, s_len)
    return (logit_bound.reshape(shape), v_bound.reshape(*shape, v.shape[-1]),
            n_visible.reshape(shape), dim)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pruned_decode_attention(backend):
    f32 = torch.finfo(torch.float32)

    def prop(case, backend):
        args, kwargs = case

        def compare(got, ref):
            out, lse = got
            ref_out, ref_lse = ref
            logit_bound, v_bound, n_visible, dim = _attention_bounds(*args, **kwargs)
            # A logit is a dot product of D terms: error (D + 2) eps |logit bound|; softmax
            # weights move by twice that (relative), and the weighted sum of L values rounds
            # L times: |d out| <= (2 (D + 2) bound + L + 2) eps max|v|.
            logit_err = (dim + 2) * logit_bound
            n = n_visible.double()
            out_mag = (2 * logit_err + n + 2)[..., None] * v_bound
            overflow = (logit_bound > f32.max / 4)[..., None] | (n[..., None] * v_bound > f32.max)
            assert_values_close(out, ref_out, acc=torch.float32, mag=out_mag, exempt=overflow,
                                what="out")
            lse_mag = logit_err + ref_lse.double().abs().nan_to_num(0.0, 0.0, 0.0) + n + 2
            assert_values_close(lse, ref_lse, acc=torch.float32, mag=lse_mag,
                                exempt=logit_bound > f32.max / 4, what="lse")

        check_against_reference(T.pruned_decode_attention, tuple(args),
                                {**kwargs, "return_lse": True}, backend, compare)

    run_property(backend, attention_cases, prop)


@st.composite
def _select_cases(draw):
    shape = (draw(sizes()), draw(sizes()), draw(sizes()))
    dtype = draw(dtypes(THINK_DTYPES))
    # Few distinct values: ties, which go to the lower channel.
    scores = draw(float_tensors(shape, dtype)).round()
    keep = draw(st.one_of(st.integers(-1, shape[2] + 1), st.sampled_from((1.0, True, None))))
    return scores, keep


@settings(settings.get_profile("ponder-ops"), max_examples=30)
@given(case=_select_cases())
def test_select_channels(case):
    scores, keep = case
    got = outcome(lambda: T.select_channels(scores, keep))
    if isinstance(got, Raised):
        return  # the reference has no checks of its own: a refusal is all we can compare
    assert_exactly_equal(got, T.select_channels_reference(scores, keep), "select_channels")
    assert bool(torch.isfinite(scores).all()), "non-finite scores were ranked"


@st.composite
def _compact_cases(draw):
    shape = (draw(sizes()), draw(sizes()), draw(sizes()), draw(sizes()))
    k = draw(float_tensors(shape, draw(dtypes(THINK_DTYPES))))
    kept = draw(st.integers(0, shape[3] + 1))
    low, high = (-1, shape[3]) if draw(st.integers(0, 9)) == 0 else (0, max(shape[3] - 1, 0))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 99)))
    idx = torch.randint(low, high + 1, (shape[0], shape[1], kept), generator=gen)
    idx = relayout(idx.to(draw(st.sampled_from((torch.int64, torch.int32, torch.float32)))),
                   draw(st.sampled_from(("contiguous", "transposed"))))
    return k, idx


@settings(settings.get_profile("ponder-ops"), max_examples=30)
@given(case=_compact_cases())
def test_compact_keys(case):
    k, idx = case
    got = outcome(lambda: T.compact_keys(k, idx))
    if isinstance(got, Raised):
        assert not (idx.dtype in (torch.int64, torch.int32) and k.dtype in T.DTYPES
                    and (idx.numel() == 0 or bool(((idx >= 0) & (idx < k.shape[3])).all()))), (
            f"a valid call was refused: {got}"
        )
        return
    assert_exactly_equal(got, T.compact_keys_reference(k, idx), "compact_keys")


# --------------------------------------------------------------------------------------------
# PRM: score_steps, step_logits
# --------------------------------------------------------------------------------------------


def prm_cases(backend: str):
    @st.composite
    def build(draw):
        batch, length, width = draw(sizes()), draw(sizes()), draw(sizes())
        dtype = draw(dtypes())
        hidden = draw(float_tensors((batch, length, width), dtype))
        kind = draw(st.sampled_from(("two_label", "value")))
        head_dtype = draw(dtypes())
        head = draw(float_tensors((2, width) if kind == "two_label" else (width,), head_dtype))
        bias = draw(st.one_of(
            st.none(),
            float_tensors((2,) if kind == "two_label" else draw(st.sampled_from(((), (1,)))),
                          draw(dtypes())),
            scalars(-3.0, 3.0) if kind == "value" else st.none(),
        ))
        gen = torch.Generator().manual_seed(draw(st.integers(0, 99)))
        rows = [sorted(torch.randperm(length, generator=gen)[:draw(st.integers(0, length))]
                       .tolist()) for _ in range(batch)]
        step_index = P.pad_step_index(rows) if batch else torch.zeros(0, 0, dtype=torch.int64)
        if step_index.numel() and draw(st.integers(0, 9)) == 0:  # a bad position
            b = draw(st.integers(0, batch - 1))
            step_index[b, -1] = draw(st.sampled_from((-2, length, 10**6)))
        if draw(st.booleans()):  # extra padding columns
            step_index = torch.cat([step_index, torch.full((batch, 2), -1)], 1)
        step_index = relayout(step_index, draw(st.sampled_from(("contiguous", "transposed"))))
        lengths = None
        if draw(st.integers(0, 3)) == 0:
            lengths = torch.tensor([draw(st.integers(0, length)) for _ in range(batch)],
                                   dtype=torch.int64)
        how = corruption(draw)
        if how is not None:
            if draw(st.booleans()):
                hidden = corrupt(hidden, how)
            else:
                head = corrupt(head, how)
        spell_kind = draw(st.sampled_from((None, None, kind, "other")))
        return (hidden, step_index, head, bias), {"kind": spell_kind, "lengths": lengths}

    return build()


def _prm_logit_bounds(hidden, step_index, head, bias):
    """float64 ``sum_j |h_j w_j| + |bias|`` at each step (0 at padding): ``[B, S, K]``."""
    acc = L.acc_dtype(hidden.dtype)
    h = P._gather_rows(hidden, step_index).to(acc).double().abs()
    w = head.to(acc).double().abs().reshape(2 if head.dim() == 2 else 1, hidden.shape[-1])
    mag = h @ w.T
    if bias is not None:
        b = bias if isinstance(bias, torch.Tensor) else torch.tensor(float(bias))
        mag = mag + b.to(acc).double().abs().reshape(-1)
    return mag, acc


@pytest.mark.parametrize("backend", BACKENDS)
def test_score_steps(backend):
    def prop(case, backend):
        args, kwargs = case

        def compare(got, ref):
            hidden, step_index, head, bias = args
            assert_exactly_equal(got.num_steps, ref.num_steps, "num_steps")
            mag, acc = _prm_logit_bounds(hidden, step_index, head, bias)
            fin = torch.finfo(acc)
            width = hidden.shape[-1]
            # score = sigmoid(z+ - z-) moves by at most a quarter of the logits' error.
            z_err = (width + 2) * mag.sum(-1) * fin.eps
            s_tol = 0.25 * z_err + 4 * fin.eps
            overflow = mag.sum(-1) > fin.max / 2
            # Scores in [0, 1]: the bound is an absolute one, passed as mag with terms = 1.
            assert_values_close(got.scores, ref.scores, acc=acc, mag=s_tol / fin.eps, terms=1.0,
                                exempt=overflow, what="scores")
            valid = step_index >= 0
            steps = valid.sum(1).double()
            row_over = (overflow & valid).any(1)
            row_tol = torch.where(valid, s_tol, torch.zeros_like(s_tol))
            for name, tol in (
                ("min", row_tol.amax(1) if row_tol.shape[1] else steps),
                ("last", row_tol.amax(1) if row_tol.shape[1] else steps),
                ("mean", (row_tol.amax(1) if row_tol.shape[1] else steps) + steps * fin.eps),
                ("product", row_tol.sum(1) + (steps + 1) * fin.eps),
            ):
                assert_values_close(getattr(got, name), getattr(ref, name), acc=acc,
                                    mag=tol / fin.eps, terms=1.0, exempt=row_over, what=name)

        check_against_reference(P.score_steps, args, kwargs, backend, compare)

    run_property(backend, prm_cases, prop)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_logits(backend):
    def prop(case, backend):
        args, kwargs = case

        def compare(got, ref):
            hidden, step_index, head, bias = args
            mag, acc = _prm_logit_bounds(hidden, step_index, head, bias)
            mag = mag.reshape(ref.shape)
            assert_values_close(got, ref, acc=acc, mag=mag, terms=hidden.shape[-1] + 2.0,
                                what="step_logits")

        check_against_reference(P.step_logits, args, kwargs, backend, compare)

    run_property(backend, prm_cases, prop)


# --------------------------------------------------------------------------------------------
# Speculative: accept_tokens, accept_steps
# --------------------------------------------------------------------------------------------


def accept_tokens_cases(backend: str, *, nonfinite: bool = False):
    @st.composite
    def build(draw):
        batch, k = draw(sizes()), draw(st.sampled_from((1, 2, 3) * 2 + (0,)))
        vocab = draw(st.sampled_from((1, 2, 3, 7, 16) if backend == "triton" else
                                     (1, 2, 3, 7, 16, 97) * 2 + (0,)))
        dtype = draw(dtypes())
        layouts = ("contiguous", "transposed", "strided", "offset")

        def logits(shape):
            # Logits hold -inf (masked tokens) but, below, no NaN or +inf: that contract has its
            # own property (test_accept_tokens_nonfinite_logits).
            t = draw(float_tensors(shape, torch.float64, specials=False, layouts=("contiguous",)))
            t = t * draw(st.sampled_from((1.0, 3.0, 0.01)))
            flat = t.view(-1)
            for _ in range(draw(st.integers(0, 3)) if flat.numel() else 0):
                flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(
                    (-math.inf, -math.inf, 1e30, -1e30, 1e-30, 0.0, 30.0)))
            t = t.to(dtype)
            # Keep a finite entry in every row (a row of -inf is an error, drawn on purpose only
            # in the non-finite property).
            if t.numel():
                first = t[..., 0]
                t[..., 0] = torch.where(first.isfinite(), first, torch.zeros_like(first))
            return relayout(t, draw(st.sampled_from(layouts)))

        target = logits((batch, k + 1, vocab))
        draft = draw(st.one_of(st.none(), st.just("draw")))
        draft_logits = logits((batch, k, vocab)) if draft else None
        if draft_logits is not None and draw(st.booleans()):
            # A draft close to the target: acceptance decisions go both ways.
            noise = 0.5 * torch.randn(batch, k, vocab, dtype=torch.float64,
                                      generator=torch.Generator().manual_seed(3))
            draft_logits = relayout((target[:, :k].double() + noise).to(dtype),
                                    draw(st.sampled_from(layouts)))
        gen = torch.Generator().manual_seed(draw(st.integers(0, 99)))
        tokens = torch.randint(0, max(vocab, 1), (batch, k), generator=gen)
        if tokens.numel() and draw(st.integers(0, 9)) == 0:
            tokens[0, 0] = draw(st.sampled_from((-1, vocab)))
        tokens = relayout(tokens, draw(st.sampled_from(("contiguous", "transposed", "strided"))))
        temperature = draw(st.one_of(st.sampled_from((0.0, 1.0)), scalars(1e-2, 3.0)))
        top_k = draw(st.sampled_from((None, None, 0, 1, 2, 3, vocab, vocab + 1)))
        top_p = draw(st.sampled_from((None,) * 3 + (0.5, 0.9, 1.0) * 2 + (0.0, 1.5, math.nan)))
        # A race uniform of exactly 1 has its own test below.
        uniforms = (draw(uniforms_in_unit_interval((batch, k))),
                    draw(uniforms_in_unit_interval((batch, vocab), one=False)))
        if nonfinite and target.numel():
            poisoned = draw(st.sampled_from(
                [t for t in (target, draft_logits) if t is not None and t.numel()]))
            b, j = draw(st.integers(0, batch - 1)), draw(st.integers(0, poisoned.shape[1] - 1))
            kind = draw(st.sampled_from(("nan", "+inf", "all -inf")))
            if kind == "all -inf":
                poisoned[b, j] = -math.inf
            else:
                poisoned[b, j, draw(st.integers(0, vocab - 1))] = \
                    math.nan if kind == "nan" else math.inf
        return (tokens, target, draft_logits, temperature, top_k, top_p), uniforms

    return build()


def _accept_tokens_call(case):
    args, uniforms = case
    temperature = args[3]
    greedy = isinstance(temperature, (int, float)) and temperature == 0
    return args, {"uniforms": None if greedy else uniforms}


@pytest.mark.parametrize("backend", BACKENDS)
def test_accept_tokens(backend):
    def prop(case, backend):
        args, kwargs = _accept_tokens_call(case)

        def compare(got, ref):
            assert_exactly_equal(got[0], ref[0], "tokens")
            assert_exactly_equal(got[1], ref[1], "accepted")

        check_against_reference(SP.accept_tokens, args, kwargs, backend, compare)

    run_property(backend, accept_tokens_cases, prop)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accept_tokens_nonfinite_logits(backend):
    """NaN, +inf or a row with no finite logit: a ValueError on the reference and on every
    backend (docs/speculative.md; -inf alone is a masked token, covered above)."""

    def prop(case, backend):
        args, kwargs = _accept_tokens_call(case)
        if args[1].numel() == 0:
            return  # nothing was poisoned
        ref = outcome(lambda: SP.accept_tokens(*args, **kwargs, backend="torch"))
        got = run_on(backend, lambda: SP.accept_tokens(*args, **kwargs, backend=backend))
        assert isinstance(ref, Raised), f"the reference accepted non-finite logits: {ref!r}"
        assert_same_outcome(ref, got, backend, compare=None)

    run_property(backend, lambda b: accept_tokens_cases(b, nonfinite=True), prop,
                 examples=None if backend != "triton" else 6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accept_tokens_race_uniform_one(backend):
    """Every backend emits the same valid token as the reference, never a masked one, when a
    race uniform is 1."""
    tokens = torch.tensor([[0], [0]])
    target = torch.tensor([[[1.5], [-0.3]], [[1.5], [-0.3]]]).expand(2, 2, 2).clone()
    target[1, 1, 1] = -math.inf  # row 1's bonus token: token 0 only
    accept_u = torch.full((2, 1), 0.03, dtype=torch.float64)
    race_u = torch.tensor([[1.0, 0.5], [1.0, 1.0]], dtype=torch.float64)
    got = run_on(backend, lambda: SP.accept_tokens(tokens, target, None, 1.0,
                                                   uniforms=(accept_u, race_u), backend=backend))
    ref = SP.accept_tokens(tokens, target, None, 1.0, uniforms=(accept_u, race_u),
                           backend="torch")
    for out in (ref, got):
        assert not isinstance(out, Raised), out
        assert out[1].tolist() == [1, 1]
        # Row 0: token 0 has u = 1, the certain winner; row 1: token 1 is masked.
        assert out[0].tolist() == [[0, 0], [0, 0]], out[0].tolist()


def accept_steps_cases(backend: str):
    @st.composite
    def build(draw):
        n = draw(sizes(extra=(() if backend == "triton" else (1025,))))
        rewards = draw(float_tensors((n,), draw(dtypes())))
        if draw(st.booleans()):  # PRM scores: in [0, 1]
            rewards = rewards.sigmoid()
        omega = draw(st.sampled_from(SP.OMEGAS * 3 + ("other",)))
        threshold = draw(scalars(1e-2, 1.0))
        sharpness = draw(scalars(1e-1, 50.0))
        uniforms = draw(uniforms_in_unit_interval((n,)))
        if draw(st.integers(0, 9)) == 0:
            uniforms = uniforms.float()
        return (rewards, threshold, omega), {"sharpness": sharpness, "uniforms": uniforms}

    return build()


@pytest.mark.parametrize("backend", BACKENDS)
def test_accept_steps(backend):
    f64 = torch.finfo(torch.float64)

    def prop(case, backend):
        args, kwargs = case

        def compare(got, ref):
            accepted, weights = got
            rewards, threshold, omega = args
            u = kwargs["uniforms"].double()
            # sigmoid(s (r - delta)) through exp: a relative error of a few eps times the
            # exponent; other omegas are exact up to one division.
            arg = (kwargs["sharpness"] * (rewards.double() - threshold)).abs()
            if omega != "sigmoid":
                arg = torch.zeros_like(arg)
            mag = (4 + arg.nan_to_num(0.0, 0.0, 0.0)) * ref[1].abs().nan_to_num(0.0, 0.0, 0.0)
            assert_values_close(weights, ref[1], acc=torch.float64, mag=mag, what="weights")
            differ = accepted != ref[0]
            near = (u - ref[1]).abs() <= 16 * f64.eps * (1 + mag)
            assert not bool((differ & ~near).any()), (
                f"steps {differ.nonzero().flatten().tolist()} decided differently away from "
                "the threshold"
            )

        check_against_reference(SP.accept_steps, args, kwargs, backend, compare)

    run_property(backend, accept_steps_cases, prop)


# --------------------------------------------------------------------------------------------
# The strategies themselves
# --------------------------------------------------------------------------------------------


@settings(settings.get_profile("ponder-ops"), max_examples=30)
@given(t=float_tensors((3, 4), torch.float16), u=uniforms_in_unit_interval((5,)))
def test_strategies_keep_their_promises(t, u):
    """Layouts keep the values; uniforms are in (0, 1]; float16 specials are float16 values."""
    assert t.dtype == torch.float16 and t.shape == (3, 4)
    assert bool(((u > 0) & (u <= 1)).all())
    for layout in ("contiguous", "transposed", "strided", "offset", "broadcast"):
        assert_exactly_equal(relayout(t, layout), t, layout)
    assert all(torch.tensor(v, dtype=torch.float16).dtype == torch.float16
               for v in special_values(torch.float16))


def test_backends_are_compared():
    """The properties compare at least the C++ backend with the reference."""
    assert "cpu" in BACKENDS and "torch" not in BACKENDS
    assert set(FLOAT_DTYPES) == set(L.FLOAT_DTYPES)
