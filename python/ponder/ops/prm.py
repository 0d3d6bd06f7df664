"""Batched process-reward-model (PRM) scoring from hidden states at the step positions only.

A PRM scores every reasoning step from the last hidden state at one position per step (the tag
token after the step, or the step's last token). Two kinds of head (docs/prm.md, "PRM scoring"):

- ``"two_label"``: ``head: [2, H]`` = the LM-head rows of the positive and the negative label
  token (positive first), optional ``bias: [2]``. The step score is the positive probability of
  the softmax over those two logits, ``sigmoid(z+ - z-)`` (Math-Shepherd "+"/"-" at " ки",
  Qwen2.5-Math-PRM's two labels at "<extra_0>").
- ``"value"``: ``head: [H]`` (a value head, Skywork style), optional scalar ``bias``; the step
  score is ``sigmoid(h . head + bias)``.

Only the ``B * S`` hidden rows at step positions are read: the ``[B, L, V]`` (or ``[B, L, 2]``)
logits over all positions are never formed.

Step positions are a padded tensor ``step_index: [B, S]`` of int64: row ``b`` lists its steps'
positions in ``[0, L)``, strictly increasing, then ``-1`` padding to the right (ragged rows). A
packed list is turned into that form by :func:`pad_step_index`.

Conventions (chosen so that aggregates are never ambiguous):

- Scores and logits are float32 (float64 for float64 hidden states), whatever the input dtype.
- Padding: per-step scores are NaN, per-step logits are 0 (finite, so that a masked loss has
  finite gradients; mask with ``step_index >= 0``).
- Aggregates per row: ``min``, ``last``, ``product`` and ``mean`` over the row's steps, computed
  in the same pass; a row with zero steps has NaN for all four (no steps, no score: it cannot
  win a best-of-N by an empty product of 1) and ``num_steps = 0``.

Ops: :func:`score_steps` (scores + aggregates; differentiable w.r.t. hidden, head and bias) and
:func:`step_logits` (the logits at the step positions, for PRM training with a soft-label
cross-entropy; differentiable w.r.t. hidden, head and bias). Each has a plain-torch
``*_reference`` and is registered as a ``torch.library`` custom op ``ponder::<name>`` with a fake
and an autograd formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .. import _backend
from ..validation import check_tensor
from ._common import FLOAT_DTYPES, acc_dtype, call_op, choose_backend, launch_native

__all__ = [
    "StepScores",
    "aggregate_reference",
    "pad_step_index",
    "score_steps",
    "score_steps_reference",
    "step_logits",
    "step_logits_reference",
]

KINDS = ("two_label", "value")
# One fused kernel serves both ops (logits and/or the aggregates). On CUDA tensors the default is
# Triton, PROVISIONALLY: the CUDA C++ kernel is compiled but has never run, and neither has been
# timed on a GPU (bench/gpu_check.py measures both, issue 23); a measured run picks the faster one
# and records its figure here.
KERNELS = _backend.KernelTable(
    "prm",
    {
        op: {"cpu": "prm_steps", "cuda": "prm_steps", "triton": "prm_steps"}
        for op in ("score_steps", "step_logits")
    },
    cuda_default={"score_steps": "triton", "step_logits": "triton"},
)


class StepScores(NamedTuple):
    """The result of :func:`score_steps`.

    Attributes:
        scores: ``[B, S]`` per-step probabilities in [0, 1]; NaN at padding.
        min, last, product, mean: ``[B]`` aggregates over each row's steps; NaN for a row with
            zero steps.
        num_steps: ``[B]`` int64, the number of steps of each row.
    """

    scores: Tensor
    min: Tensor
    last: Tensor
    product: Tensor
    mean: Tensor
    num_steps: Tensor


# --------------------------------------------------------------------------------------------
# References: plain torch, math in float32 (float64 for float64 inputs). The definition.
# --------------------------------------------------------------------------------------------


def _gather_rows(hidden: Tensor, step_index: Tensor) -> Tensor:
    """``hidden[b, step_index[b, s]]`` as ``[B, S, H]``, zeros at padding; reads only those rows."""
    batch, length, width = hidden.shape
    steps = step_index.shape[1]
    if length == 0 or steps == 0:  # nothing to read: every position is padding
        return hidden.new_zeros(batch, steps, width)
    pos = step_index.clamp(min=0).unsqueeze(-1).expand(batch, steps, width)
    rows = torch.gather(hidden, 1, pos)
    return torch.where((step_index >= 0).unsqueeze(-1), rows, torch.zeros_like(rows))


def step_logits_reference(
    hidden: Tensor, step_index: Tensor, head: Tensor, bias: Tensor | None = None
) -> Tensor:
    """The head's logits at the step positions.

    Shapes: hidden ``[B, L, H]``, step_index ``[B, S]`` (-1 = padding), head ``[2, H]`` (two
    labels, positive first) or ``[H]`` (value head), bias ``[2]`` / ``[]`` or None.

    Returns:
        ``[B, S, 2]`` (two labels) or ``[B, S]`` (value head), float32 (float64 for float64
        hidden); 0 at padding.
    """
    acc = acc_dtype(hidden.dtype)
    rows = _gather_rows(hidden, step_index).to(acc)
    w = head.to(acc)
    if head.dim() == 2:
        logits = rows @ w.T  # [B, S, 2]
        if bias is not None:
            logits = logits + bias.to(acc)
        mask = (step_index >= 0).unsqueeze(-1)
    else:
        logits = rows @ w  # [B, S]
        if bias is not None:
            logits = logits + bias.to(acc).reshape(())
        mask = step_index >= 0
    return torch.where(mask, logits, torch.zeros_like(logits))


def aggregate_reference(scores: Tensor, step_index: Tensor) -> StepScores:
    """Per-row ``min``, ``last``, ``product`` and ``mean`` of ``scores: [B, S]`` over the valid
    steps (``step_index >= 0``, a prefix of each row); NaN for rows with zero steps."""
    valid = step_index >= 0
    n = valid.sum(1)
    nan = torch.full(n.shape, float("nan"), dtype=scores.dtype, device=scores.device)
    empty = n == 0
    inf = torch.full_like(scores, float("inf"))
    one = torch.ones_like(scores)
    zero = torch.zeros_like(scores)
    if scores.shape[1] == 0:
        return StepScores(scores, nan, nan.clone(), nan.clone(), nan.clone(), n)
    mins = torch.where(valid, scores, inf).amin(1)
    last = scores.gather(1, (n - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    prod = torch.where(valid, scores, one).prod(1)
    mean = torch.where(valid, scores, zero).sum(1) / n.clamp(min=1).to(scores.dtype)
    mins, last, prod, mean = (torch.where(empty, nan, a) for a in (mins, last, prod, mean))
    return StepScores(scores, mins, last, prod, mean, n)


def score_steps_reference(
    hidden: Tensor, step_index: Tensor, head: Tensor, bias: Tensor | None = None
) -> StepScores:
    """Per-step PRM scores and their per-row aggregates (see the module docstring).

    Two labels: ``sigmoid(z+ - z-)`` = the positive probability of ``softmax([z+, z-])``.
    Value head: ``sigmoid(z)``. NaN at padding.
    """
    logits = step_logits_reference(hidden, step_index, head, bias)
    diff = logits[..., 0] - logits[..., 1] if head.dim() == 2 else logits
    scores = torch.sigmoid(diff)
    scores = torch.where(step_index >= 0, scores, torch.full_like(scores, float("nan")))
    return aggregate_reference(scores, step_index)


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def _native_inputs(
    hidden: Tensor, step_index: Tensor, head: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """What the native kernels take: hidden with a unit innermost stride (any outer strides:
    never copied when its rows are dense), contiguous int64 positions, the head and bias as
    contiguous float32/float64 (tiny: 2 x H)."""
    acc = acc_dtype(hidden.dtype)
    if hidden.stride(-1) != 1 and hidden.shape[-1] > 1:
        hidden = hidden.contiguous()
    labels = head.shape[0] if head.dim() == 2 else 1
    head2 = head.to(acc).reshape(labels, hidden.shape[-1]).contiguous()  # [K, H]
    bias2 = None if bias is None else bias.to(acc).reshape(-1).contiguous()
    return hidden, step_index.contiguous(), head2, bias2


def _launch(
    op: str,
    backend: str,
    hidden: Tensor,
    step_index: Tensor,
    head: Tensor,
    bias: Tensor | None,
    *,
    logits: Tensor | None,
    aggregates: Sequence[Tensor] | None,
) -> None:
    """Fill ``logits [B, S, K]`` and/or ``aggregates`` (scores, min, last, product, mean,
    num_steps) with ``op``'s kernel on ``backend``."""
    hidden, step_index, head, bias = _native_inputs(hidden, step_index, head, bias)
    batch, length, width = hidden.shape
    steps = step_index.shape[1]
    k = head.shape[0]
    outs = [logits, *(aggregates if aggregates is not None else [None] * 6)]
    kernel = KERNELS.kernel(op, backend)
    if backend == "triton":
        kernel(*outs, hidden, step_index, head, bias)
        return
    code = _backend.DTYPE_CODES[hidden.dtype]
    launch_native(
        backend,
        kernel,
        [*outs, hidden, step_index, head, bias],
        batch,
        length,
        width,
        steps,
        k,
        hidden.stride(0),
        hidden.stride(1),
        code,
    )


def _step_logits_impl(
    hidden: Tensor, step_index: Tensor, head: Tensor, bias: Tensor | None, backend: str
) -> Tensor:
    if backend == "torch":
        return step_logits_reference(hidden, step_index, head, bias).contiguous()
    batch, _, _ = hidden.shape
    steps = step_index.shape[1]
    k = 2 if head.dim() == 2 else 1
    out = torch.empty(batch, steps, k, dtype=acc_dtype(hidden.dtype), device=hidden.device)
    if out.numel() > 0:
        _launch("step_logits", backend, hidden, step_index, head, bias, logits=out,
                aggregates=None)
    return out if head.dim() == 2 else out.squeeze(-1)


def _score_steps_impl(
    hidden: Tensor, step_index: Tensor, head: Tensor, bias: Tensor | None, backend: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    if backend == "torch":
        r = score_steps_reference(hidden, step_index, head, bias)
        return (r.scores.contiguous(), r.min, r.last, r.product, r.mean, r.num_steps)
    outs = _empty_scores(hidden, step_index)
    if hidden.shape[0] > 0:
        _launch("score_steps", backend, hidden, step_index, head, bias, logits=None,
                aggregates=outs)
    return outs


def _empty_scores(hidden: Tensor, step_index: Tensor) -> tuple[Tensor, ...]:
    batch, steps = step_index.shape
    acc = acc_dtype(hidden.dtype)
    dev = hidden.device
    return (
        torch.empty(batch, steps, dtype=acc, device=dev),
        *(torch.empty(batch, dtype=acc, device=dev) for _ in range(4)),
        torch.empty(batch, dtype=torch.int64, device=dev),
    )


_step_logits_op = torch.library.custom_op(
    "ponder::step_logits", _step_logits_impl, mutates_args=()
)
_score_steps_op = torch.library.custom_op(
    "ponder::score_steps", _score_steps_impl, mutates_args=()
)


@_step_logits_op.register_fake
def _(hidden, step_index, head, bias, backend):
    batch, steps = step_index.shape
    shape = (batch, steps, 2) if head.dim() == 2 else (batch, steps)
    return hidden.new_empty(shape, dtype=acc_dtype(hidden.dtype))


@_score_steps_op.register_fake
def _(hidden, step_index, head, bias, backend):
    return _empty_scores(hidden, step_index)


# ---- autograd: plain torch on the B x S gathered rows (cheap next to the forward's reads) -----


def _logits_backward(
    grad: Tensor, hidden: Tensor, step_index: Tensor, head: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Gradients of ``step_logits`` w.r.t. (hidden, head, bias) given ``grad`` like its output.

    ``logits[b, s, k] = rows[b, s] . head[k] + bias[k]`` with ``rows[b, s] = hidden[b, pos]``:
    the hidden gradient is ``grad @ head`` scattered back to the step positions (zero elsewhere).
    """
    acc = acc_dtype(hidden.dtype)
    valid = step_index >= 0
    two = head.dim() == 2
    g = grad.to(acc)
    g = torch.where(valid.unsqueeze(-1) if two else valid, g, torch.zeros_like(g))
    gk = g if two else g.unsqueeze(-1)  # [B, S, K]
    w = head.to(acc).reshape(gk.shape[-1], hidden.shape[-1])  # [K, H]
    rows = _gather_rows(hidden, step_index).to(acc)  # [B, S, H]
    grad_rows = gk @ w  # [B, S, H]
    # Scatter-add, not index_put_ on the valid entries: no data-dependent shapes, so the backward
    # traces under torch.compile. Padding entries add a zero row to position 0.
    grad_hidden = torch.zeros(hidden.shape, dtype=acc, device=hidden.device)
    if hidden.shape[1] > 0 and step_index.shape[1] > 0:
        pos = step_index.clamp(min=0).unsqueeze(-1).expand_as(grad_rows)
        grad_hidden.scatter_add_(1, pos, grad_rows)
    grad_hidden = grad_hidden.to(hidden.dtype)
    grad_head = torch.einsum("bsk,bsh->kh", gk, rows).reshape(head.shape).to(head.dtype)
    grad_bias = None
    if bias is not None:
        grad_bias = gk.sum((0, 1)).reshape(bias.shape).to(bias.dtype)
    return grad_hidden, grad_head, grad_bias


def _setup_context(ctx, inputs, output):
    hidden, step_index, head, bias, _backend_name = inputs
    ctx.save_for_backward(hidden, step_index, head, bias)


def _step_logits_backward(ctx, grad):
    hidden, step_index, head, bias = ctx.saved_tensors
    gh, gw, gb = _logits_backward(grad, hidden, step_index, head, bias)
    return gh, None, gw, gb, None


def _score_steps_backward(ctx, g_scores, g_min, g_last, g_prod, g_mean, _g_num):
    """Chain rule through the aggregates to the per-step scores, then through the sigmoid
    (``ds/dz = s (1 - s)``) to the logits. ``min`` sends its gradient to the first minimum."""
    hidden, step_index, head, bias = ctx.saved_tensors
    acc = acc_dtype(hidden.dtype)
    with torch.no_grad():
        logits = step_logits_reference(hidden, step_index, head, bias)
    z = logits[..., 0] - logits[..., 1] if head.dim() == 2 else logits
    s = torch.sigmoid(z)
    valid = step_index >= 0
    n = valid.sum(1)
    batch, steps = s.shape
    zeros_s = torch.zeros_like(s)
    zeros_b = torch.zeros(batch, dtype=acc, device=s.device)

    def _or_zero(g, like):
        return like if g is None else torch.where(torch.isnan(g), like, g.to(acc))

    gs = torch.where(valid, _or_zero(g_scores, zeros_s), zeros_s)
    if steps > 0:
        has = (n > 0).to(acc)
        g_mean_ = _or_zero(g_mean, zeros_b) * has / n.clamp(min=1).to(acc)
        gs = gs + torch.where(valid, g_mean_.unsqueeze(1), zeros_s)
        last = torch.nn.functional.one_hot((n - 1).clamp(min=0), steps).to(acc)
        gs = gs + last * (_or_zero(g_last, zeros_b) * has).unsqueeze(1)
        arg = torch.where(valid, s, torch.full_like(s, float("inf"))).argmin(1)
        first_min = torch.nn.functional.one_hot(arg, steps).to(acc)
        gs = gs + first_min * (_or_zero(g_min, zeros_b) * has).unsqueeze(1)
        # d(prod)/d s_i = product of the other steps: prefix * suffix exclusive products, exact
        # even where some s_j underflowed to 0.
        sv = torch.where(valid, s, torch.ones_like(s))
        ones = torch.ones(batch, 1, dtype=acc, device=s.device)
        prefix = torch.cat([ones, sv.cumprod(1)[:, :-1]], 1)
        suffix = torch.cat([ones, sv.flip(1).cumprod(1)[:, :-1]], 1).flip(1)
        g_prod_ = _or_zero(g_prod, zeros_b) * has
        gs = gs + torch.where(valid, prefix * suffix * g_prod_.unsqueeze(1), zeros_s)
    gz = gs * s * (1.0 - s)
    g_logits = torch.stack([gz, -gz], -1) if head.dim() == 2 else gz
    gh, gw, gb = _logits_backward(g_logits, hidden, step_index, head, bias)
    return gh, None, gw, gb, None


_step_logits_op.register_autograd(_step_logits_backward, setup_context=_setup_context)
_score_steps_op.register_autograd(_score_steps_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public API: validate, choose the backend, call the op.
# --------------------------------------------------------------------------------------------


_INDEX_DTYPES = (torch.int32, torch.int64)


def pad_step_index(
    positions: Sequence[Sequence[int]] | Tensor,
    offsets: Tensor | None = None,
    *,
    device: torch.device | str | None = None,
) -> Tensor:
    """The padded ``[B, S_max]`` int64 ``step_index`` (-1 padding) from ragged step positions.

    Args:
        positions: a list of B lists of positions, or (packed form) a 1-D int32/int64 tensor of
            all rows' positions concatenated, with ``offsets``.
        offsets: ``[B + 1]`` int32/int64 tensor, row ``b`` = ``positions[offsets[b]:offsets[b + 1]]``
            (packed form only).
        device: where to put the result (default: the packed tensor's device, else CPU).
    """
    if offsets is None:
        if isinstance(positions, Tensor):
            raise TypeError("pad_step_index: a packed positions tensor needs offsets")
        rows = [list(map(int, r)) for r in positions]
        width = max((len(r) for r in rows), default=0)
        out = torch.full((len(rows), width), -1, dtype=torch.int64)
        for b, r in enumerate(rows):
            out[b, : len(r)] = torch.tensor(r, dtype=torch.int64)
        return out.to(device) if device is not None else out
    op = "pad_step_index"
    # Integer dtypes only: a float position or offset is not an index (and torch's indexing
    # would fail on it with an unrelated error, or silently truncate it).
    positions = check_tensor(op, "positions", positions, dtype=_INDEX_DTYPES, ndim=1)
    offsets = check_tensor(op, "offsets", offsets, dtype=_INDEX_DTYPES, ndim=1,
                           device=positions.device)
    if offsets.numel() == 0:
        raise ValueError(f"{op}: offsets must have B + 1 >= 1 entries")
    counts = offsets.diff()
    if offsets[0].item() != 0 or offsets[-1].item() != positions.numel() or (counts < 0).any():
        raise ValueError(
            f"{op}: offsets must start at 0, be non-decreasing and end at len(positions) "
            f"= {positions.numel()}"
        )
    batch = counts.numel()
    width = int(counts.max().item()) if batch else 0
    row = torch.repeat_interleave(torch.arange(batch, device=positions.device), counts)
    col = torch.arange(positions.numel(), device=positions.device) - offsets[:-1][row]
    out = torch.full((batch, width), -1, dtype=torch.int64, device=positions.device)
    out[row, col] = positions.to(torch.int64)
    return out.to(device) if device is not None else out


def _validate(
    op: str,
    hidden: object,
    step_index: object,
    head: object,
    bias: object,
    kind: str | None,
    lengths: object,
    backend: str | None,
) -> tuple[Tensor, Tensor | None, str]:
    """Check every argument before any kernel runs; return (head, bias as a tensor, backend)."""
    hidden = check_tensor(op, "hidden", hidden, dtype=FLOAT_DTYPES, ndim=3)
    dev = hidden.device
    batch, length, width = hidden.shape
    check_tensor(op, "step_index", step_index, dtype=torch.int64, device=dev, ndim=2)
    if step_index.shape[0] != batch:
        raise ValueError(
            f"{op}: step_index must have shape [B, S] with B = hidden.shape[0] = {batch}, "
            f"got {tuple(step_index.shape)}"
        )
    head = check_tensor(op, "head", head, dtype=FLOAT_DTYPES, device=dev)
    if kind is None:
        kind = "two_label" if head.dim() == 2 else "value"
    if kind not in KINDS:
        raise ValueError(f"{op}: kind must be one of {KINDS}, got {kind!r}")
    want = (2, width) if kind == "two_label" else (width,)
    if tuple(head.shape) != want:
        raise ValueError(
            f"{op}: head for kind={kind!r} must have shape {want} (hidden width H = {width}"
            + (", positive label row first" if kind == "two_label" else "")
            + f"), got {tuple(head.shape)}"
        )
    if bias is not None:
        if kind == "value" and not isinstance(bias, Tensor):
            if isinstance(bias, bool) or not isinstance(bias, (int, float)):
                raise TypeError(
                    f"{op}: bias must be a tensor or a number, got {type(bias).__name__}"
                )
            bias = torch.tensor(float(bias), dtype=acc_dtype(hidden.dtype), device=dev)
        bias = check_tensor(op, "bias", bias, dtype=FLOAT_DTYPES, device=dev)
        ok = bias.shape == (2,) if kind == "two_label" else bias.numel() == 1 and bias.dim() <= 1
        if not ok:
            want_b = "[2]" if kind == "two_label" else "[] or [1]"
            raise ValueError(
                f"{op}: bias for kind={kind!r} must have shape {want_b}, got {tuple(bias.shape)}"
            )
        if kind == "value":
            bias = bias.reshape(1)
    if lengths is not None:
        check_tensor(op, "lengths", lengths, dtype=torch.int64, device=dev, shape=(batch,))
    name = choose_backend(op, KERNELS, hidden, backend)
    _check_positions(op, step_index, length, lengths)
    return head, bias, name


def _check_positions(op: str, idx: Tensor, length: int, lengths: Tensor | None) -> None:
    """Every entry is a position in [0, L) (and < lengths[b]) or -1; positions strictly increase
    along a row; padding only at the end. One device sync for all the checks."""
    if idx.numel() == 0:
        return
    valid = idx >= 0
    limit = length if lengths is None else lengths.clamp(max=length).unsqueeze(1)
    problems = [
        idx < -1,
        valid & (idx >= limit),
        valid[:, 1:] & ~valid[:, :-1],
        valid[:, 1:] & (idx[:, 1:] <= idx[:, :-1]),
    ]
    if lengths is not None:
        problems.append((lengths < 0) | (lengths > length))
    flags = torch.stack([p.any() for p in problems]).tolist()
    if not any(flags):
        return

    def where(k: int) -> str:
        shift = 1 if k in (2, 3) else 0  # those checks compare a step with the one before it
        b, s = (int(v) for v in problems[k].nonzero()[0])
        return f"step_index[{b}, {s + shift}] = {int(idx[b, s + shift])}"

    if flags[0]:
        raise ValueError(f"{op}: step_index entries must be positions >= 0 or -1 (padding); "
                         f"{where(0)}")
    if flags[1]:
        bound = f"the sequence length L = {length}" if lengths is None else "lengths[b]"
        raise ValueError(f"{op}: step position out of range: {where(1)} must be < "
                         f"{bound}")
    if flags[2]:
        raise ValueError(f"{op}: a step after -1 padding: {where(2)}; pad each row "
                         "of step_index with -1 at the end only")
    if flags[3]:
        raise ValueError(f"{op}: step positions must strictly increase along a row: "
                         f"{where(3)} is not after the previous step")
    raise ValueError(f"{op}: lengths must lie in [0, L = {length}]")


def _call(op, impl, hidden, step_index, head, bias, name):
    """``call_op``, except that a call needing gradients goes through the registered op (its
    autograd formula); the eager shortcut would return results with no graph."""
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, head, bias)
    ):
        return op(hidden, step_index, head, bias, name)
    return call_op(op, impl, hidden, step_index, head, bias, name)


def score_steps(
    hidden: Tensor,
    step_index: Tensor,
    head: Tensor,
    bias: Tensor | float | None = None,
    *,
    kind: str | None = None,
    lengths: Tensor | None = None,
    backend: str | None = None,
) -> StepScores:
    """PRM step scores at the step positions, and per-row min / last / product / mean.

    Args:
        hidden: ``[B, L, H]`` last hidden states, float32 / float16 / bfloat16 (float64 too);
            any strides (only the step rows are read; a non-unit innermost stride is copied).
        step_index: ``[B, S]`` int64 step positions, strictly increasing along a row, ``-1``
            padding at the end (see :func:`pad_step_index` for ragged lists / packed offsets).
        head: ``[2, H]`` (kind ``"two_label"``: positive label row first) or ``[H]`` (kind
            ``"value"``), any float dtype.
        bias: optional ``[2]`` (two labels) or scalar / ``[]`` / ``[1]`` (value head).
        kind: ``"two_label"`` or ``"value"``; default from ``head.dim()`` (2 or 1).
        lengths: optional ``[B]`` int64 valid lengths; steps must then be ``< lengths[b]``.
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``; default by device.

    Returns:
        :class:`StepScores`: ``scores [B, S]`` (NaN at padding), ``min``, ``last``, ``product``,
        ``mean`` ``[B]`` (NaN for rows with no steps), ``num_steps [B]`` int64. Floats are
        float32 (float64 for float64 hidden). Differentiable w.r.t. hidden, head and bias.
    """
    op = "score_steps"
    head, bias, name = _validate(op, hidden, step_index, head, bias, kind, lengths, backend)
    out = _call(torch.ops.ponder.score_steps, _score_steps_impl, hidden, step_index, head, bias,
                name)
    return StepScores(*out)


def step_logits(
    hidden: Tensor,
    step_index: Tensor,
    head: Tensor,
    bias: Tensor | float | None = None,
    *,
    kind: str | None = None,
    lengths: Tensor | None = None,
    backend: str | None = None,
) -> Tensor:
    """The head's logits at the step positions, with autograd to hidden, head and bias: the
    training path (e.g. ER-PRM's soft-label cross-entropy over the two label logits,
    ``-[l log softmax(z)[0] + (1 - l) log softmax(z)[1]]``).

    Args: as :func:`score_steps`.

    Returns:
        ``[B, S, 2]`` = ``(z+, z-)`` per step (two labels) or ``[B, S]`` (value head), float32
        (float64 for float64 hidden), 0 at padding (mask your loss with ``step_index >= 0``).
    """
    op = "step_logits"
    head, bias, name = _validate(op, hidden, step_index, head, bias, kind, lengths, backend)
    return _call(
        torch.ops.ponder.step_logits, _step_logits_impl, hidden, step_index, head, bias, name
    )
