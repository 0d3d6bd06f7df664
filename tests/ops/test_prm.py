"""ponder.ops.prm: score_steps / step_logits against their references on every backend that runs
here, against the full-vocabulary logits computation, gradients (float64 gradcheck and against
the reference's own autograd), opcheck, and the error paths."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from ponder import _backend
from ponder.ops import prm

KINDS = ["two_label", "value"]
# (B, L, H, rows' step counts): single row and step, odd widths (1, 7, 97, 1536), ragged rows
# with zero-step rows, and more steps than one Triton tile (16).
CASES = [
    (1, 1, 1, [1]),
    (3, 9, 7, [2, 0, 9]),
    (7, 40, 97, [5, 1, 0, 17, 40, 3, 0]),
    (2, 33, 1536, [20, 7]),
]
FLOATS = ("scores", "min", "last", "product", "mean")


def _tol(dtype: torch.dtype) -> float:
    # Backends and the reference both read the same (low-precision) inputs and accumulate in
    # float32 (float64); they differ only by the summation order of the dot products.
    return 1e-12 if dtype == torch.float64 else 2e-5


def _skip_unsupported(backend: str, dtype: torch.dtype) -> None:
    if backend == "triton" and dtype == torch.bfloat16 and _backend.triton_interpreted():
        pytest.skip("the Triton interpreter has no bfloat16")


def _make(batch, length, width, counts, kind, dtype, *, seed=0, layout="contiguous"):
    """Random hidden states, head (logits O(1): weights ~ 1/sqrt(H)) and bias, and a step_index
    with ``counts[b]`` increasing random positions in row b (-1 padding)."""
    gen = torch.Generator().manual_seed(seed)
    if layout == "sliced":  # a window of a longer, wider buffer: row strides are not B/L/H's
        big = torch.randn(batch, length + 5, width + 3, generator=gen)
        hidden = big[:, 2 : length + 2, 1 : width + 1]
    elif layout == "transposed":  # innermost stride != 1
        hidden = torch.randn(batch, width, length, generator=gen).transpose(1, 2)
    else:
        hidden = torch.randn(batch, length, width, generator=gen)
    hidden = hidden.to(dtype)
    scale = 1.0 / math.sqrt(max(width, 1))
    head_shape = (2, width) if kind == "two_label" else (width,)
    head = torch.randn(head_shape, generator=gen) * scale
    bias = torch.randn(2 if kind == "two_label" else (), generator=gen)
    rows = [sorted(torch.randperm(length, generator=gen)[:c].tolist()) for c in counts]
    step_index = prm.pad_step_index(rows)
    return hidden, step_index, head, bias


def _assert_scores_close(out: prm.StepScores, ref: prm.StepScores, tol: float) -> None:
    assert torch.equal(out.num_steps, ref.num_steps)
    assert out.num_steps.dtype == torch.int64
    for name in FLOATS:
        a, b = getattr(out, name), getattr(ref, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=tol, atol=tol, equal_nan=True, msg=name)


# --------------------------------------------------------------------------------------------
# Against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-L{c[1]}-H{c[2]}")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_matches_reference(cpu_backend, case, kind, dtype):
    _skip_unsupported(cpu_backend, dtype)
    batch, length, width, counts = case
    if cpu_backend == "triton" and width > 100 and dtype != torch.float32:
        pytest.skip("the interpreter is slow; H=1536 is covered in float32")
    hidden, idx, head, bias = _make(batch, length, width, counts, kind, dtype)
    out = prm.score_steps(hidden, idx, head, bias, backend=cpu_backend)
    ref = prm.score_steps_reference(hidden, idx, head, bias)
    _assert_scores_close(out, ref, _tol(dtype))
    expect = torch.float64 if dtype == torch.float64 else torch.float32
    assert out.scores.dtype == expect
    # The documented conventions, on the backend's own output.
    valid = idx >= 0
    assert bool(out.scores[~valid].isnan().all()) and not bool(out.scores[valid].isnan().any())
    empty = out.num_steps == 0
    for name in FLOATS[1:]:
        agg = getattr(out, name)
        assert bool(agg[empty].isnan().all()) and not bool(agg[~empty].isnan().any())

    logits = prm.step_logits(hidden, idx, head, bias, backend=cpu_backend)
    ref_logits = prm.step_logits_reference(hidden, idx, head, bias)
    assert logits.shape == ((batch, idx.shape[1], 2) if kind == "two_label" else idx.shape)
    torch.testing.assert_close(logits, ref_logits, rtol=_tol(dtype), atol=_tol(dtype))
    pad = ~valid.unsqueeze(-1).expand_as(logits) if kind == "two_label" else ~valid
    assert bool((logits[pad] == 0).all())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_scores_propagate_like_the_reference(cpu_backend, kind, dtype):
    """A NaN step score makes the row's min, product and mean NaN (and its last, when it is the
    last step), as in the reference: the native min used to skip it (+inf for an all-NaN row),
    so an unscorable solution could win a best-of-N by min."""
    # Rows: NaN at a middle step, every step NaN, NaN at the first step, at the last step, in
    # the second 16-step Triton tile, no NaN (but NaN at a position that is not a step), empty.
    hidden, idx, head, bias = _make(7, 40, 7, [5, 3, 4, 4, 20, 6, 0], kind, dtype, seed=4)
    nan_steps = {0: [2], 1: [0, 1, 2], 2: [0], 3: [3], 4: [17]}
    for b, steps in nan_steps.items():
        for s in steps:
            hidden[b, idx[b, s], 3] = float("nan")
    hidden[5, sorted(set(range(40)) - set(idx[5].tolist()))[0], 0] = float("nan")
    out = prm.score_steps(hidden, idx, head, bias, backend=cpu_backend)
    ref = prm.score_steps_reference(hidden, idx, head, bias)
    _assert_scores_close(out, ref, _tol(dtype))
    any_nan = torch.tensor([True] * 5 + [False, True])  # the empty row: NaN by convention
    last_nan = torch.tensor([False, True, False, True, False, False, True])
    for name in ("min", "product", "mean"):
        assert torch.equal(getattr(out, name).isnan(), any_nan), name
    assert torch.equal(out.last.isnan(), last_nan)


@pytest.mark.parametrize("layout", ["sliced", "transposed"])
def test_non_contiguous_hidden(cpu_backend, layout):
    hidden, idx, head, bias = _make(3, 21, 97, [4, 0, 21], "two_label", torch.float32,
                                    layout=layout)
    assert not hidden.is_contiguous()
    out = prm.score_steps(hidden, idx, head, bias, backend=cpu_backend)
    ref = prm.score_steps_reference(hidden.contiguous(), idx, head, bias)
    _assert_scores_close(out, ref, _tol(torch.float32))
    # Non-contiguous step_index and head are fine too.
    idx_t = idx.T.contiguous().T
    head_t = head.T.contiguous().T
    out2 = prm.score_steps(hidden, idx_t, head_t, bias, backend=cpu_backend)
    _assert_scores_close(out2, ref, _tol(torch.float32))


def test_reference_by_hand():
    """The definition, on numbers worked out by hand: H = 1, two steps and one padding slot."""
    hidden = torch.tensor([[[1.0], [2.0], [-1.0]]])  # [1, 3, 1]
    head = torch.tensor([[2.0], [1.0]])  # z+ = 2h, z- = h -> score = sigmoid(h)
    idx = torch.tensor([[0, 2, -1]])
    r = prm.score_steps_reference(hidden, idx, head)
    s0, s1 = 1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(1.0))
    torch.testing.assert_close(r.scores[0, :2], torch.tensor([s0, s1]))
    assert math.isnan(r.scores[0, 2])
    torch.testing.assert_close(r.min, torch.tensor([s1]))
    torch.testing.assert_close(r.last, torch.tensor([s1]))
    torch.testing.assert_close(r.product, torch.tensor([s0 * s1]))
    torch.testing.assert_close(r.mean, torch.tensor([(s0 + s1) / 2]))
    assert r.num_steps.tolist() == [2]
    torch.testing.assert_close(
        prm.step_logits_reference(hidden, idx, head), torch.tensor([[[2.0, 1.0], [-2, -1], [0, 0]]])
    )


def test_value_head_bias_forms(cpu_backend):
    hidden, idx, head, _ = _make(2, 11, 7, [3, 2], "value", torch.float32)
    ref = prm.score_steps_reference(hidden, idx, head, torch.tensor(0.25))
    for bias in (0.25, torch.tensor(0.25), torch.tensor([0.25])):
        out = prm.score_steps(hidden, idx, head, bias, backend=cpu_backend)
        _assert_scores_close(out, ref, 1e-6)
    torch.testing.assert_close(
        prm.score_steps(hidden, idx, head, backend=cpu_backend).scores,
        torch.sigmoid(prm.step_logits_reference(hidden, idx, head)).where(idx >= 0, math.nan),
        equal_nan=True,
    )


def test_lengths(cpu_backend):
    hidden, idx, head, bias = _make(2, 10, 7, [3, 3], "two_label", torch.float32)
    lengths = idx.amax(1) + 1
    out = prm.score_steps(hidden, idx, head, bias, lengths=lengths, backend=cpu_backend)
    _assert_scores_close(out, prm.score_steps_reference(hidden, idx, head, bias), 2e-5)
    with pytest.raises(ValueError, match="lengths"):
        prm.score_steps(hidden, idx, head, bias, lengths=lengths - 1, backend=cpu_backend)


@pytest.mark.parametrize(
    "shape",
    [(0, 5, 7, 3), (3, 5, 7, 0), (2, 0, 7, 4), (2, 5, 0, 3)],
    ids=["no-rows", "no-steps", "no-positions", "zero-width"],
)
def test_empty(cpu_backend, shape):
    batch, length, width, steps = shape
    hidden = torch.randn(batch, length, width)
    idx = torch.full((batch, steps), -1, dtype=torch.int64)
    if length > 0 and steps > 0:
        idx[:, 0] = length - 1
    head = torch.randn(2, width)
    bias = torch.tensor([0.5, -0.5])
    out = prm.score_steps(hidden, idx, head, bias, backend=cpu_backend)
    ref = prm.score_steps_reference(hidden, idx, head, bias)
    _assert_scores_close(out, ref, 1e-6)
    assert out.scores.shape == (batch, steps) and out.min.shape == (batch,)
    logits = prm.step_logits(hidden, idx, head, bias, backend=cpu_backend)
    torch.testing.assert_close(logits, prm.step_logits_reference(hidden, idx, head, bias))
    if cpu_backend != "triton":
        from torch.library import opcheck

        for op in (torch.ops.ponder.score_steps, torch.ops.ponder.step_logits):
            opcheck(op, (hidden, idx, head, bias, cpu_backend),
                    test_utils=("test_schema", "test_faketensor"))


def test_thread_count_does_not_change_results(restore_threads):
    hidden, idx, head, bias = _make(8, 64, 300, [30] * 8, "two_label", torch.float32)
    torch.set_num_threads(1)
    one = prm.score_steps(hidden, idx, head, bias, backend="cpu")
    torch.set_num_threads(2)
    two = prm.score_steps(hidden, idx, head, bias, backend="cpu")
    for a, b in zip(one, two):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())


# --------------------------------------------------------------------------------------------
# Against the full-vocabulary computation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_full_vocabulary_logits(cpu_backend, dtype):
    """What a PRM does without ponder: ``lm_head`` over all positions, softmax over the whole
    vocabulary V, then read the two label tokens' probabilities p+ and p- at the step positions.
    Softmax's normaliser cancels in ``p+ / (p+ + p-)``, so that two-label-restricted probability
    equals the softmax over just the two label logits, which is what score_steps returns from
    the two lm_head rows alone. (p+ itself is smaller: it is scaled by the mass of the others.)"""
    vocab, pos_tok, neg_tok = 53, 17, 4
    hidden, idx, _, _ = _make(4, 30, 97, [6, 0, 30, 1], "two_label", dtype, seed=3)
    gen = torch.Generator().manual_seed(4)
    lm_head = (torch.randn(vocab, 97, generator=gen) / math.sqrt(97)).to(dtype)
    lm_bias = torch.randn(vocab, generator=gen).to(dtype)

    full = torch.softmax(hidden @ lm_head.T + lm_bias, dim=-1)  # [B, L, V]
    valid = idx >= 0
    b_idx, s_idx = valid.nonzero(as_tuple=True)
    p_pos = full[b_idx, idx[b_idx, s_idx], pos_tok]
    p_neg = full[b_idx, idx[b_idx, s_idx], neg_tok]

    head = lm_head[[pos_tok, neg_tok]]
    bias = lm_bias[[pos_tok, neg_tok]]
    out = prm.score_steps(hidden, idx, head, bias, backend=cpu_backend)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.scores[b_idx, s_idx], p_pos / (p_pos + p_neg), rtol=tol,
                               atol=tol)
    assert bool((p_pos <= out.scores[b_idx, s_idx] + tol).all())
    # The logits are the full logits' two label columns at the step positions.
    full_logits = hidden @ lm_head.T + lm_bias
    logits = prm.step_logits(hidden, idx, head, bias, backend=cpu_backend)
    want = full_logits[b_idx, idx[b_idx, s_idx]][:, [pos_tok, neg_tok]].to(logits.dtype)
    torch.testing.assert_close(logits[b_idx, s_idx], want, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------
# Gradients (the training path)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(backend, kind):
    hidden, idx, head, bias = _make(3, 9, 5, [3, 0, 4], kind, torch.float64, seed=5)
    hidden.requires_grad_(True)
    head = head.double().requires_grad_(True)
    bias = bias.double().requires_grad_(True)

    def logits(h, w, b):
        return prm.step_logits(h, idx, w, b, backend=backend)

    def scores(h, w, b):
        # NaN padding / empty-row outputs are constants: zero them so gradcheck can compare.
        return tuple(t.nan_to_num() for t in prm.score_steps(h, idx, w, b, backend=backend)[:5])

    assert torch.autograd.gradcheck(logits, (hidden, head, bias))
    assert torch.autograd.gradcheck(scores, (hidden, head, bias))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_match_reference_autograd(cpu_backend, dtype):
    """The registered backward against plain torch autograd through the reference, for a soft-
    label cross-entropy over the two label logits (ER-PRM's loss) and for the aggregates."""
    _skip_unsupported(cpu_backend, dtype)
    hidden, idx, head, bias = _make(3, 12, 33, [4, 0, 12], "two_label", dtype, seed=6)
    labels = torch.rand(idx.shape, generator=torch.Generator().manual_seed(7))
    valid = (idx >= 0).float()

    def loss_logits(fn):
        z = fn(hidden, idx, head, bias)
        logp = torch.log_softmax(z, -1)
        per_step = -(labels * logp[..., 0] + (1 - labels) * logp[..., 1])
        return (per_step * valid).sum()

    def loss_scores(fn):
        r = fn(hidden, idx, head, bias)
        s = r.scores.nan_to_num()
        return (s * labels).sum() + sum(
            getattr(r, n).nan_to_num().sum() * (k + 1) for k, n in enumerate(FLOATS[1:])
        )

    for loss, op, ref in [
        (loss_logits, prm.step_logits, prm.step_logits_reference),
        (loss_scores, prm.score_steps, prm.score_steps_reference),
    ]:
        grads = []
        for fn in (functools.partial(op, backend=cpu_backend), ref):
            for t in (hidden, head, bias):
                t.requires_grad_(True)
                t.grad = None
            loss(fn).backward()
            grads.append([t.grad.float() for t in (hidden, head, bias)])
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        for g_op, g_ref in zip(*grads):
            torch.testing.assert_close(g_op, g_ref, rtol=tol, atol=tol)
        # Only the step rows get a gradient.
        touched = grads[0][0].abs().sum(-1) > 0
        mask = torch.zeros_like(touched)
        for b, row in enumerate(idx.tolist()):
            mask[b, [p for p in row if p >= 0]] = True
        assert not bool((touched & ~mask).any())


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_opcheck(backend):
    """Every opcheck test on rows without padding; with padding, all but the AOT-dispatch one,
    whose comparison (of outputs, and of the gradient of their sum) treats NaN != NaN, and
    padded scores and empty rows' aggregates are NaN by design."""
    from torch.library import opcheck

    no_aot = ("test_schema", "test_autograd_registration", "test_faketensor")
    for kind in KINDS:
        for counts, utils in (([3, 3, 3], None), ([3, 0, 4], no_aot)):
            hidden, idx, head, bias = _make(3, 9, 5, counts, kind, torch.float32, seed=8)
            bias = bias.reshape(-1)
            hidden.requires_grad_(True)
            head.requires_grad_(True)
            kw = {} if utils is None else {"test_utils": utils}
            for op in (torch.ops.ponder.step_logits, torch.ops.ponder.score_steps):
                opcheck(op, (hidden, idx, head, bias, backend), **kw)
                opcheck(op, (hidden.detach(), idx, head.detach(), None, backend), **kw)


def test_opcheck_triton():
    if "triton" not in _backend.available_backends() or not (
        _backend.available_backends()["triton"].available
    ):
        pytest.skip("triton is not available")
    from torch.library import opcheck

    hidden, idx, head, bias = _make(2, 6, 5, [3, 0], "two_label", torch.float32, seed=9)
    opcheck(torch.ops.ponder.score_steps, (hidden, idx, head, bias, "triton"),
            test_utils=("test_schema", "test_faketensor"))


def test_torch_compile():
    hidden, idx, head, bias = _make(2, 8, 16, [3, 2], "two_label", torch.float32, seed=10)

    def f(h, w, b):
        return prm.score_steps(h, idx, w, b, backend="cpu").mean

    compiled = torch.compile(f, backend="eager", fullgraph=False)
    torch.testing.assert_close(compiled(hidden, head, bias), f(hidden, head, bias))


# --------------------------------------------------------------------------------------------
# pad_step_index
# --------------------------------------------------------------------------------------------


def test_pad_step_index():
    want = torch.tensor([[1, 4, 9], [0, -1, -1], [-1, -1, -1]])
    assert torch.equal(prm.pad_step_index([[1, 4, 9], [0], []]), want)
    packed = torch.tensor([1, 4, 9, 0])
    offsets = torch.tensor([0, 3, 4, 4])
    assert torch.equal(prm.pad_step_index(packed, offsets), want)
    assert prm.pad_step_index([]).shape == (0, 0)
    with pytest.raises(ValueError, match="offsets"):
        prm.pad_step_index(packed, torch.tensor([0, 3, 5]))
    with pytest.raises(TypeError, match="offsets"):
        prm.pad_step_index(packed)
    # Float offsets or positions are not indices (they used to reach torch's indexing).
    with pytest.raises(TypeError, match="offsets must have dtype int32 or int64"):
        prm.pad_step_index(packed, offsets.float())
    with pytest.raises(TypeError, match="positions must have dtype int32 or int64"):
        prm.pad_step_index(packed.double(), offsets)
    assert torch.equal(prm.pad_step_index(packed.int(), offsets.int()), want)


# --------------------------------------------------------------------------------------------
# Errors, raised before any kernel runs
# --------------------------------------------------------------------------------------------


def _args(**over):
    hidden, idx, head, bias = _make(2, 10, 7, [3, 2], "two_label", torch.float32)
    args = {"hidden": hidden, "step_index": idx, "head": head, "bias": bias}
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over, exc, match",
    [
        ({"hidden": torch.randn(10, 7)}, ValueError, "hidden must have 3 dimensions"),
        ({"hidden": torch.zeros(2, 10, 7, dtype=torch.int32)}, TypeError, "hidden must have"),
        ({"step_index": torch.zeros(2, 3, dtype=torch.int32)}, TypeError, "step_index"),
        ({"step_index": torch.zeros(3, 3, dtype=torch.int64)}, ValueError, "step_index"),
        ({"head": torch.randn(2, 6)}, ValueError, r"head for kind='two_label' must have shape"),
        ({"head": torch.randn(3, 7)}, ValueError, "head"),
        ({"head": torch.randn(7), "kind": "two_label"}, ValueError, "head"),
        ({"head": torch.randn(2, 7), "kind": "value"}, ValueError, "head"),
        ({"kind": "logits"}, ValueError, "kind"),
        ({"bias": torch.randn(3)}, ValueError, "bias"),
        ({"head": torch.randn(7), "bias": torch.randn(2)}, ValueError, "bias"),
        ({"head": torch.randn(7), "bias": "x"}, TypeError, "bias"),
        ({"step_index": torch.tensor([[0, 10], [1, -1]])}, ValueError, "out of range"),
        ({"step_index": torch.tensor([[0, -1, 3], [1, -1, -1]])}, ValueError, "after -1"),
        ({"step_index": torch.tensor([[4, 4], [1, -1]])}, ValueError, "strictly increase"),
        ({"step_index": torch.tensor([[5, 2], [1, -1]])}, ValueError, "strictly increase"),
        ({"step_index": torch.tensor([[-3, -1], [1, -1]])}, ValueError, "-1"),
        ({"step_index": torch.zeros(2, 1, dtype=torch.int64, device="meta")}, ValueError,
         "step_index is on meta"),
        ({"lengths": torch.tensor([10, 10, 10])}, ValueError, "lengths"),
        ({"backend": "nope"}, ValueError, "backend"),
    ],
)
@pytest.mark.parametrize("fn", [prm.score_steps, prm.step_logits])
def test_errors(fn, over, exc, match):
    with pytest.raises(exc, match=match):
        fn(**_args(**over))


def test_native_rechecks_positions():
    """The C++ launcher re-checks every position it reads, whatever the caller did."""
    hidden = torch.randn(1, 4, 3)
    head = torch.randn(2, 3)
    outs = prm._empty_scores(hidden, torch.zeros(1, 2, dtype=torch.int64))
    for bad, match in [([0, 4], "outside"), ([-1, 2], "after -1"), ([2, 1], "increase")]:
        idx = torch.tensor([bad])
        with pytest.raises(ValueError, match=match):
            prm._launch("score_steps", "cpu", hidden, idx, head, None, logits=None,
                        aggregates=outs)


# --------------------------------------------------------------------------------------------
# GPU (skipped here; `pytest -m gpu` on a CUDA machine)
# --------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["contiguous", "sliced"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_matches_reference(gpu_backend, dtype, kind, layout):
    hidden, idx, head, bias = _make(7, 300, 1536, [20, 0, 1, 300, 64, 5, 19], kind, dtype,
                                    layout=layout)
    hidden, idx, head, bias = (t.cuda() for t in (hidden, idx, head, bias))
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    out = prm.score_steps(hidden, idx, head, bias, backend=gpu_backend)
    _assert_scores_close(out, prm.score_steps_reference(hidden, idx, head, bias), tol)
    logits = prm.step_logits(hidden, idx, head, bias, backend=gpu_backend)
    torch.testing.assert_close(logits, prm.step_logits_reference(hidden, idx, head, bias),
                               rtol=tol, atol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_gpu_gradients_match_reference(gpu_backend, kind):
    """The registered backward runs on CUDA tensors whatever backend ran the forward."""
    hidden, idx, head, bias = _make(3, 50, 64, [5, 0, 7], kind, torch.float32)
    leaves = [t.cuda().requires_grad_() for t in (hidden, head, bias)]
    idx = idx.cuda()
    out = prm.score_steps(leaves[0], idx, leaves[1], leaves[2], backend=gpu_backend)
    loss = out.mean.nansum() + out.min.nansum() + prm.step_logits(
        leaves[0], idx, leaves[1], leaves[2], backend=gpu_backend).sum()
    got = torch.autograd.grad(loss, leaves)
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    ref = prm.score_steps(ref_leaves[0], idx, ref_leaves[1], ref_leaves[2], backend="torch")
    ref_loss = ref.mean.nansum() + ref.min.nansum() + prm.step_logits(
        ref_leaves[0], idx, ref_leaves[1], ref_leaves[2], backend="torch").sum()
    for g, r in zip(got, torch.autograd.grad(ref_loss, ref_leaves)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
