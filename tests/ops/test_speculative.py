"""ponder.ops.speculative: accept_tokens and accept_steps against their references, on every
backend that runs here, and statistically.

Statistical tests use fixed seeds, so each passes or fails the same way on every run; the stated
false-alarm rate is the probability that a *correct* implementation fails for a seed drawn at
random (each chi-square test rejects at p < 1e-4).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch
from ponder import _backend
from ponder.ops import speculative as S

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (B, K, V): a single token vocabulary, odd sizes, a vocabulary longer than one 1024-wide tile.
SHAPES = [(1, 1, 1), (7, 3, 97), (2, 2, 1025)]
FILTERS = [(None, None), (5, None), (None, 0.8), (3, 0.9)]
P_VALUE = 1e-4


def _skip_triton_bf16(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16 and _backend.triton_interpreted():
        pytest.skip("the Triton interpreter has no bfloat16")


def make_inputs(b, k, v, dtype=torch.float32, seed=0, draft=True, temperature=1.0):
    """Target logits, draft logits near them, draft tokens sampled from the draft, uniforms."""
    gen = torch.Generator().manual_seed(seed)
    target = (2.0 * torch.randn(b, k + 1, v, generator=gen)).to(dtype)
    dl = (target[:, :k].float() + 0.7 * torch.randn(b, k, v, generator=gen)).to(dtype)
    t = max(temperature, 0.05)
    probs = torch.softmax(dl.float().reshape(-1, v) / t, -1)
    tokens = torch.multinomial(probs, 1, generator=gen).reshape(b, k)
    au = 1.0 - torch.rand(b, k, generator=gen, dtype=torch.float64)
    ru = 1.0 - torch.rand(b, v, generator=gen, dtype=torch.float64)
    return tokens, target, (dl if draft else None), (au, ru)


# --------------------------------------------------------------------------------------------
# Exact: explicit uniforms
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: f"k{f[0]}-p{f[1]}")
@pytest.mark.parametrize("draft", [True, False], ids=["draft", "point"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_accept_tokens_matches_reference(shape, draft, filters, cpu_backend):
    top_k, top_p = filters
    tokens, target, dl, (au, ru) = make_inputs(*shape, draft=draft, seed=sum(shape))
    for temperature in (1.0, 0.6):
        out = S.accept_tokens(tokens, target, dl, temperature, top_k, top_p,
                              uniforms=(au, ru), backend=cpu_backend)
        ref = S.accept_tokens_reference(tokens, target, dl, temperature, top_k, top_p,
                                        accept_uniforms=au, race_uniforms=ru)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_accept_tokens_dtypes(dtype, cpu_backend):
    _skip_triton_bf16(cpu_backend, dtype)
    tokens, target, dl, (au, ru) = make_inputs(5, 4, 97, dtype=dtype, seed=3)
    out = S.accept_tokens(tokens, target, dl, 0.8, uniforms=(au, ru), backend=cpu_backend)
    ref = S.accept_tokens_reference(tokens, target, dl, 0.8, accept_uniforms=au,
                                    race_uniforms=ru)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


# With a point-mass draft (q = 1 at the draft token x) the test accepts iff u < p(x), so explicit
# uniforms just below and just above the float64 probability read the backend's p(x) to a
# relative precision: the kernel's log-sum-exp (online, block by block, with its own cheaper
# exponential in the sum) must agree with float64 to a few float32 ulps. The logits rise across
# the row so that the running maximum grows from block to block (each growth rescales the sum).
PROB_RTOL = 4e-6  # observed <= 1.3e-6 (float32 rounding of lse and of l / T - lse)


@pytest.mark.parametrize("top_k", [None, 50], ids=["all", "top50"])
def test_accept_probability_matches_float64(top_k, cpu_backend):
    if cpu_backend == "triton":
        pytest.skip("the Triton interpreter is slow here; the GPU tests cover Triton")
    gen = torch.Generator().manual_seed(5)
    v = 3000  # two full 1024-wide blocks and a partial one
    temperature = 0.7
    rows = []
    for _ in range(3):
        logits = 3.0 * torch.randn(v, generator=gen) + torch.linspace(0.0, 6.0, v)
        s = (logits * torch.tensor(1.0 / temperature)).double()  # l / T as the kernel rounds it
        if top_k is not None:
            s = s.masked_fill(s < torch.topk(s, top_k).values[-1], float("-inf"))
        p = torch.exp(s - torch.logsumexp(s, 0))
        for x in torch.topk(p, 6).indices.tolist():  # p(x) >= 1e-4 here: no tiny-u resolution limit
            rows.append((logits, x, float(p[x])))
    b = 2 * len(rows)
    target = torch.stack([r[0] for r in rows for _ in (0, 1)])[:, None].expand(b, 2, v)
    tokens = torch.tensor([[r[1]] for r in rows for _ in (0, 1)])
    au = torch.tensor([[r[2] * f] for r in rows for f in (1 - PROB_RTOL, 1 + PROB_RTOL)],
                      dtype=torch.float64)
    assert float(au.max()) < 1.0
    ru = torch.full((b, v), 0.5, dtype=torch.float64)
    _, n = S.accept_tokens(tokens, target.contiguous(), None, temperature, top_k,
                           uniforms=(au, ru), backend=cpu_backend)
    assert n.tolist() == [1, 0] * len(rows)  # accepted just below p(x), rejected just above


def test_inputs_are_discriminating():
    """The shared inputs exercise early rejections, full acceptance and the bonus token."""
    counts = []
    for seed in range(6):
        tokens, target, dl, (au, ru) = make_inputs(7, 3, 97, seed=seed)
        counts.append(S.accept_tokens_reference(tokens, target, dl, 1.0, accept_uniforms=au,
                                                race_uniforms=ru)[1])
    counts = torch.cat(counts)
    assert (counts == 0).any() and (counts == 3).any() and ((counts > 0) & (counts < 3)).any()


def test_output_layout(cpu_backend):
    tokens, target, dl, (au, ru) = make_inputs(7, 3, 97, seed=1)
    out, n = S.accept_tokens(tokens, target, dl, uniforms=(au, ru), backend=cpu_backend)
    assert out.shape == (7, 4) and out.dtype == torch.int64 and n.dtype == torch.int64
    for b in range(7):
        m = int(n[b])
        assert torch.equal(out[b, :m], tokens[b, :m])  # the kept draft tokens
        assert 0 <= int(out[b, m]) < 97  # one target token
        assert (out[b, m + 1 :] == -1).all()


def test_non_contiguous_inputs(cpu_backend):
    tokens, target, dl, (au, ru) = make_inputs(5, 3, 97, seed=2)
    # Same values, other layouts: a vocabulary-major copy and every other column.
    t2 = target.permute(2, 0, 1).contiguous().permute(1, 2, 0)
    d2 = torch.zeros(5, 3, 194)
    d2[..., ::2] = dl
    d2 = d2[..., ::2]
    tok2 = torch.zeros(5, 6, dtype=torch.int64)
    tok2[:, ::2] = tokens
    tok2 = tok2[:, ::2]
    assert not (t2.is_contiguous() or d2.is_contiguous() or tok2.is_contiguous())
    got = S.accept_tokens(tok2, t2, d2, uniforms=(au.t().contiguous().t(), ru),
                          backend=cpu_backend)
    ref = S.accept_tokens_reference(tokens, target, dl, accept_uniforms=au, race_uniforms=ru)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_empty_batch(cpu_backend):
    out, n = S.accept_tokens(torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, 4, 11),
                             torch.zeros(0, 3, 11), generator=0, backend=cpu_backend)
    assert out.shape == (0, 4) and n.shape == (0,)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_greedy_equals_argmax_chain(shape, cpu_backend):
    b, k, v = shape
    gen = torch.Generator().manual_seed(5)
    target = torch.randn(b, k + 1, v, generator=gen)
    best = target.argmax(-1)
    # Draft = the target's argmax except for a wrong token at a random position (or none).
    tokens = best[:, :k].clone()
    wrong_at = torch.randint(0, k + 1, (b,), generator=gen)
    for r in range(b):
        if wrong_at[r] < k and v > 1:
            tokens[r, wrong_at[r]] = (tokens[r, wrong_at[r]] + 1) % v
    out, n = S.accept_tokens(tokens, target, None, 0.0, backend=cpu_backend)
    for r in range(b):
        m = int(wrong_at[r]) if v > 1 else k
        assert int(n[r]) == m
        assert torch.equal(out[r, : m + 1], best[r, : m + 1])  # argmaxes, then the correction
    ref = S.accept_tokens_reference(tokens, target, None, 0.0)
    assert torch.equal(out, ref[0]) and torch.equal(n, ref[1])


def test_keep_thresholds_definition():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, -1.0]])
    assert S.keep_thresholds(logits, 1.0, None, None) is None
    assert float(S.keep_thresholds(logits, 1.0, 3, None)) == 2.0  # ties at the k-th are kept
    probs = torch.softmax(logits[0], -1)  # 3 takes ~0.52 of the mass
    assert float(S.keep_thresholds(logits, 1.0, None, float(probs[0]) - 1e-3)) == 3.0
    assert float(S.keep_thresholds(logits, 1.0, None, float(probs[0]) + 1e-3)) == 2.0


@pytest.mark.parametrize(("args", "exc", "match"), [
    ((1.0, 0, None), ValueError, r"keep_thresholds: top_k must be an integer >= 1, got 0"),
    ((1.0, 2.0, None), TypeError, r"keep_thresholds: top_k must be an integer >= 1"),
    ((1.0, None, 0.0), ValueError, r"keep_thresholds: top_p must be in \(0, 1\]"),
    ((0.0, 2, None), ValueError, r"keep_thresholds: temperature must be > 0"),
])
def test_keep_thresholds_errors(args, exc, match):
    with pytest.raises(exc, match=match):
        S.keep_thresholds(torch.randn(2, 5), *args)


# --------------------------------------------------------------------------------------------
# Statistical: the emitted tokens have the target's distribution
# --------------------------------------------------------------------------------------------


def warped(logits, temperature, top_k, top_p):
    """The target's sampling distribution, computed independently of keep_thresholds."""
    s = logits.double() / temperature
    order = torch.argsort(s, descending=True)
    keep = torch.zeros_like(s, dtype=torch.bool)
    n = len(s) if top_k is None else top_k
    keep[order[:n]] = True
    s = s.masked_fill(~keep, float("-inf"))
    if top_p is not None:
        p = torch.softmax(s, -1)[order]
        before = torch.cumsum(p, 0) - p
        drop = order[before >= top_p]
        s[drop] = float("-inf")
    return torch.softmax(s, -1)


def chi_square_p(samples, probs):
    counts = np.bincount(samples, minlength=len(probs))
    expected = probs.numpy() * len(samples)
    support = expected > 0
    assert counts[~support].sum() == 0, "a token outside the support was emitted"
    return scipy.stats.chisquare(counts[support], expected[support]).pvalue


STAT_CASES = [
    # (temperature, top_k, top_p, draft logits?)
    (1.0, None, None, True),
    (0.7, 4, None, True),
    (1.3, None, 0.8, True),
    (1.0, 5, 0.9, False),
]


@pytest.mark.parametrize("case", STAT_CASES, ids=lambda c: "-".join(map(str, c)))
def test_speculative_sampling_reproduces_target(case, cpu_backend):
    """Emitted tokens at positions 0 and 1 follow the warped target distributions (false-alarm
    rate 2e-4 per case: two chi-square tests at p < 1e-4)."""
    temperature, top_k, top_p, with_draft = case
    if cpu_backend == "triton" and case not in (STAT_CASES[0], STAT_CASES[3]):
        pytest.skip("the Triton interpreter is slow: two cases suffice (the GPU runs all)")
    n = {"cpu": 40_000, "torch": 3_000, "triton": 150}[cpu_backend]
    k, v = 2, 6
    gen = torch.Generator().manual_seed(123)
    target = torch.randn(k + 1, v, generator=gen) * 1.5
    draft = target[:k] + torch.randn(k, v, generator=gen)
    q = torch.stack([warped(draft[j], temperature, top_k, top_p) for j in range(k)]).float()
    if not with_draft:  # a deterministic draft proposes token 0 and 3
        tokens = torch.tensor([[0, 3]]).expand(n, k).contiguous()
        dl = None
    else:
        tokens = torch.multinomial(q, n, replacement=True, generator=gen).t().contiguous()
        dl = draft.expand(n, k, v).contiguous()
    tl = target.expand(n, k + 1, v).contiguous()
    out, acc = S.accept_tokens(tokens, tl, dl, temperature, top_k, top_p, generator=2024,
                               backend=cpu_backend)
    for pos in range(2):
        emitted = acc >= pos  # rows that emitted a token at this position
        p = warped(target[pos], temperature, top_k, top_p)
        assert chi_square_p(out[emitted, pos].numpy(), p) > P_VALUE


def test_acceptance_rate_is_the_overlap(cpu_backend):
    """P(accept x ~ q) = sum_v min(p_v, q_v): a binomial z-test, |z| < 4.5 (false alarm ~7e-6)."""
    n = {"cpu": 20_000, "torch": 2_000, "triton": 150}[cpu_backend]
    gen = torch.Generator().manual_seed(9)
    target = torch.randn(2, 8, generator=gen)
    draft = torch.randn(1, 8, generator=gen)
    p, q = torch.softmax(target[0].double(), -1), torch.softmax(draft[0].double(), -1)
    tokens = torch.multinomial(q.float(), n, replacement=True, generator=gen)[:, None]
    _, acc = S.accept_tokens(tokens, target.expand(n, 2, 8).contiguous(),
                             draft.expand(n, 1, 8).contiguous(), generator=7,
                             backend=cpu_backend)
    rate = float(torch.minimum(p, q).sum())
    z = (float(acc.double().mean()) - rate) / np.sqrt(rate * (1 - rate) / n)
    assert abs(z) < 4.5


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------


def test_int_seed_reproduces_and_seeds_differ(cpu_backend):
    tokens, target, dl, _ = make_inputs(16, 3, 97, seed=4)
    a = S.accept_tokens(tokens, target, dl, generator=11, backend=cpu_backend)
    b = S.accept_tokens(tokens, target, dl, generator=11, backend=cpu_backend)
    c = S.accept_tokens(tokens, target, dl, generator=12, backend=cpu_backend)
    assert torch.equal(a[0], b[0])
    assert not torch.equal(a[0], c[0])


def test_per_row_seeds_in_a_mixed_batch(cpu_backend):
    """Row b's result depends on its own seed and inputs only, not on its batch neighbours."""
    tokens, target, dl, _ = make_inputs(6, 3, 97, seed=6)
    seeds = torch.tensor([5, 6, 7, 8, 9, 10])
    full = S.accept_tokens(tokens, target, dl, generator=seeds, backend=cpu_backend)[0]
    for rows in ([0], [3], [5, 1], [2, 4, 0]):
        idx = torch.tensor(rows)
        part = S.accept_tokens(tokens[idx], target[idx], dl[idx], generator=seeds[idx],
                               backend=cpu_backend)[0]
        assert torch.equal(part, full[idx])
    # The same inputs with different per-row seeds give different draws somewhere.
    rep = 32
    same_t = target[:1].expand(rep, -1, -1).contiguous()
    same_d = dl[:1].expand(rep, -1, -1).contiguous()
    outs = S.accept_tokens(tokens[:1].expand(rep, -1).contiguous(), same_t, same_d,
                           generator=torch.arange(rep), backend=cpu_backend)[0]
    assert len({tuple(r.tolist()) for r in outs}) > 1


def test_cpu_independent_of_thread_count(restore_threads):
    tokens, target, dl, _ = make_inputs(9, 3, 1025, seed=8)
    torch.set_num_threads(1)
    one = S.accept_tokens(tokens, target, dl, generator=3, backend="cpu")
    torch.set_num_threads(2)
    two = S.accept_tokens(tokens, target, dl, generator=3, backend="cpu")
    assert torch.equal(one[0], two[0])


# A tiny positive temperature puts all of p on the argmax: accept_tokens must then give the
# greedy result (with or without draft logits). l / T is ~1e9 or more here, so a scaled logit
# rounded differently in the lse pass and in the probability (e.g. an FMA contracted in one of
# them) turns exp(0) at the argmax into exp(-tens) or 0.
def tiny_temperature_failures(backend: str) -> list[str]:
    b, k, v = 32, 3, 1031  # the vocabulary spans two 1024-wide tiles
    gen = torch.Generator().manual_seed(11)
    target = 2.0 * torch.randn(b, k + 1, v, generator=gen)
    dl = target[:, :k] + 0.7 * torch.randn(b, k, v, generator=gen)
    tokens = target[:, :k].argmax(-1)
    wrong = torch.rand(b, k, generator=gen) < 0.3
    tokens[wrong] = (tokens[wrong] + 1) % v
    greedy = S.accept_tokens_reference(tokens, target, None, 0.0)
    failures = []
    for temperature in (1e-6, 1e-9, 1e-20, 1e-30):
        for draft in (dl, None):
            out, n = S.accept_tokens(tokens, target, draft, temperature, generator=0,
                                     backend=backend)
            bad = int(((out != greedy[0]).any(1) | (n != greedy[1])).sum())
            if bad:
                failures.append(f"T={temperature} draft={draft is not None}: {bad}/{b} rows")
    return failures


def test_tiny_temperature_is_greedy(cpu_backend):
    assert tiny_temperature_failures(cpu_backend) == []


_TINY_TEMPERATURE_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import ponder._C as C
from test_speculative import tiny_temperature_failures
print(C.active_isa())
print(";".join(tiny_temperature_failures("cpu")))
"""


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
def test_tiny_temperature_is_greedy_on_narrower_isa(cap):
    """The same on the CPU builds that the widest one hides (see tests/test_cpu_isa.py)."""
    env = dict(os.environ, PONDER_CPU_ISA=cap)
    run = subprocess.run([sys.executable, "-c", _TINY_TEMPERATURE_SCRIPT,
                          os.path.dirname(__file__)], env=env, check=True, capture_output=True,
                         text=True)
    ran, failures = (run.stdout.splitlines() + [""])[:2]
    if ran != cap:
        pytest.skip(f"this CPU has no {cap} build to run (it ran {ran})")
    assert failures == ""


# --------------------------------------------------------------------------------------------
# accept_steps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("omega", S.OMEGAS)
def test_accept_steps_matches_reference(omega, cpu_backend):
    gen = torch.Generator().manual_seed(1)
    rewards = torch.rand(97, generator=gen, dtype=torch.float64)
    u = 1.0 - torch.rand(97, generator=gen, dtype=torch.float64)
    acc, w = S.accept_steps(rewards, 0.6, omega, uniforms=u, backend=cpu_backend)
    ref_acc, ref_w = S.accept_steps_reference(rewards, 0.6, omega, uniforms=u)
    torch.testing.assert_close(w, ref_w, rtol=1e-12, atol=1e-12)
    assert torch.equal(acc, ref_acc)
    assert acc.any() and not acc.all()


def test_accept_steps_binary_is_the_threshold(cpu_backend):
    rewards = torch.tensor([0.0, 0.69, 0.7, 0.71, 1.0], dtype=torch.float64)
    acc, _ = S.accept_steps(rewards, 0.7, "binary", generator=0, backend=cpu_backend)
    assert acc.tolist() == [False, False, True, True, True]


def test_accept_steps_frequency(cpu_backend):
    """Sigmoid weighting accepts with probability omega(r): binomial z-test |z| < 4.5."""
    n = 20_000
    rewards = torch.full((n,), 0.65, dtype=torch.float64)
    acc, w = S.accept_steps(rewards, 0.7, "sigmoid", generator=5, backend=cpu_backend)
    rate = float(w[0])
    z = (float(acc.double().mean()) - rate) / np.sqrt(rate * (1 - rate) / n)
    assert abs(z) < 4.5


def test_accept_steps_empty(cpu_backend):
    acc, w = S.accept_steps(torch.zeros(0), 0.5, backend=cpu_backend)
    assert acc.shape == (0,) and w.shape == (0,)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _good():
    tokens, target, dl, _uni = make_inputs(2, 3, 11)
    return {"draft_tokens": tokens, "target_logits": target, "draft_logits": dl}


ERRORS = [
    ("draft_tokens", lambda a: a["draft_tokens"].float(), TypeError, "draft_tokens must have"),
    ("draft_tokens", lambda a: a["draft_tokens"] + 11, ValueError, r"in \[0, 11\)"),
    ("draft_tokens", lambda a: a["draft_tokens"] - 20, ValueError, r"in \[0, 11\)"),
    ("draft_tokens", lambda a: a["draft_tokens"][:, :0], ValueError, "K >= 1"),
    ("target_logits", lambda a: a["target_logits"][:, :3], ValueError, r"\[B, K \+ 1, V\]"),
    ("target_logits", lambda a: a["target_logits"].int(), TypeError, "target_logits must have"),
    ("draft_logits", lambda a: a["draft_logits"][..., :5], ValueError, "draft_logits must"),
    ("draft_logits", lambda a: a["draft_logits"].double(), TypeError, "draft_logits must"),
]


@pytest.mark.parametrize("arg,make,exc,match", ERRORS)
def test_accept_tokens_errors(arg, make, exc, match):
    args = _good()
    args[arg] = make(args)
    with pytest.raises(exc, match=match):
        S.accept_tokens(**args, generator=0)


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"temperature": -1.0}, ValueError, "temperature must be >= 0"),
        ({"top_k": 0}, ValueError, "top_k must be"),
        ({"top_p": 1.5}, ValueError, "top_p must be in"),
        ({"generator": torch.tensor([1])}, ValueError, "per-row seeds"),
        ({"generator": "x"}, TypeError, "generator must be"),
        ({"generator": 1, "uniforms": (torch.rand(2, 3), torch.rand(2, 11))}, ValueError,
         "not both"),
        ({"uniforms": (torch.zeros(2, 3), torch.rand(2, 11))}, ValueError, r"in \(0, 1\]"),
        ({"uniforms": (torch.rand(2, 3), torch.rand(2, 10))}, ValueError, "race"),
        ({"backend": "gpu"}, ValueError, "not a backend"),
    ],
)
def test_accept_tokens_argument_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        S.accept_tokens(**_good(), **kwargs)


def test_accept_steps_errors():
    r = torch.rand(4)
    with pytest.raises(ValueError, match="omega must be one of"):
        S.accept_steps(r, 0.5, "logistic")
    with pytest.raises(ValueError, match="needs threshold > 0"):
        S.accept_steps(r, 0.0, "clipping")
    with pytest.raises(ValueError, match="threshold must be finite"):
        S.accept_steps(r, float("nan"))
    with pytest.raises(ValueError, match="rewards must have 1 dimensions"):
        S.accept_steps(r[None], 0.5)


def test_native_launcher_rechecks_token_ids():
    """The C++ launcher refuses a token id it would index with, whatever the caller did."""
    native = _backend.cpu_module()
    tokens = torch.tensor([[0, 11]])
    logits = torch.zeros(1, 3, 11)
    out = torch.empty(1, 3, dtype=torch.int64)
    counts = torch.empty(1, dtype=torch.int64)
    seeds = torch.zeros(1, dtype=torch.int64)
    # Each buffer is (address, element count); the optional ones are absent: (0, 0).
    args = [out.data_ptr(), 3, counts.data_ptr(), 1, tokens.data_ptr(), 2, logits.data_ptr(), 33,
            *[0] * 10, seeds.data_ptr(), 1]
    with pytest.raises(ValueError, match=r"draft token 11 .* outside \[0, 11\)"):
        native.accept_tokens(*args, 1, 2, 11, 0, 1.0, 0, 1)
    with pytest.raises(ValueError, match=r"K .* must be in \[1, "):
        native.accept_tokens(*args, 1, 0, 11, 0, 1.0, 0, 1)
    with pytest.raises(ValueError, match="unknown dtype code"):
        tokens[0, 1] = 3
        native.accept_tokens(*args, 1, 2, 11, 7, 1.0, 0, 1)


# --------------------------------------------------------------------------------------------
# torch.library
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("explicit", [True, False], ids=["uniforms", "seed"])
def test_opcheck_accept_tokens(explicit, cpu_backend):
    tokens, target, dl, (au, ru) = make_inputs(3, 2, 13, seed=1)
    thr = S.keep_thresholds(target, 1.0, 4, None)
    seeds = torch.tensor([1, 2, 3])
    args = (tokens, target, dl, 1.0, thr, None, au if explicit else None,
            ru if explicit else None, seeds, not explicit, cpu_backend)
    torch.library.opcheck(torch.ops.ponder.accept_tokens.default, args)


def test_opcheck_accept_steps(cpu_backend):
    r = torch.rand(9, dtype=torch.float64)
    torch.library.opcheck(torch.ops.ponder.accept_steps.default,
                          (r, 0.5, 3, 10.0, None, 4, cpu_backend))


# --------------------------------------------------------------------------------------------
# GPU (pytest -m gpu)
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: f"k{f[0]}-p{f[1]}")
@pytest.mark.parametrize("draft", [True, False], ids=["draft", "point"])
def test_gpu_matches_reference(gpu_backend, dtype, filters, draft):
    tokens, target, dl, (au, ru) = make_inputs(7, 4, 32000, dtype=dtype, seed=2, draft=draft)
    dev = torch.device("cuda")
    out = S.accept_tokens(tokens.to(dev), target.to(dev), None if dl is None else dl.to(dev),
                          0.8, *filters, uniforms=(au.to(dev), ru.to(dev)), backend=gpu_backend)
    ref = S.accept_tokens_reference(tokens, target, dl, 0.8, *filters, accept_uniforms=au,
                                    race_uniforms=ru)
    assert torch.equal(out[0].cpu(), ref[0]) and torch.equal(out[1].cpu(), ref[1])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_gpu_greedy_and_seeds(gpu_backend, dtype):
    """Greedy equals the reference; a seed reproduces, per-row seeds ignore the batch
    neighbours, and a tiny temperature is greedy (no FMA contraction in the passes)."""
    dev = torch.device("cuda")
    tokens, target, dl, _ = make_inputs(6, 3, 1025, dtype=dtype, seed=6)
    td, tt, dd = tokens.to(dev), target.to(dev), dl.to(dev)
    out = S.accept_tokens(td, tt, None, 0.0, backend=gpu_backend)
    ref = S.accept_tokens_reference(tokens, target, None, 0.0)
    assert torch.equal(out[0].cpu(), ref[0]) and torch.equal(out[1].cpu(), ref[1])
    a = S.accept_tokens(td, tt, dd, generator=11, backend=gpu_backend)
    b = S.accept_tokens(td, tt, dd, generator=11, backend=gpu_backend)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    seeds = torch.tensor([5, 6, 7, 8, 9, 10])
    full = S.accept_tokens(td, tt, dd, generator=seeds, backend=gpu_backend)[0]
    part = S.accept_tokens(td[2:4], tt[2:4], dd[2:4], generator=seeds[2:4],
                           backend=gpu_backend)[0]
    assert torch.equal(full[2:4], part)
    tiny = S.accept_tokens(td, tt, None, 1e-30, generator=3, backend=gpu_backend)
    assert torch.equal(tiny[0].cpu(), ref[0]) and torch.equal(tiny[1].cpu(), ref[1])


@pytest.mark.gpu
def test_gpu_sampling_reproduces_target(gpu_backend):
    """The seeded in-kernel draws: emitted tokens at position 0 follow the warped target
    (chi-square, false alarm 1e-4 per case)."""
    for temperature, top_k, top_p, with_draft in STAT_CASES:
        n, k, v = 40_000, 2, 6
        gen = torch.Generator().manual_seed(123)
        target = torch.randn(k + 1, v, generator=gen) * 1.5
        draft = target[:k] + torch.randn(k, v, generator=gen)
        q = torch.stack([warped(draft[j], temperature, top_k, top_p) for j in range(k)]).float()
        if with_draft:
            tokens = torch.multinomial(q, n, replacement=True, generator=gen).t().contiguous()
            dl = draft.expand(n, k, v).contiguous().cuda()
        else:
            tokens, dl = torch.tensor([[0, 3]]).expand(n, k).contiguous(), None
        tl = target.expand(n, k + 1, v).contiguous().cuda()
        out, _ = S.accept_tokens(tokens.cuda(), tl, dl, temperature, top_k, top_p,
                                 generator=2024, backend=gpu_backend)
        p = warped(target[0], temperature, top_k, top_p)
        assert chi_square_p(out[:, 0].cpu().numpy(), p) > P_VALUE


@pytest.mark.gpu
def test_gpu_bad_logits_are_refused(gpu_backend):
    """The logits contract on a device: the same ValueError as on the CPU, for a row the test
    never reaches too."""
    tokens, target, dl, _ = make_inputs(3, 3, 300, seed=1)
    target[2, 3, 17] = float("nan")
    with pytest.raises(ValueError, match=r"target_logits row \(batch 2, position 3\) holds NaN"):
        S.accept_tokens(tokens.cuda(), target.cuda(), dl.cuda(), generator=0,
                        backend=gpu_backend)


@pytest.mark.gpu
@pytest.mark.parametrize("omega", S.OMEGAS)
def test_gpu_accept_steps(gpu_backend, omega):
    gen = torch.Generator().manual_seed(1)
    rewards = torch.rand(1001, generator=gen, dtype=torch.float64)
    u = 1.0 - torch.rand(1001, generator=gen, dtype=torch.float64)
    acc, w = S.accept_steps(rewards.cuda(), 0.6, omega, uniforms=u.cuda(), backend=gpu_backend)
    ref_acc, ref_w = S.accept_steps_reference(rewards, 0.6, omega, uniforms=u)
    assert torch.equal(acc.cpu(), ref_acc)
    torch.testing.assert_close(w.cpu(), ref_w, rtol=1e-12, atol=0)
    a = S.accept_steps(rewards.cuda(), 0.6, omega, generator=4, backend=gpu_backend)
    assert torch.equal(a[0], S.accept_steps(rewards.cuda(), 0.6, omega, generator=4,
                                            backend=gpu_backend)[0])


def test_cuda_default_is_provisionally_triton(monkeypatch):
    """Both GPU backends have kernels; with nothing forced CUDA tensors go to Triton until a
    measured GPU run says otherwise (KERNELS.cuda_default), and a forced 'cuda' is honoured (a
    GPU with _cuda and Triton is faked)."""
    _backend._cached_status("cpu")  # load the real statuses, then fake the GPU ones
    for name in ("cuda", "triton"):
        monkeypatch.setitem(_backend._STATUS, name,
                            _backend.BackendStatus(name, True, "", ("cuda",)))
    monkeypatch.delenv("PONDER_BACKEND", raising=False)
    gpu = torch.device("cuda")
    for op in ("accept_tokens", "accept_steps"):
        assert _backend.resolve(op, gpu, None, S.KERNELS) == "triton"
        assert _backend.resolve(op, gpu, "cuda", S.KERNELS) == "cuda"
    # Without Triton, the CUDA kernel is the default: the order falls through, never fails.
    monkeypatch.setitem(_backend._STATUS, "triton",
                        _backend.BackendStatus("triton", False, "not installed", ()))
    assert _backend.resolve("accept_tokens", gpu, None, S.KERNELS) == "cuda"


def test_custom_op_compiles_without_graph_break():
    """The registered op traces into one graph (its fake gives the shapes) and matches eager."""
    torch._dynamo.reset()
    tokens, target, dl, (au, ru) = make_inputs(3, 2, 13, seed=4)
    seeds = torch.zeros(3, dtype=torch.int64)

    def f(tokens, target, dl, au, ru):
        out, n = torch.ops.ponder.accept_tokens(tokens, target, dl, 1.0, None, None, au, ru,
                                                seeds, False, "cpu")
        return out * 2, n + 1

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got, want = compiled(tokens, target, dl, au, ru), f(tokens, target, dl, au, ru)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# --------------------------------------------------------------------------------------------
# The contract on non-finite logits: -inf is a masked token; NaN, +inf, a row with no finite
# logit and a largest logit that overflows float32 at the temperature are errors on every backend.
# --------------------------------------------------------------------------------------------


def _poison(logits, kind):
    out = logits.clone()
    if kind == "nan":
        out[1, 2, 4] = float("nan")
    elif kind == "+inf":
        out[1, 2, 4] = float("inf")
    elif kind == "all -inf":
        out[1, 2] = float("-inf")
    elif kind == "huge":
        out[1, 2, 4] = 1e38
    return out


NONFINITE = [("nan", "holds NaN"), ("+inf", r"holds \+inf"), ("all -inf", "has no finite logit")]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("kind,match", NONFINITE)
@pytest.mark.parametrize("which", ["target_logits", "draft_logits"])
def test_accept_tokens_refuses_nonfinite_logits(which, kind, match, temperature, cpu_backend):
    args = _good()
    if which == "draft_logits" and kind != "all -inf":
        args[which][1, 2, 4] = float("nan") if kind == "nan" else float("inf")
    else:
        args[which] = _poison(args[which], kind)
    with pytest.raises(ValueError, match=rf"{which} row \(batch 1, position 2\) {match}"):
        S.accept_tokens(**args, temperature=temperature, generator=0, backend=cpu_backend)


def test_accept_tokens_refuses_logits_that_overflow_at_the_temperature(cpu_backend):
    args = _good()
    args["target_logits"] = _poison(args["target_logits"], "huge")
    S.accept_tokens(**args, temperature=1.0, generator=0, backend=cpu_backend)  # 1e38: finite
    with pytest.raises(ValueError, match="overflows float32 when divided by temperature 0.01"):
        S.accept_tokens(**args, temperature=0.01, generator=0, backend=cpu_backend)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_accept_tokens_masked_tokens_are_never_emitted(dtype, temperature, cpu_backend):
    # Half of each row masked with -inf (a top-k / grammar mask): equal to the reference, and no
    # masked token is ever kept or drawn.
    _skip_triton_bf16(cpu_backend, dtype)
    _tokens, target, dl, (au, ru) = make_inputs(4, 3, 37, dtype=torch.float64, seed=3)
    mask = torch.rand(4, 1, 37, generator=torch.Generator().manual_seed(1)) < 0.5
    mask[..., 0] = False  # every row keeps a token
    target = target.masked_fill(mask, float("-inf")).to(dtype)
    dl = dl.masked_fill(mask, float("-inf")).to(dtype)
    tokens = torch.multinomial(torch.softmax(dl.double().reshape(-1, 37), -1), 1,
                               generator=torch.Generator().manual_seed(2)).reshape(4, 3)
    uni = None if temperature == 0 else (au, ru)
    out, n = S.accept_tokens(tokens, target, dl, temperature, uniforms=uni, backend=cpu_backend)
    ref, ref_n = S.accept_tokens_reference(tokens, target, dl, temperature,
                                           accept_uniforms=au, race_uniforms=ru)
    assert torch.equal(out, ref) and torch.equal(n, ref_n)
    for b in range(4):
        assert not mask[b, 0, out[b, : int(n[b]) + 1]].any()


def _rejected_at_position_zero(b=3, k=4, v=13):
    """Inputs whose test rejects every row at position 0 (the draft token 0 is masked in the
    target, so p = 0 and it is not the argmax): the kernels never read rows 1.. in the test."""
    tokens, target, dl, uni = make_inputs(b, k, v, dtype=torch.float64, seed=4)
    tokens = torch.zeros_like(tokens)
    target[:, 0, 0] = float("-inf")
    return tokens, target, dl, uni


def _refusal(backend, tokens, target, dl, temperature, uni):
    with pytest.raises(ValueError) as err:
        S.accept_tokens(tokens, target, dl, temperature, uniforms=uni,
                        generator=None if uni else 3, backend=backend)
    return str(err.value)


@pytest.mark.parametrize("temperature,exact", [(0.0, False), (0.8, True), (0.8, False)],
                         ids=["greedy", "uniforms", "generator"])
def test_accept_tokens_refuses_bad_rows_the_test_never_reads(temperature, exact, cpu_backend):
    # The contract covers every row, so that a refusal depends on the inputs alone: bad rows
    # after each row's first rejection (and draft rows, which greedy never reads) are refused,
    # the first target row before any draft row, then by (batch, position); the message is the
    # torch backend's, word for word.
    tokens, target, dl, uni = _rejected_at_position_zero()
    uni = uni if exact else None
    ok = S.accept_tokens(tokens, target, dl, temperature, uniforms=uni,
                         generator=None if exact else 3, backend=cpu_backend)
    assert bool((ok[1] == 0).all())  # every row rejects at position 0
    cases = [
        # (poisoned target rows, poisoned draft rows, expected tensor, batch, position)
        ([(1, 3), (2, 1)], [(0, 2)], "target_logits", 1, 3),
        ([(2, 4), (2, 1)], [], "target_logits", 2, 1),
        ([], [(2, 0), (0, 3), (0, 2)], "draft_logits", 0, 2),
    ]
    for t_rows, d_rows, name, b, j in cases:
        t, d = target.clone(), dl.clone()
        for bb, jj in t_rows:
            t[bb, jj, 5] = float("nan")
        for bb, jj in d_rows:
            d[bb, jj, 7] = float("inf")
        msg = _refusal(cpu_backend, tokens, t, d, temperature, uni)
        assert f"{name} row (batch {b}, position {j})" in msg, msg
        assert msg == _refusal("torch", tokens, t, d, temperature, uni)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_accept_tokens_refuses_float64_logits_beyond_float32(temperature, cpu_backend):
    # The kernels compute in float32: a float64 logit that rounds to +-inf there is refused even
    # when greedy, and named with its value.
    tokens, target, dl, _uni = make_inputs(2, 3, 11, dtype=torch.float64)
    target[1, 2, 4] = 1e300
    with pytest.raises(ValueError, match=r"target_logits row \(batch 1, position 2\) has a "
                                         r"largest logit 1e\+300 that overflows float32"):
        S.accept_tokens(tokens, target, dl, temperature, generator=0, backend=cpu_backend)
    target[1, 2, 4] = 3e38  # fits float32: legal
    S.accept_tokens(tokens, target, dl, temperature, generator=0, backend=cpu_backend)


def test_accept_tokens_reference_keeps_the_contract():
    tokens, target, dl, (au, ru) = make_inputs(2, 3, 11)
    target[0, 1] = float("-inf")
    with pytest.raises(ValueError, match=r"accept_tokens_reference: target_logits row "
                                         r"\(batch 0, position 1\) has no finite logit"):
        S.accept_tokens_reference(tokens, target, dl, 1.0, accept_uniforms=au, race_uniforms=ru)


@pytest.mark.parametrize("omega", S.OMEGAS)
def test_accept_steps_infinite_rewards_take_omega_limits(omega, cpu_backend):
    rewards = torch.tensor([float("inf"), float("-inf"), 0.5], dtype=torch.float64)
    u = torch.tensor([0.999, 1e-9, 0.5], dtype=torch.float64)
    acc, w = S.accept_steps(rewards, 0.6, omega, uniforms=u, backend=cpu_backend)
    want = {"binary": [1.0, 0.0], "constant": [0.6, 0.6], "clipping": [1.0, 0.0],
            "sigmoid": [1.0, 0.0]}[omega]
    assert w[:2].tolist() == want
    ref_acc, ref_w = S.accept_steps_reference(rewards, 0.6, omega, uniforms=u)
    assert torch.equal(acc, ref_acc) and torch.allclose(w, ref_w, rtol=1e-12, atol=0)


def test_accept_steps_refuses_nan_rewards(cpu_backend):
    rewards = torch.tensor([0.2, float("nan"), float("nan")])
    with pytest.raises(ValueError, match=r"accept_steps: rewards\[1\] is NaN"):
        S.accept_steps(rewards, 0.5, generator=0, backend=cpu_backend)
    with pytest.raises(ValueError, match=r"rewards\[1\] is NaN"):
        S.accept_steps_reference(rewards, 0.5, uniforms=torch.full((3,), 0.5))
