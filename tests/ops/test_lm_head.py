"""ponder.ops.lm_head: every op against its full-logits reference on every backend that runs here
(dtypes, odd sizes, several chunks, non-contiguous inputs, masks, empty inputs), gradients
(float64 gradcheck, and against the reference's autograd), top-k ties, FIRST's loss by hand and
its c = 1 limit, opcheck, torch.compile, and the error paths."""

from __future__ import annotations

import math

import pytest
import torch
from ponder import _backend
from ponder.ops import lm_head as L
from ponder.ops._common import launch_native

# (N, V, H): single token / word, odd sizes, more tokens and vocabulary rows than one block
# (the tests use blocks of 5 tokens x 16 rows unless they say otherwise).
SIZES = [(1, 1, 1), (7, 7, 64), (7, 97, 97), (97, 97, 1), (1, 97, 64)]
SMALL = {"chunk_tokens": 5, "chunk_vocab": 16}
# Every size in float32; the other dtypes at one size with several blocks each way.
CASES = [(size, torch.float32) for size in SIZES] + [
    ((7, 97, 97), dtype) for dtype in (torch.float64, torch.float16, torch.bfloat16)]
_case_id = lambda c: f"N{c[0][0]}-V{c[0][1]}-H{c[0][2]}-{str(c[1]).removeprefix('torch.')}"


def _tol(dtype: torch.dtype) -> dict:
    # Backends and the reference read the same stored inputs and compute in float32 (float64):
    # they differ by summation order only (the blocked matrix products, the online sums).
    return {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-4}


def _grad_tol(dtype: torch.dtype) -> dict:
    # Gradients are returned in the input's dtype: one rounding to 8 (bf16) / 11 (fp16) bits.
    return {
        torch.float64: {"rtol": 1e-9, "atol": 1e-9},
        torch.float32: {"rtol": 2e-4, "atol": 2e-5},
        torch.float16: {"rtol": 2e-3, "atol": 2e-4},
        torch.bfloat16: {"rtol": 2e-2, "atol": 2e-3},
    }[dtype]


def _skip_unsupported(backend: str, dtype: torch.dtype, size=None) -> dict:
    """Skip what the backend cannot run here; return the block sizes to test with."""
    if backend != "triton" or not _backend.triton_interpreted():
        return SMALL
    if dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")
    # The interpreter runs each program in Python: many tokens only in float32, in few blocks.
    if size is not None and size[0] * size[1] > 100 and dtype != torch.float32:
        pytest.skip("slow in the Triton interpreter; float32 covers this size")
    return {"chunk_tokens": 64, "chunk_vocab": 64}


def _make(n, v, h, dtype=torch.float32, *, seed=0, bias=True, ref_width=None):
    """hidden [N, H], weight [V, H] (logits O(1)), bias [V], targets [N], mask [N] and a
    reference model's hidden [N, H_ref] / weight [V, H_ref]."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * (2.0 / math.sqrt(h))).to(dtype)
    b = torch.randn(v, generator=gen).to(dtype) if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    mask = torch.rand(n, generator=gen) > 0.25
    hr = ref_width or h
    ref_hidden = torch.randn(n, hr, generator=gen).to(dtype)
    ref_weight = (torch.randn(v, hr, generator=gen) * (2.0 / math.sqrt(hr))).to(dtype)
    return hidden, weight, b, targets, mask, ref_hidden, ref_weight


def _teacher(hidden, weight, k, seed=1):
    """A teacher's top-k (ids, log-probabilities) from another head on the same hidden states."""
    gen = torch.Generator().manual_seed(seed)
    other = weight.double() + 0.3 * torch.randn(weight.shape, generator=gen, dtype=torch.float64)
    top = L.topk_logprobs_reference(hidden.double(), other, k)
    return top.ids, top.logprobs.to(torch.float32)


def _leaves(*ts):
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in ts]


def _grads(out, inputs):
    inputs = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, inputs, allow_unused=True)


# --------------------------------------------------------------------------------------------
# Against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_token_logprobs_matches_reference(cpu_backend, case):
    size, dtype = case
    chunks = _skip_unsupported(cpu_backend, dtype, size)
    hidden, weight, bias, targets, mask, *_ = _make(*size, dtype)
    targets[0] = -100  # ignore_index
    h, w, b = _leaves(hidden, weight, bias)
    lp, ent = L.token_logprobs(h, w, targets, b, temperature=0.8, mask=mask, with_entropy=True,
                               backend=cpu_backend, **chunks)
    hr, wr, br = _leaves(hidden, weight, bias)
    rl, re = L.token_logprobs_reference(hr, wr, targets, br, temperature=0.8, mask=mask,
                                        with_entropy=True)
    assert lp.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(lp, rl, **_tol(dtype))
    torch.testing.assert_close(ent, re, **_tol(dtype))
    skipped = ~mask | (targets == -100)
    assert bool((lp[skipped] == 0).all()) and bool((ent[skipped] == 0).all())
    assert bool((lp <= 1e-6).all()) and bool((ent >= -1e-5).all())
    # Gradients of a combination of both outputs, against the reference's autograd.
    gen = torch.Generator().manual_seed(3)
    c1, c2 = torch.randn(2, size[0], generator=gen, dtype=lp.dtype)
    ours = _grads((c1 * lp + c2 * ent).sum(), [h, w, b])
    ref = _grads((c1 * rl + c2 * re).sum(), [hr, wr, br])
    for a, r in zip(ours, ref, strict=True):
        assert a.dtype == r.dtype
        torch.testing.assert_close(a, r, **_grad_tol(dtype))
    assert bool((ours[0][skipped] == 0).all())  # skipped rows get no gradient


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_kl_to_reference_matches_reference(cpu_backend, case):
    size, dtype = case
    chunks = _skip_unsupported(cpu_backend, dtype, size)
    hidden, weight, bias, _, mask, rh, rw = _make(*size, dtype, ref_width=5)
    h, w, b = _leaves(hidden, weight, bias)
    kl = L.kl_to_reference(h, w, rh, rw, b, temperature=1.3, mask=mask, backend=cpu_backend,
                           **chunks)
    hr, wr, br = _leaves(hidden, weight, bias)
    ref = L.kl_to_reference_reference(hr, wr, rh, rw, br, temperature=1.3, mask=mask)
    torch.testing.assert_close(kl, ref, **_tol(dtype))
    assert bool((kl >= -1e-5).all()) and bool((kl[~mask] == 0).all())
    ours = _grads(kl.sum(), [h, w, b])
    want = _grads(ref.sum(), [hr, wr, br])
    for a, r in zip(ours, want, strict=True):
        torch.testing.assert_close(a, r, **_grad_tol(dtype))


def test_kl_is_zero_against_itself(cpu_backend):
    hidden, weight, bias, *_ = _make(7, 97, 13)
    kl = L.kl_to_reference(hidden, weight, hidden, weight, bias, bias, backend=cpu_backend,
                           **SMALL)
    torch.testing.assert_close(kl, torch.zeros(7), atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_topk_logprobs_matches_reference(cpu_backend, case):
    size, dtype = case
    chunks = _skip_unsupported(cpu_backend, dtype, size)
    hidden, weight, bias, _, mask, *_ = _make(*size, dtype)
    k = min(5, size[1])
    out = L.topk_logprobs(hidden, weight, k, bias, temperature=0.7, mask=mask,
                          backend=cpu_backend, **chunks)
    ref = L.topk_logprobs_reference(hidden, weight, k, bias, temperature=0.7, mask=mask)
    assert out.ids.dtype == torch.int64 and out.ids.shape == (size[0], k)
    assert torch.equal(out.ids, ref.ids)
    torch.testing.assert_close(out.logprobs, ref.logprobs, **_tol(dtype))
    torch.testing.assert_close(out.mass, ref.mass, **_tol(dtype))
    kept = out.logprobs[mask]
    assert bool((kept[:, 1:] <= kept[:, :-1]).all())  # descending
    assert bool((out.mass[mask] <= 1 + 1e-5).all())
    assert bool((out.ids[~mask] == -1).all()) and bool((out.mass[~mask] == 0).all())


@pytest.mark.parametrize("other_bucket", [False, True])
@pytest.mark.parametrize("case", CASES[1:], ids=_case_id)
def test_topk_distill_loss_matches_reference(cpu_backend, case, other_bucket):
    size, dtype = case
    chunks = _skip_unsupported(cpu_backend, dtype, size)
    hidden, weight, bias, _, mask, *_ = _make(*size, dtype)
    k = min(5, size[1] - 1)
    ids, lps = _teacher(hidden, weight, k)
    h, w, b = _leaves(hidden, weight, bias)
    hr, wr, br = _leaves(hidden, weight, bias)
    for reduction in L.REDUCTIONS:
        loss = L.topk_distill_loss(h, w, ids, lps, 0.6, other_bucket, reduction, bias=b,
                                   temperature=1.1, mask=mask, backend=cpu_backend, **chunks)
        ref = L.topk_distill_loss_reference(hr, wr, ids, lps, 0.6, br, other_bucket=other_bucket,
                                            reduction=reduction, temperature=1.1, mask=mask)
        torch.testing.assert_close(loss, ref, **_tol(dtype))
        ours = _grads(loss.sum(), [h, w, b])
        want = _grads(ref.sum(), [hr, wr, br])
        for a, r in zip(ours, want, strict=True):
            torch.testing.assert_close(a, r, **_grad_tol(dtype))


def test_large_vocabulary(cpu_backend):
    """V = 32003: many default-size vocabulary blocks, a partial last one."""
    if cpu_backend == "triton":
        pytest.skip("slow in the interpreter; the block logic is covered at small sizes")
    hidden, weight, bias, targets, mask, rh, rw = _make(7, 32003, 64, ref_width=64)
    lp = L.token_logprobs(hidden, weight, targets, bias, mask=mask, backend=cpu_backend)
    torch.testing.assert_close(lp, L.token_logprobs_reference(hidden, weight, targets, bias,
                                                              mask=mask), **_tol(torch.float32))
    kl = L.kl_to_reference(hidden, weight, rh, rw, bias, backend=cpu_backend)
    torch.testing.assert_close(kl, L.kl_to_reference_reference(hidden, weight, rh, rw, bias),
                               **_tol(torch.float32))
    top = L.topk_logprobs(hidden, weight, 8, bias, backend=cpu_backend)
    ref = L.topk_logprobs_reference(hidden, weight, 8, bias)
    assert torch.equal(top.ids, ref.ids)
    torch.testing.assert_close(top.mass, ref.mass, **_tol(torch.float32))
    loss = L.topk_distill_loss(hidden, weight, ref.ids, ref.logprobs, 0.5, True, bias=bias,
                               backend=cpu_backend)
    torch.testing.assert_close(
        loss, L.topk_distill_loss_reference(hidden, weight, ref.ids, ref.logprobs, 0.5, bias,
                                            other_bucket=True), **_tol(torch.float32))


@pytest.mark.parametrize("chunks", [(1, 1), (3, 7), (1000, 1000)])
def test_block_size_does_not_change_results(chunks):
    hidden, weight, bias, targets, *_ = _make(11, 53, 9, torch.float64)
    kw = {"chunk_tokens": chunks[0], "chunk_vocab": chunks[1], "backend": "cpu"}
    lp = L.token_logprobs(hidden, weight, targets, bias, **kw)
    torch.testing.assert_close(lp, L.token_logprobs_reference(hidden, weight, targets, bias))
    top = L.topk_logprobs(hidden, weight, 6, bias, **kw)
    assert torch.equal(top.ids, L.topk_logprobs_reference(hidden, weight, 6, bias).ids)


@pytest.mark.parametrize("layout", ["transposed", "sliced"])
def test_non_contiguous_inputs(cpu_backend, layout):
    gen = torch.Generator().manual_seed(5)
    n, v, h = 7, 97, 13
    if layout == "transposed":
        hidden = torch.randn(h, n, generator=gen).T
        weight = torch.randn(h, v, generator=gen).T * 0.5
    else:
        hidden = torch.randn(n + 3, h + 4, generator=gen)[2 : n + 2, 1 : h + 1]
        weight = (torch.randn(2 * v, h + 2, generator=gen) * 0.5)[::2, :h]
    bias = torch.randn(2 * v, generator=gen)[::2]
    targets = torch.randint(0, v, (2 * n,), generator=gen)[::2]
    assert not hidden.is_contiguous() and not weight.is_contiguous()
    hc, wc, bc, tc = (t.contiguous() for t in (hidden, weight, bias, targets))
    lp = L.token_logprobs(hidden, weight, targets, bias, backend=cpu_backend, **SMALL)
    torch.testing.assert_close(lp, L.token_logprobs_reference(hc, wc, tc, bc))
    kl = L.kl_to_reference(hidden, weight, hidden, weight.flip(0), backend=cpu_backend, **SMALL)
    torch.testing.assert_close(kl, L.kl_to_reference_reference(hc, wc, hc, wc.flip(0)))
    top = L.topk_logprobs(hidden, weight, 4, bias, backend=cpu_backend, **SMALL)
    ref = L.topk_logprobs_reference(hc, wc, 4, bc)
    assert torch.equal(top.ids, ref.ids)
    ids = torch.stack([ref.ids[:, 0], ref.ids[:, 2]], 1)[:, :]  # non-contiguous teacher rows
    lps = ref.logprobs[:, ::2][:, :2]
    loss = L.topk_distill_loss(hidden, weight, ids, lps, bias=bias, backend=cpu_backend, **SMALL)
    torch.testing.assert_close(loss, L.topk_distill_loss_reference(hc, wc, ids.contiguous(),
                                                                   lps.contiguous(), 1.0, bc))


def test_all_masked_and_empty(cpu_backend):
    hidden, weight, bias, targets, _, rh, rw = _make(7, 11, 5)
    none = torch.zeros(7, dtype=torch.bool)
    h, w, b = _leaves(hidden, weight, bias)
    lp, ent = L.token_logprobs(h, w, targets, b, mask=none, with_entropy=True,
                               backend=cpu_backend)
    assert bool((lp == 0).all()) and bool((ent == 0).all())
    gh, gw, gb = _grads((lp + ent).sum(), [h, w, b])
    assert bool((gh == 0).all()) and bool((gw == 0).all()) and bool((gb == 0).all())
    assert bool((L.token_logprobs(hidden, weight, torch.full((7,), -100), backend=cpu_backend)
                 == 0).all())
    assert bool((L.kl_to_reference(hidden, weight, rh, rw, mask=none, backend=cpu_backend)
                 == 0).all())
    top = L.topk_logprobs(hidden, weight, 3, mask=none, backend=cpu_backend)
    assert bool((top.ids == -1).all()) and bool(top.logprobs.isneginf().all())
    ids = torch.full((7, 3), -1)  # skipped rows are not read, so not checked either
    loss = L.topk_distill_loss(h, w, ids, torch.zeros(7, 3), reduction="mean", bias=b,
                               mask=none, backend=cpu_backend)
    assert float(loss.detach()) == 0.0
    assert all(bool((g == 0).all()) for g in _grads(loss, [h, w, b]))
    # N = 0.
    e = torch.empty(0, 5)
    et = torch.empty(0, dtype=torch.int64)
    assert L.token_logprobs(e, weight, et, backend=cpu_backend).shape == (0,)
    assert L.kl_to_reference(e, weight, e, weight, backend=cpu_backend).shape == (0,)
    top = L.topk_logprobs(e, weight, 2, backend=cpu_backend)
    assert top.ids.shape == (0, 2) and top.mass.shape == (0,)
    assert float(L.topk_distill_loss(e, weight, torch.empty(0, 2, dtype=torch.int64),
                                     torch.empty(0, 2), backend=cpu_backend)) == 0.0
    eg = e.clone().requires_grad_(True)
    L.token_logprobs(eg, w, et, backend=cpu_backend).sum().backward()
    assert eg.grad.shape == (0, 5)


# --------------------------------------------------------------------------------------------
# Top-k ties, FIRST's loss by hand
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_vocab", [1, 2, 3, 100])
def test_topk_ties_keep_the_smaller_id(cpu_backend, chunk_vocab):
    """Equal logits come out smaller id first, and a tie at the k-th place takes the smaller id,
    whatever the block boundaries."""
    logits = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 0.0, 2.0],
                           [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
                           [0.0, 1.0, 2.0, 2.0, 1.0, 2.0, 4.0]])
    hidden = torch.eye(3, dtype=torch.float64)
    weight = logits.T.double().contiguous()  # z = hidden @ weight.T = logits
    want = {2: [[1, 2], [0, 1], [6, 2]], 4: [[1, 2, 4, 3], [0, 1, 2, 3], [6, 2, 3, 5]]}
    for k, ids in want.items():
        top = L.topk_logprobs(hidden, weight, k, chunk_vocab=chunk_vocab, chunk_tokens=2,
                              backend=cpu_backend)
        assert top.ids.tolist() == ids
        ref = L.topk_logprobs_reference(hidden, weight, k)
        assert torch.equal(top.ids, ref.ids)
        torch.testing.assert_close(top.logprobs, ref.logprobs)


def test_topk_distill_loss_by_hand(cpu_backend):
    """Three tokens, H = 1, V = 4, k = 2: the loss written out with math.log / math.exp."""
    hidden = torch.tensor([[1.0], [2.0], [-0.5]], dtype=torch.float64)
    weight = torch.tensor([[1.0], [0.0], [-1.0], [0.5]], dtype=torch.float64)
    ids = torch.tensor([[0, 3], [3, 1], [2, 1]])
    lps = torch.tensor([[-0.2, -2.0], [-0.5, -1.5], [-0.1, -3.0]], dtype=torch.float64)
    c = 0.5
    z = [[h * w for w in (1.0, 0.0, -1.0, 0.5)] for h in (1.0, 2.0, -0.5)]

    def by_hand(other: bool) -> float:
        total = 0.0
        for t in range(3):
            a = [z[t][i] for i in ids[t].tolist()]
            tl = lps[t].tolist()
            if other:
                tl = tl + [math.log(1.0 - sum(math.exp(x) for x in tl))]
                lse_full = math.log(sum(math.exp(x) for x in z[t]))
                q = [math.exp(x - lse_full) for x in a]
                q = q + [1.0 - sum(q)]
            else:
                q = [math.exp(x) / sum(math.exp(y) for y in a) for x in a]
            p = [math.exp(x / c) for x in tl]
            p = [x / sum(p) for x in p]
            total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q, strict=True))
        return total

    for other in (False, True):
        loss = L.topk_distill_loss(hidden, weight, ids, lps, c, other, backend=cpu_backend)
        assert abs(float(loss) - by_hand(other)) < 1e-12
        mean = L.topk_distill_loss(hidden, weight, ids, lps, c, other, "mean",
                                   backend=cpu_backend)
        assert abs(float(mean) - by_hand(other) / 3) < 1e-12  # over tokens, not the batch


def test_topk_distill_at_c1_is_the_forward_kl_on_the_ids(cpu_backend):
    """c = 1, no other bucket: KL(teacher renormalised on its k ids || student renormalised on
    the same ids), each computed from its full softmax."""
    hidden, weight, bias, *_ = _make(7, 97, 13, torch.float64)
    teacher_w = weight + 0.3
    top = L.topk_logprobs_reference(hidden, teacher_w, 5)
    loss = L.topk_distill_loss(hidden, weight, top.ids, top.logprobs, 1.0, reduction="none",
                               bias=bias, backend=cpu_backend)
    p_t = top.logprobs.exp()
    p_t = p_t / p_t.sum(1, keepdim=True)
    q = torch.softmax(hidden @ weight.T + bias, -1).gather(1, top.ids)
    q = q / q.sum(1, keepdim=True)
    torch.testing.assert_close(loss, (p_t * (p_t.log() - q.log())).sum(1))


def test_teacher_with_all_mass_on_top_k_other_bucket():
    """A teacher whose top-k holds all the mass: its other bucket is empty (P'_o = 0) and the
    loss is finite, with finite gradients."""
    hidden, weight, *_ = _make(3, 11, 4, torch.float64)
    ids = torch.tensor([[0, 1], [2, 3], [4, 5]])
    lps = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]], dtype=torch.float64))
    h = hidden.clone().requires_grad_(True)
    loss = L.topk_distill_loss(h, weight, ids, lps, 0.7, True, backend="cpu")
    ref = L.topk_distill_loss_reference(hidden, weight, ids, lps, 0.7, other_bucket=True)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert bool(h.grad.isfinite().all())


# --------------------------------------------------------------------------------------------
# Gradients in float64, the custom op contract, compile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_gradcheck(backend):
    hidden, weight, bias, targets, mask, rh, rw = _make(4, 9, 3, torch.float64, ref_width=2)
    mask[1] = False
    kw = {"backend": backend, "chunk_tokens": 3, "chunk_vocab": 4}
    ids = torch.tensor([[0, 5, 2], [1, 2, 3], [8, 7, 6], [4, 0, 3]])
    lps = torch.log(torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.3, 0.3], [0.6, 0.3, 0.05],
                                  [0.2, 0.2, 0.2]], dtype=torch.float64))
    fns = {
        "token_logprobs": lambda h, w, b: L.token_logprobs(
            h, w, targets, b, temperature=0.7, mask=mask, with_entropy=True, **kw),
        "kl_to_reference": lambda h, w, b: L.kl_to_reference(
            h, w, rh, rw, b, temperature=1.2, mask=mask, **kw),
        "distill": lambda h, w, b: L.topk_distill_loss(
            h, w, ids, lps, 0.6, False, "none", bias=b, temperature=0.9, mask=mask, **kw),
        "distill_other": lambda h, w, b: L.topk_distill_loss(
            h, w, ids, lps, 0.6, True, "none", bias=b, temperature=0.9, mask=mask, **kw),
    }
    for name, fn in fns.items():
        args = tuple(t.clone().requires_grad_(True) for t in (hidden, weight, bias))
        assert torch.autograd.gradcheck(fn, args), name


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])
def test_opcheck(backend):
    if not _backend.available_backends()[backend].available:
        pytest.skip(f"{backend} is not available")
    from torch.library import opcheck

    hidden, weight, bias, targets, mask, rh, rw = _make(5, 13, 4, ref_width=3)
    top = L.topk_logprobs_reference(hidden, weight + 0.1, 3)
    leaves = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    # The interpreter is slow: schema and fake only for Triton.
    kw = {"test_utils": ("test_schema", "test_faketensor")} if backend == "triton" else {}
    cases = [
        (torch.ops.ponder.token_logprobs,
         (*leaves, targets, mask, 0.9, -100, True, 4, 5, backend)),
        (torch.ops.ponder.kl_to_reference, (*leaves, rh, rw, None, mask, 1.1, 4, 5, backend)),
        (torch.ops.ponder.topk_logprobs, (hidden, weight, bias, mask, 3, 1.0, 4, 5, backend)),
        (torch.ops.ponder.topk_distill_loss,
         (*leaves, top.ids, top.logprobs, mask, 1.0, 0.5, True, 4, 5, backend)),
        (torch.ops.ponder.topk_distill_loss,
         (*leaves, top.ids, top.logprobs, None, 1.0, 0.5, False, 4, 5, backend)),
    ]
    for op, args in cases:
        opcheck(op, args, **kw)


def test_torch_compile_fullgraph():
    hidden, weight, bias, targets, mask, rh, rw = _make(7, 29, 8)
    top = L.topk_logprobs_reference(hidden, weight + 0.2, 4)

    def f(h, w, b):
        lp = L.token_logprobs(h, w, targets, b, mask=mask, backend="cpu")
        kl = L.kl_to_reference(h, w, rh, rw, b, mask=mask, backend="cpu")
        loss = L.topk_distill_loss(h, w, top.ids, top.logprobs, 0.5, True, "mean", bias=b,
                                   mask=mask, backend="cpu")
        t = L.topk_logprobs(h, w, 3, b, backend="cpu")
        return lp.sum() + kl.sum() + loss + t.mass.sum()

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    args = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    want_args = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    got, want = compiled(*args), f(*want_args)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    for a, b in zip(args, want_args, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


def test_default_backend_on_cpu_is_cpu(monkeypatch):
    monkeypatch.delenv("PONDER_BACKEND", raising=False)
    for op in ("token_logprobs", "kl_to_reference", "topk_logprobs", "topk_distill_loss"):
        assert _backend.resolve(op, torch.device("cpu"), None, L.KERNELS) == "cpu"


# --------------------------------------------------------------------------------------------
# Errors, raised before any kernel runs
# --------------------------------------------------------------------------------------------


def _base():
    hidden, weight, bias, targets, mask, rh, rw = _make(3, 10, 4)
    ids = torch.tensor([[0, 1], [2, 3], [4, 5]])
    lps = torch.log(torch.tensor([[0.5, 0.3]] * 3))
    return {"hidden": hidden, "weight": weight, "bias": bias, "targets": targets, "mask": mask,
            "ref_hidden": rh, "ref_weight": rw, "teacher_ids": ids, "teacher_logprobs": lps}


def _call(fn, over):
    a = _base()
    a.update(over)
    if fn == "token_logprobs":
        keys = ("hidden", "weight", "targets", "bias")
        extra = ("temperature", "mask", "ignore_index", "with_entropy", "chunk_tokens",
                 "chunk_vocab", "backend")
    elif fn == "kl_to_reference":
        keys = ("hidden", "weight", "ref_hidden", "ref_weight", "bias")
        extra = ("temperature", "mask", "chunk_tokens", "chunk_vocab", "backend", "ref_bias")
    elif fn == "topk_logprobs":
        keys = ("hidden", "weight")
        a.setdefault("k", 2)
        extra = ("k", "bias", "temperature", "mask", "chunk_tokens", "chunk_vocab", "backend")
    else:
        keys = ("hidden", "weight", "teacher_ids", "teacher_logprobs")
        extra = ("temperature_c", "other_bucket", "reduction", "bias", "temperature", "mask",
                 "chunk_tokens", "chunk_vocab", "backend")
    return getattr(L, fn)(*(a[k] for k in keys), **{k: a[k] for k in extra if k in a})


ALL = ["token_logprobs", "kl_to_reference", "topk_logprobs", "topk_distill_loss"]
COMMON_ERRORS = [
    ({"hidden": torch.randn(3, 4, 1)}, ValueError, "hidden must have 2 dimensions"),
    ({"hidden": torch.zeros(3, 4, dtype=torch.int64)}, TypeError, "hidden must have dtype"),
    ({"hidden": [[1.0]]}, TypeError, "hidden must be a torch.Tensor"),
    ({"weight": torch.randn(10, 5)}, ValueError, "weight must have shape \\[V, H\\] with H = "),
    ({"weight": torch.randn(0, 4)}, ValueError, "empty vocabulary"),
    ({"weight": torch.randn(10, 4, device="meta")}, ValueError, "weight is on meta"),
    ({"bias": torch.randn(9)}, ValueError, "bias must have shape \\(10,\\)"),
    ({"mask": torch.ones(3)}, TypeError, "mask must have dtype bool"),
    ({"mask": torch.ones(4, dtype=torch.bool)}, ValueError, "mask must have shape"),
    ({"temperature": 0.0}, ValueError, "temperature must be > 0"),
    ({"temperature": float("nan")}, ValueError, "temperature must be finite"),
    ({"chunk_tokens": -1}, ValueError, "chunk_tokens must be an integer >= 1"),
    ({"chunk_vocab": 2.5}, TypeError, "chunk_vocab must be an integer"),
    ({"backend": "nope"}, ValueError, "backend"),
    ({"backend": "cuda"}, _backend.BackendUnavailableError, "no CUDA C\\+\\+ kernel"),
]


@pytest.mark.parametrize("over, exc, match", COMMON_ERRORS)
@pytest.mark.parametrize("fn", ALL)
def test_common_errors(fn, over, exc, match):
    with pytest.raises(exc, match=f"{fn}: .*{match}" if exc is not _backend.BackendUnavailableError
                       else match):
        _call(fn, over)


@pytest.mark.parametrize(
    "fn, over, exc, match",
    [
        ("token_logprobs", {"targets": torch.zeros(3, dtype=torch.int32)}, TypeError, "targets"),
        ("token_logprobs", {"targets": torch.zeros(4, dtype=torch.int64)}, ValueError, "targets"),
        ("token_logprobs", {"targets": torch.tensor([0, 10, 1]), "mask": None}, ValueError,
         "targets\\[1\\] = 10 is outside \\[0, V = 10\\)"),
        ("token_logprobs", {"targets": torch.tensor([0, -5, 1]), "mask": None}, ValueError,
         "targets\\[1\\] = -5"),
        ("token_logprobs", {"with_entropy": 1}, TypeError, "with_entropy must be a bool"),
        ("token_logprobs", {"ignore_index": 1.5}, TypeError, "ignore_index"),
        ("kl_to_reference", {"ref_hidden": torch.randn(2, 4)}, ValueError, "ref_hidden"),
        ("kl_to_reference", {"ref_weight": torch.randn(9, 4)}, ValueError, "ref_weight"),
        ("kl_to_reference", {"ref_weight": torch.randn(10, 3)}, ValueError,
         "ref_weight must have shape \\[V, H\\]"),
        ("kl_to_reference", {"ref_bias": torch.randn(3)}, ValueError, "ref_bias"),
        ("topk_logprobs", {"k": 0}, ValueError, "k must be an integer in \\[1, 10\\]"),
        ("topk_logprobs", {"k": 11}, ValueError, "k must be an integer in \\[1, 10\\]"),
        ("topk_logprobs", {"k": True}, TypeError, "k must be"),
        ("topk_distill_loss", {"teacher_ids": torch.tensor([[0, 1], [2, 3]])}, ValueError,
         "teacher_ids must have shape \\[N = 3, k >= 1\\]"),
        ("topk_distill_loss", {"teacher_ids": torch.zeros(3, 2)}, TypeError, "teacher_ids"),
        ("topk_distill_loss", {"teacher_logprobs": torch.zeros(3, 3)}, ValueError,
         "teacher_logprobs must have shape"),
        ("topk_distill_loss", {"teacher_ids": torch.tensor([[0, 1], [2, 10], [4, 5]]),
                               "mask": None}, ValueError,
         "teacher_ids\\[1, 1\\] = 10 is outside \\[0, V = 10\\)"),
        ("topk_distill_loss", {"teacher_ids": torch.tensor([[0, 1], [2, -1], [4, 5]]),
                               "mask": None}, ValueError, "teacher_ids\\[1, 1\\] = -1"),
        ("topk_distill_loss", {"teacher_ids": torch.tensor([[0, 1], [3, 3], [4, 5]]),
                               "mask": None}, ValueError, "teacher_ids\\[1\\] repeats an id"),
        ("topk_distill_loss", {"teacher_logprobs": torch.tensor([[0.5, -1.0]] * 3),
                               "mask": None}, ValueError, "not a log-probability"),
        ("topk_distill_loss", {"teacher_logprobs": torch.tensor([[float("nan"), -1.0]] * 3),
                               "mask": None}, ValueError, "not a log-probability"),
        ("topk_distill_loss", {"teacher_logprobs": torch.full((3, 2), float("-inf")),
                               "mask": None}, ValueError, "all -inf"),
        ("topk_distill_loss", {"teacher_logprobs": torch.log(torch.tensor([[0.7, 0.6]] * 3)),
                               "other_bucket": True, "mask": None}, ValueError,
         "holds probability 1.3 > 1"),
        ("topk_distill_loss", {"temperature_c": 0}, ValueError, "temperature_c must be > 0"),
        ("topk_distill_loss", {"other_bucket": "yes"}, TypeError, "other_bucket must be a bool"),
        ("topk_distill_loss", {"reduction": "batchmean"}, ValueError, "reduction must be one of"),
    ],
)
def test_op_errors(fn, over, exc, match):
    with pytest.raises(exc, match=f"{fn}: .*{match}"):
        _call(fn, over)


def test_masked_rows_are_not_checked():
    """A skipped token's target / teacher row is never read, so it may hold anything."""
    mask = torch.tensor([True, False, True])
    _call("token_logprobs", {"targets": torch.tensor([0, 99, 1]), "mask": mask})
    _call("topk_distill_loss", {"teacher_ids": torch.tensor([[0, 1], [7, 7], [4, 5]]),
                                "mask": mask})


def test_native_rechecks_buffers():
    """The C++ launchers check every buffer's element count against the block's shape."""
    z = torch.randn(3, 4)
    vec = [torch.zeros(3) for _ in range(2)]
    m, s = vec
    fwd = L.KERNELS.kernel("token_logprobs", "cpu")
    bwd = L.KERNELS.kernel("chunk_backward", "cpu")
    code = _backend.DTYPE_CODES[torch.float32]
    with pytest.raises(ValueError, match="z has 12 elements, expected 15"):
        launch_native("cpu", fwd, [z, None, None, m, s, None, None, None, None, None, None], 3, 5, 0, 0,
                      code)
    with pytest.raises(ValueError, match="m has 2 elements, expected 3"):
        launch_native("cpu", fwd, [z, None, None, m[:2], s, None, None, None, None, None, None], 3, 4,
                      0, 0, code)
    with pytest.raises(ValueError, match="best_vals and best_ids are needed exactly when k > 0"):
        launch_native("cpu", fwd, [z, None, None, m, s, None, None, None, None, None, None], 3, 4, 2,
                      0, code)
    with pytest.raises(ValueError, match="float32 or float64"):
        launch_native("cpu", fwd, [z, None, None, m, s, None, None, None, None, None, None], 3, 4, 0,
                      0, _backend.DTYPE_CODES[torch.bfloat16])
    with pytest.raises(ValueError, match="targets and delta go together"):
        launch_native("cpu", bwd, [z, None, m, s, None, None, torch.zeros(3, dtype=torch.int64), None],
                      3, 4, 0, code)


# --------------------------------------------------------------------------------------------
# GPU (skipped here; `pytest -m gpu` on a CUDA machine)
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_gpu_matches_reference(dtype):
    hidden, weight, bias, targets, mask, rh, rw = (
        t.cuda() for t in _make(97, 32003, 256, dtype))
    lp, ent = L.token_logprobs(hidden, weight, targets, bias, mask=mask, with_entropy=True,
                               backend="triton")
    rl, re = L.token_logprobs_reference(hidden, weight, targets, bias, mask=mask,
                                        with_entropy=True)
    torch.testing.assert_close(lp, rl, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(ent, re, rtol=1e-3, atol=1e-3)
    top = L.topk_logprobs(hidden, weight, 5, bias, backend="triton")
    ref = L.topk_logprobs_reference(hidden, weight, 5, bias)
    torch.testing.assert_close(top.logprobs, ref.logprobs, rtol=1e-3, atol=1e-3)
    kl = L.kl_to_reference(hidden, weight, rh, rw, bias, backend="triton")
    torch.testing.assert_close(kl, L.kl_to_reference_reference(hidden, weight, rh, rw, bias),
                               rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------------------------
# The fused scalar losses (gradient computed in the forward)
# --------------------------------------------------------------------------------------------


def _fused_chunks(backend: str, dtype: torch.dtype, size) -> dict:
    chunks = _skip_unsupported(backend, dtype, size)
    # Blocks of whole vocabulary rows: several token blocks; chunk_vocab matters for 16-bit
    # weights only (the per-block float32 conversion).
    return {"chunk_tokens": 3 if chunks is SMALL else 64, "chunk_vocab": chunks["chunk_vocab"]}


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_token_logprobs_sum_matches_reference(cpu_backend, case, reduction):
    size, dtype = case
    chunks = _fused_chunks(cpu_backend, dtype, size)
    hidden, weight, bias, targets, mask, *_ = _make(*size, dtype)
    targets[0] = -100
    gen = torch.Generator().manual_seed(5)
    wts = torch.randn(size[0], generator=gen).to(dtype)
    h, w, b = _leaves(hidden, weight, bias)
    loss = L.token_logprobs_sum(h, w, targets, wts, b, temperature=0.8, mask=mask,
                                reduction=reduction, backend=cpu_backend, **chunks)
    hr, wr, br = _leaves(hidden, weight, bias)
    per = L.token_logprobs_reference(hr, wr, targets, br, temperature=0.8, mask=mask)
    ref = (per * wts.to(per.dtype)).sum()
    kept = (mask & (targets != -100)).sum()
    if reduction == "mean":
        ref = ref / kept.clamp(min=1)
    assert loss.shape == () and loss.dtype == per.dtype
    torch.testing.assert_close(loss, ref, **_tol(dtype))
    # Backward with an incoming gradient other than 1 (scaled in place) and with 1.
    for scale in (2.5, 1.0):
        h, w, b = _leaves(hidden, weight, bias)
        loss = L.token_logprobs_sum(h, w, targets, wts, b, temperature=0.8, mask=mask,
                                    reduction=reduction, backend=cpu_backend, **chunks)
        ours = _grads(scale * loss, [h, w, b])
        hr, wr, br = _leaves(hidden, weight, bias)
        per = L.token_logprobs_reference(hr, wr, targets, br, temperature=0.8, mask=mask)
        ref = (per * wts.to(per.dtype)).sum() / (kept.clamp(min=1) if reduction == "mean" else 1)
        want = _grads(scale * ref, [hr, wr, br])
        for a, r in zip(ours, want, strict=True):
            assert a.dtype == r.dtype and a.shape == r.shape
            torch.testing.assert_close(a, r, **_grad_tol(dtype))


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_kl_to_reference_sum_matches_reference(cpu_backend, case):
    size, dtype = case
    chunks = _fused_chunks(cpu_backend, dtype, size)
    hidden, weight, bias, _, mask, rh, rw = _make(*size, dtype, ref_width=5)
    gen = torch.Generator().manual_seed(6)
    wts = torch.rand(size[0], generator=gen)
    rb = torch.randn(size[1], generator=gen).to(dtype)
    for reduction in ("sum", "mean"):
        h, w, b = _leaves(hidden, weight, bias)
        loss = L.kl_to_reference_sum(h, w, rh, rw, wts, b, rb, temperature=1.3, mask=mask,
                                     reduction=reduction, backend=cpu_backend, **chunks)
        hr, wr, br = _leaves(hidden, weight, bias)
        per = L.kl_to_reference_reference(hr, wr, rh, rw, br, rb, temperature=1.3, mask=mask)
        ref = (per * wts.to(per.dtype)).sum()
        if reduction == "mean":
            ref = ref / mask.sum().clamp(min=1)
        torch.testing.assert_close(loss, ref, **_tol(dtype))
        ours = _grads(0.5 * loss, [h, w, b])
        want = _grads(0.5 * ref, [hr, wr, br])
        for a, r in zip(ours, want, strict=True):
            torch.testing.assert_close(a, r, **_grad_tol(dtype))


def test_fused_losses_default_block_and_frozen_inputs(cpu_backend):
    """The default block (whole rows, budget-sized), no weights, and gradients asked of some
    inputs only (a frozen head: hidden only; a frozen body: weight only), or none (no_grad)."""
    if cpu_backend == "triton":
        pytest.skip("slow in the interpreter; covered by the sized tests")
    hidden, weight, bias, targets, mask, rh, rw = _make(9, 301, 16)
    want_lp = L.token_logprobs_reference(hidden, weight, targets).sum()
    want_kl = L.kl_to_reference_reference(hidden, weight, rh, rw).sum()
    with torch.no_grad():
        h = hidden.clone().requires_grad_(True)
        got = L.token_logprobs_sum(h, weight, targets, backend=cpu_backend)
        assert not got.requires_grad
    torch.testing.assert_close(got, want_lp)
    h = hidden.clone().requires_grad_(True)
    kl = L.kl_to_reference_sum(h, weight, rh, rw, backend=cpu_backend)
    torch.testing.assert_close(kl, want_kl)
    (gh,) = torch.autograd.grad(kl, [h])
    hr = hidden.clone().requires_grad_(True)
    torch.testing.assert_close(
        gh, torch.autograd.grad(L.kl_to_reference_reference(hr, weight, rh, rw).sum(), [hr])[0])
    w = weight.clone().requires_grad_(True)
    lp = L.token_logprobs_sum(hidden, w, targets, backend=cpu_backend)
    (gw,) = torch.autograd.grad(lp, [w])
    wr = weight.clone().requires_grad_(True)
    torch.testing.assert_close(
        gw, torch.autograd.grad(L.token_logprobs_reference(hidden, wr, targets).sum(), [wr])[0],
        rtol=2e-4, atol=2e-5)


def test_fused_losses_all_masked_and_empty(cpu_backend):
    hidden, weight, bias, targets, mask, rh, rw = _make(4, 11, 3)
    none = torch.zeros(4, dtype=torch.bool)
    for reduction in ("sum", "mean"):
        h, w = _leaves(hidden, weight)
        lp = L.token_logprobs_sum(h, w, targets, mask=none, reduction=reduction,
                                  backend=cpu_backend)
        kl = L.kl_to_reference_sum(h, w, rh, rw, mask=none, reduction=reduction,
                                   backend=cpu_backend)
        assert float(lp.detach()) == 0 and float(kl.detach()) == 0
        gh, gw = _grads(lp + kl, [h, w])
        assert bool((gh == 0).all()) and bool((gw == 0).all())
    h, w = _leaves(hidden[:0], weight)
    lp = L.token_logprobs_sum(h, w, targets[:0], backend=cpu_backend)
    assert float(lp.detach()) == 0
    gh, gw = _grads(lp, [h, w])
    assert gh.shape == (0, 3) and bool((gw == 0).all())


def test_fused_loss_backward_once():
    """The backward scales the stored gradient in place: a second backward through the same
    graph is refused (loudly), not silently wrong."""
    hidden, weight, bias, targets, *_ = _make(3, 7, 4)
    w = weight.clone().requires_grad_(True)
    loss = 3.0 * L.token_logprobs_sum(hidden, w, targets, backend="cpu")
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_gradcheck_fused(backend):
    hidden, weight, bias, targets, mask, rh, rw = _make(4, 9, 3, torch.float64, ref_width=2)
    mask[1] = False
    targets[2] = -100
    wts = torch.tensor([0.5, -1.0, 2.0, 1.5], dtype=torch.float64)
    kw = {"backend": backend, "chunk_tokens": 2, "chunk_vocab": 4}
    ids = torch.tensor([[0, 5, 2], [1, 2, 3], [8, 7, 6], [4, 0, 3]])
    lps = torch.log(torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.3, 0.3], [0.6, 0.3, 0.05],
                                  [0.2, 0.2, 0.2]], dtype=torch.float64))
    fns = {
        "token_logprobs_sum": lambda h, w, b: L.token_logprobs_sum(
            h, w, targets, wts, b, temperature=0.7, mask=mask, reduction="mean", **kw),
        "kl_to_reference_sum": lambda h, w, b: L.kl_to_reference_sum(
            h, w, rh, rw, wts, b, temperature=1.2, mask=mask, **kw),
        "distill_other_sum": lambda h, w, b: L.topk_distill_loss(
            h, w, ids, lps, 0.6, True, "sum", bias=b, temperature=0.9, mask=mask, **kw),
        "distill_other_mean": lambda h, w, b: L.topk_distill_loss(
            h, w, ids, lps, 0.6, True, "mean", bias=b, temperature=0.9, mask=mask, **kw),
    }
    for name, fn in fns.items():
        args = tuple(t.clone().requires_grad_(True) for t in (hidden, weight, bias))
        assert torch.autograd.gradcheck(fn, args), name


def test_opcheck_fused():
    from torch.library import opcheck

    hidden, weight, bias, targets, mask, rh, rw = _make(5, 13, 4, ref_width=3)
    top = L.topk_logprobs_reference(hidden, weight + 0.1, 3)
    # Negative weights make the log-probability loss positive: opcheck backpropagates
    # sum(|outputs|), and an incoming gradient of 1 leaves the stored gradients (also outputs
    # of the op, compared afterwards) unscaled; the public functions return the loss only.
    wts = -torch.rand(5)
    h, w, b = (t.clone().requires_grad_(True) for t in (hidden, weight, bias))
    common = (mask, 0.9, 0.5, -100)
    cases = [
        ("logprob", h, w, b, None, None, None, targets, None, None, wts, *common, True, 2, 4,
         "cpu", True, True, True),
        ("kl", h, w, None, rh, rw, None, None, None, None, None, *common, False, 2, 4, "cpu",
         True, False, False),
        ("distill_other", h, w, b, None, None, None, None, top.ids, top.logprobs, None,
         *common, False, 0, 4, "cpu", False, True, True),
    ]
    for args in cases:
        opcheck(torch.ops.ponder.lm_head_fused_loss, args)


def test_fused_losses_compile_fullgraph():
    hidden, weight, bias, targets, mask, rh, rw = _make(7, 29, 8)

    def f(h, w, b):
        return (L.token_logprobs_sum(h, w, targets, None, b, mask=mask, backend="cpu")
                + 0.1 * L.kl_to_reference_sum(h, w, rh, rw, bias=b, mask=mask,
                                              reduction="mean", backend="cpu"))

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    args = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    want_args = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    got, want = compiled(*args), f(*want_args)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    for a, b in zip(args, want_args, strict=True):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize(
    "fn, call, exc, match",
    [
        ("token_logprobs_sum", lambda a: L.token_logprobs_sum(
            a["hidden"], a["weight"], a["targets"], torch.ones(4)), ValueError,
         "weights must have shape"),
        ("token_logprobs_sum", lambda a: L.token_logprobs_sum(
            a["hidden"], a["weight"], a["targets"], torch.ones(3, dtype=torch.int64)),
         TypeError, "weights must have dtype"),
        ("token_logprobs_sum", lambda a: L.token_logprobs_sum(
            a["hidden"], a["weight"], a["targets"], torch.ones(3, requires_grad=True)),
         TypeError, "weights requires grad"),
        ("token_logprobs_sum", lambda a: L.token_logprobs_sum(
            a["hidden"], a["weight"], a["targets"], reduction="none"), ValueError,
         "reduction must be one of \\('sum', 'mean'\\)"),
        ("token_logprobs_sum", lambda a: L.token_logprobs_sum(
            a["hidden"], a["weight"], torch.tensor([0, 10, 1])), ValueError,
         "targets\\[1\\] = 10 is outside"),
        ("token_logprobs_sum", lambda a: L.token_logprobs_sum(
            a["hidden"], a["weight"], a["targets"], chunk_tokens=0), ValueError,
         "chunk_tokens must be an integer >= 1"),
        ("token_logprobs_sum", lambda a: L.token_logprobs_sum(
            a["hidden"], torch.randn(10, 5), a["targets"]), ValueError, "weight must have shape"),
        ("kl_to_reference_sum", lambda a: L.kl_to_reference_sum(
            a["hidden"], a["weight"], a["ref_hidden"][:2], a["ref_weight"]), ValueError,
         "ref_hidden"),
        ("kl_to_reference_sum", lambda a: L.kl_to_reference_sum(
            a["hidden"], a["weight"], a["ref_hidden"], a["ref_weight"], reduction="batchmean"),
         ValueError, "reduction must be one of"),
        ("kl_to_reference_sum", lambda a: L.kl_to_reference_sum(
            a["hidden"], a["weight"], a["ref_hidden"], a["ref_weight"], temperature=-1.0),
         ValueError, "temperature must be > 0"),
        ("kl_to_reference_sum", lambda a: L.kl_to_reference_sum(
            a["hidden"], a["weight"], a["ref_hidden"], a["ref_weight"], backend="nope"),
         ValueError, "backend"),
    ],
)
def test_fused_loss_errors(fn, call, exc, match):
    with pytest.raises(exc, match=f"{fn}: .*{match}"):
        call(_base())


def test_triton_tiled_kernels_match_reference(monkeypatch):
    """The Triton backend's tiled kernels (the logits product per tile with tl.dot, the
    online softmax fused; the backward's block gradient from the tiles) run for float32 and
    match the reference, at sizes with partial tiles each way (interpreter: 16 x 32 x 16)."""
    if not _backend.available_backends()["triton"].available:
        pytest.skip("triton is not available")
    calls: list[str] = []
    module = _backend.triton_kernels("lm_head")
    for name in ("lm_head_fused_forward", "lm_head_fused_backward", "lm_head_chunk_backward"):
        def spy(*args, _real=getattr(module, name), _name=name):
            calls.append(_name.removeprefix("lm_head_"))
            return _real(*args)

        monkeypatch.setattr(module, name, spy)
    hidden, weight, bias, targets, mask, rh, rw = _make(19, 77, 21, ref_width=9)
    kw = {"backend": "triton", "chunk_tokens": 16, "chunk_vocab": 40}
    h, w, b = _leaves(hidden, weight, bias)
    lp, ent = L.token_logprobs(h, w, targets, b, temperature=0.8, mask=mask,
                               with_entropy=True, **kw)
    kl = L.kl_to_reference(h, w, rh, rw, b, temperature=1.3, mask=mask, **kw)
    hr, wr, br = _leaves(hidden, weight, bias)
    rlp, rent = L.token_logprobs_reference(hr, wr, targets, br, temperature=0.8, mask=mask,
                                           with_entropy=True)
    rkl = L.kl_to_reference_reference(hr, wr, rh, rw, br, temperature=1.3, mask=mask)
    for got, want in ((lp, rlp), (ent, rent), (kl, rkl)):
        torch.testing.assert_close(got, want, rtol=2e-4, atol=2e-4)
    ours = _grads((lp + 0.5 * ent + 2.0 * kl).sum(), [h, w, b])
    want = _grads((rlp + 0.5 * rent + 2.0 * rkl).sum(), [hr, wr, br])
    for a, r in zip(ours, want, strict=True):
        torch.testing.assert_close(a, r, rtol=2e-4, atol=2e-5)
    # One forward launch per op; one backward launch per block (2 vocabulary blocks each).
    assert calls.count("fused_forward") == 2 and calls.count("fused_backward") == 4
    assert "chunk_backward" not in calls
