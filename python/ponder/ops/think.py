"""ThinK kernels: query-driven channel pruning of the key cache, and decode attention over it.

ThinK (arXiv 2407.21018; docs/think.md) scores each key channel of each KV head once, after prefill,
keeps the ``T = D - floor(lambda * D)`` best channels of the keys (values keep full width), and
stores those keys compactly. Decode then attends over two key stores with one softmax:

- the *pruned* store: ``k_pruned [B, Hkv, Lp, T]`` with the kept channels ``idx [B, Hkv, T]``
  (logit = ``q[idx] . k_pruned``), and
- the *recent* store: ``k_recent [B, Hkv, Lr, D]`` at full width (the last prompt tokens and all
  generated ones; logit = ``q . k_recent``),

with values ``v [B, Hkv, Lp + Lr, D]`` in the same token order (pruned tokens first).

Ops (each with a plain-torch ``*_reference`` that defines it):

- :func:`channel_scores` ``(q_window, k) -> [B, Hkv, D]`` float32;
- :func:`select_channels` ``(scores, keep) -> idx [B, Hkv, T]`` **int64**, sorted ascending;
- :func:`compact_keys` ``(k, idx) -> [B, Hkv, L, T]``;
- :func:`pruned_decode_attention` ``(q, k_pruned, idx, k_recent, v, ...) -> [B, Hq, S, D]``.

GQA: query head ``hq`` uses KV head ``hq // (Hq // Hkv)`` (transformers' ``repeat_kv`` order);
K and V are never expanded.

Positions, padding and the causal rule of :func:`pruned_decode_attention`
--------------------------------------------------------------------------
The keys of one batch row are the concatenation ``[pruned ; recent]``, positions ``0 .. L - 1``
with ``L = Lp + Lr``. Each row ``b`` has a valid window ``[start_b, end_b)``:

- ``starts`` (``[B]``, default all 0): the first valid position. **Left padding** (what
  transformers' ``generate`` makes for batches) sets ``starts[b]`` = the number of pad tokens
  on the left of row ``b``; they are never attended to.
- ``lengths`` (``[B]``, default all ``L``): one past the last valid position. **Right padding**
  (a cache with spare capacity, rows of different lengths) sets ``lengths[b]``.

The ``S`` queries of row ``b`` are the last ``S`` valid positions: query ``s`` sits at position
``p_s = end_b - S + s`` and sees key ``t`` iff ``start_b <= t <= p_s`` (causal among the ``S``
queries, and their own keys must already be in the cache, as transformers does). With ``S = 1``
that is just the window. A query that sees no key gets a zero output and ``lse = -inf``.

Scale: ``1/sqrt(D)`` with the full ``D`` (docs/think.md), whatever ``T`` is. Math in float32 for
float32 / float16 / bfloat16 inputs; outputs in the input dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import _backend
from ..validation import check_int, check_probability, check_tensor
from ._common import (
    buffer_args,
    call_op,
    choose_backend,
    launch_native,
    register_reference_backward,
)

__all__ = [
    "DTYPES",
    "PrunedDecodePlan",
    "channel_scores",
    "channel_scores_reference",
    "compact_keys",
    "compact_keys_reference",
    "kept_channels",
    "pruned_decode_attention",
    "pruned_decode_attention_backend",
    "pruned_decode_attention_prechecked",
    "pruned_decode_attention_reference",
    "select_channels",
    "select_channels_reference",
]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int64, torch.int32)

# select_channels and compact_keys are plain torch (a top-k and a gather) and take no backend.
# On CUDA tensors both ops have a CUDA C++ and a Triton kernel. The default there is Triton,
# PROVISIONALLY: neither has been timed on a GPU yet (the CUDA kernels are compiled but have never
# run; bench/gpu_check.py measures both, issue 23), so the default stays what it was until a
# measured run picks the faster one per op and records its figure here.
KERNELS = _backend.KernelTable(
    "think",
    {
        "channel_scores": {
            "cpu": "think_channel_scores",
            "cuda": "think_channel_scores",
            "triton": "channel_scores",
        },
        "pruned_decode_attention": {
            "cpu": "think_pruned_decode_attention",
            "cuda": "think_pruned_decode_attention",
            "triton": "pruned_decode_attention",
        },
    },
    cuda_default={"channel_scores": "triton", "pruned_decode_attention": "triton"},
)

# The CUDA kernel's split of the keys (csrc/cuda/think.cu): chunks of _CUDA_CHUNK_KEYS keys,
# doubled while the partials would exceed _CUDA_PARTIAL_BUDGET floats (a long chunked prefill).
# It depends on the shapes only, so the results do not depend on the GPU.
_CUDA_CHUNK_KEYS = 256
_CUDA_PARTIAL_BUDGET = 16 << 20


def _cuda_split(heads: int, rows: int, length: int, dv: int) -> tuple[int, int]:
    """``(chunk_keys, workspace floats)`` for the CUDA kernel: ``heads = B * Hkv`` KV heads of
    ``rows = Hq / Hkv * S`` query rows over ``length = Lp + Lr`` keys."""
    chunk = _CUDA_CHUNK_KEYS
    while chunk < length and heads * rows * (dv + 2) * -(-length // chunk) > _CUDA_PARTIAL_BUDGET:
        chunk *= 2
    chunks = max(1, -(-length // chunk))
    return chunk, heads * chunks * rows * (dv + 2)


# --------------------------------------------------------------------------------------------
# References: plain torch, float32 math. The definition of each op.
# --------------------------------------------------------------------------------------------


def kept_channels(head_dim: int, prune_ratio: float) -> int:
    """``T = D - floor(lambda * D)``: the key channels ThinK keeps (docs/think.md).

    A tiny epsilon absorbs float error in ``lambda * D`` (0.29 * 100 is 28.999999999999996).
    """
    head_dim = check_int("kept_channels", "head_dim", head_dim, minimum=1)
    prune_ratio = check_probability("kept_channels", "prune_ratio", prune_ratio, one=False)
    return head_dim - math.floor(prune_ratio * head_dim + 1e-9)


def channel_scores_reference(q_window: Tensor, k: Tensor) -> Tensor:
    """``score[b, h, j] = mean_{g in group(h), w} q[b, g, w, j]^2 * mean_t k[b, h, t, j]^2``.

    The factorised ThinK score (docs/think.md): float32 ``[B, Hkv, D]``.
    """
    batch, hq, _, dim = q_window.shape
    hkv = k.shape[1]
    q_term = q_window.float().pow(2).mean(dim=2).view(batch, hkv, hq // hkv, dim).mean(dim=2)
    k_term = k.float().pow(2).mean(dim=2)
    return q_term * k_term


def select_channels_reference(scores: Tensor, keep: int) -> Tensor:
    """The ``keep`` highest-scoring channels per ``(b, h)``, sorted ascending, int64.

    Ties go to the lower channel index (a stable descending sort), so the choice is unique.
    """
    order = torch.sort(scores.float(), dim=-1, descending=True, stable=True).indices
    return order[..., :keep].sort(dim=-1).values.contiguous()


def compact_keys_reference(k: Tensor, idx: Tensor) -> Tensor:
    """``out[b, h, t, i] = k[b, h, t, idx[b, h, i]]``: ``[B, Hkv, L, T]``, dtype of ``k``."""
    batch, hkv, length, _ = k.shape
    index = idx.long()[:, :, None, :].expand(batch, hkv, length, idx.shape[-1])
    return torch.gather(k, 3, index).contiguous()


def _visible(
    batch: int,
    s_len: int,
    length: int,
    starts: Tensor | None,
    lengths: Tensor | None,
    device: torch.device,
) -> Tensor:
    """``[B, S, L]`` bool: query ``s`` of row ``b`` sees key position ``t`` (module docstring)."""
    pos = torch.arange(length, device=device)
    start = (
        torch.zeros(batch, dtype=torch.long, device=device) if starts is None else starts.long()
    )
    end = (
        torch.full((batch,), length, dtype=torch.long, device=device)
        if lengths is None
        else lengths.long()
    )
    q_pos = end[:, None] - s_len + torch.arange(s_len, device=device)[None, :]  # [B, S]
    return (pos[None, None, :] >= start[:, None, None]) & (pos[None, None, :] <= q_pos[:, :, None])


def pruned_decode_attention_reference(
    q: Tensor,
    k_pruned: Tensor,
    idx: Tensor,
    k_recent: Tensor,
    v: Tensor,
    lengths: Tensor | None = None,
    scale: float | None = None,
    starts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention over ``[pruned ; recent]`` keys with one softmax (module docstring).

    Returns:
        ``(out [B, Hq, S, Dv] in q's dtype, lse [B, Hq, S] float32)``, where ``lse`` is the
        natural log of the sum of ``exp(scale * logit)`` over the visible keys.
    """
    batch, hq, s_len, dim = q.shape
    hkv, lp = k_pruned.shape[1], k_pruned.shape[2]
    lr = k_recent.shape[2]
    group = hq // hkv
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    # Query heads of one KV head side by side: [B, Hkv, G * S, D], row g * S + s.
    qf = q.float().reshape(batch, hkv, group * s_len, dim)
    q_kept = torch.gather(qf, 3, idx.long()[:, :, None, :].expand(-1, -1, group * s_len, -1))
    logits = torch.cat(
        [q_kept @ k_pruned.float().transpose(-1, -2), qf @ k_recent.float().transpose(-1, -2)],
        dim=-1,
    ) * scale  # [B, Hkv, G * S, L]
    visible = _visible(batch, s_len, lp + lr, starts, lengths, q.device)  # [B, S, L]
    visible = visible[:, None, None].expand(batch, hkv, group, s_len, lp + lr)
    logits = logits.masked_fill(~visible.reshape(logits.shape), -math.inf)
    lse = torch.logsumexp(logits, dim=-1)  # -inf where nothing is visible
    probs = torch.exp(logits - lse.clamp_min(torch.finfo(torch.float32).min)[..., None])
    out = probs @ v.float()  # [B, Hkv, G * S, Dv]
    dv = v.shape[-1]
    return (
        out.reshape(batch, hq, s_len, dv).to(q.dtype),
        lse.reshape(batch, hq, s_len),
    )


# --------------------------------------------------------------------------------------------
# Backends and custom ops
# --------------------------------------------------------------------------------------------


def _channel_scores_impl(q_window: Tensor, k: Tensor, backend: str) -> Tensor:
    batch, hkv, _, dim = k.shape
    if backend == "torch" or q_window.numel() == 0 or k.numel() == 0:
        return channel_scores_reference(q_window, k).contiguous()
    q_window, k = q_window.contiguous(), k.contiguous()
    out = torch.empty(batch, hkv, dim, dtype=torch.float32, device=k.device)
    if backend == "triton":
        KERNELS.kernel("channel_scores", backend)(out, q_window, k)
    else:
        hq, w = q_window.shape[1], q_window.shape[2]
        code = _backend.DTYPE_CODES[k.dtype]
        launch_native(
            backend, KERNELS.kernel("channel_scores", backend), [out, q_window, k],
            batch, hq, hkv, w, k.shape[2], dim, code,
        )
    return out


_channel_scores_op = torch.library.custom_op(
    "ponder::channel_scores", _channel_scores_impl, mutates_args=()
)


@_channel_scores_op.register_fake
def _(q_window, k, backend):
    return k.new_empty(k.shape[0], k.shape[1], k.shape[3], dtype=torch.float32)


def _select_channels_impl(scores: Tensor, keep: int) -> Tensor:
    return select_channels_reference(scores, keep)


_select_channels_op = torch.library.custom_op(
    "ponder::select_channels", _select_channels_impl, mutates_args=()
)


@_select_channels_op.register_fake
def _(scores, keep):
    return scores.new_empty(*scores.shape[:-1], keep, dtype=torch.int64)


def _compact_keys_impl(k: Tensor, idx: Tensor) -> Tensor:
    return compact_keys_reference(k, idx)


_compact_keys_op = torch.library.custom_op(
    "ponder::compact_keys", _compact_keys_impl, mutates_args=()
)


@_compact_keys_op.register_fake
def _(k, idx):
    return k.new_empty(*k.shape[:-1], idx.shape[-1])


def _rows(t: Tensor) -> Tensor:
    """``t`` with a unit stride on the last dimension (other strides are passed to the kernels,
    so a slice of a preallocated cache is read in place, not copied)."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _pruned_decode_attention_impl(
    q: Tensor,
    k_pruned: Tensor,
    idx: Tensor,
    k_recent: Tensor,
    v: Tensor,
    lengths: Tensor | None,
    starts: Tensor | None,
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor]:
    batch, hq, s_len, _ = q.shape
    dv = v.shape[-1]
    if backend == "torch" or q.numel() == 0 or v.shape[2] == 0 or dv == 0:
        out, lse = pruned_decode_attention_reference(
            q, k_pruned, idx, k_recent, v, lengths, scale, starts
        )
        return out.contiguous(), lse.contiguous()
    out = torch.empty(batch, hq, s_len, dv, dtype=q.dtype, device=q.device)
    lse = torch.empty(batch, hq, s_len, dtype=torch.float32, device=q.device)
    q, idx = q.contiguous(), idx.to(torch.int64).contiguous()
    k_pruned, k_recent, v = _rows(k_pruned), _rows(k_recent), _rows(v)
    starts = None if starts is None else starts.to(torch.int64).contiguous()
    lengths = None if lengths is None else lengths.to(torch.int64).contiguous()
    if backend == "triton":
        KERNELS.kernel("pruned_decode_attention", backend)(
            out, lse, q, k_pruned, idx, k_recent, v, starts, lengths, scale
        )
    else:
        hkv, lp, t_kept = k_pruned.shape[1], k_pruned.shape[2], k_pruned.shape[3]
        lr, dim = k_recent.shape[2], k_recent.shape[3]
        code = _backend.DTYPE_CODES[q.dtype]
        buffers = [out, lse, q, k_pruned, idx, k_recent, v, starts, lengths]
        extra: tuple = ()
        if backend == "cuda":  # split-K partials live in a workspace torch allocates
            chunk, floats = _cuda_split(batch * hkv, (hq // hkv) * s_len, lp + lr, dv)
            buffers.append(torch.empty(floats, dtype=torch.float32, device=q.device))
            extra = (chunk,)
        launch_native(
            backend,
            KERNELS.kernel("pruned_decode_attention", backend),
            buffers,
            batch, hq, hkv, s_len, lp, lr, dim, t_kept, dv,
            *k_pruned.stride()[:3], *k_recent.stride()[:3], *v.stride()[:3],
            code, scale, *extra,
        )
    return out, lse


_pruned_decode_attention_op = torch.library.custom_op(
    "ponder::pruned_decode_attention", _pruned_decode_attention_impl, mutates_args=()
)


@_pruned_decode_attention_op.register_fake
def _(q, k_pruned, idx, k_recent, v, lengths, starts, scale, backend):
    batch, hq, s_len, _ = q.shape
    return (
        q.new_empty(batch, hq, s_len, v.shape[-1]),
        q.new_empty(batch, hq, s_len, dtype=torch.float32),
    )


# Autograd: each op's backward differentiates its plain-torch reference (recomputed from the saved
# inputs), so a model patched with ThinK trains or fine-tunes with the same gradients on every
# backend; select_channels returns indices and has none.
register_reference_backward(
    _channel_scores_op, lambda q_window, k, backend: _channel_scores_impl(q_window, k, "torch"))
register_reference_backward(_compact_keys_op, _compact_keys_impl)
register_reference_backward(
    _pruned_decode_attention_op,
    lambda *args: _pruned_decode_attention_impl(*args[:-1], "torch"),
)


# --------------------------------------------------------------------------------------------
# Public API: validate, choose the backend, call the op.
# --------------------------------------------------------------------------------------------


def _values_checkable() -> bool:
    """Index values are checked eagerly (one small reduction each). Under torch.compile they are
    data-dependent and cannot be: there the C++ launcher's own checks still refuse bad indices."""
    return not torch.compiler.is_compiling()


def _check_groups(op: str, hq: int, hkv: int, q_name: str) -> None:
    if hkv < 1 or hq < 1 or hq % hkv != 0:
        raise ValueError(
            f"{op}: {q_name} has {hq} heads, which must be a positive multiple of the {hkv} "
            "KV heads (GQA: Hq % Hkv == 0)"
        )


def _check_idx(op: str, idx: Tensor, like: Tensor, shape: tuple[int, ...], dim: int) -> None:
    check_tensor(op, "idx", idx, dtype=INDEX_DTYPES, device=like.device, shape=shape)
    if _values_checkable() and idx.numel() and not bool(((idx >= 0) & (idx < dim)).all()):
        bad = idx[(idx < 0) | (idx >= dim)][0].item()
        raise ValueError(f"{op}: idx must hold channel indices in [0, {dim}), found {bad}")


def channel_scores(q_window: Tensor, k: Tensor, *, backend: str | None = None) -> Tensor:
    """The ThinK channel score of every key channel of every KV head, reading ``k`` once.

    ``score[b, h, j] = mean_{g, w} q_window[b, g, w, j]^2 * mean_t k[b, h, t, j]^2`` where ``g``
    runs over the query heads of KV head ``h``'s GQA group.

    Padding: the selection is per ``(b, h)`` and a positive factor common to a row does not change
    it, so zeroing the keys / queries at padded positions gives the same channels as leaving them
    out (the means' denominators only scale a row).

    Args:
        q_window: ``[B, Hq, W, D]`` the last ``W >= 1`` queries (after RoPE), float32/16, bfloat16.
        k: ``[B, Hkv, L, D]`` keys after RoPE, ``L >= 1``, same dtype and device; ``Hq % Hkv == 0``.
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``; default by device.

    Returns:
        float32 ``[B, Hkv, D]``.
    """
    op = "channel_scores"
    check_tensor(op, "k", k, dtype=DTYPES, ndim=4)
    check_tensor(op, "q_window", q_window, dtype=k.dtype, device=k.device, ndim=4)
    batch, hkv, length, dim = k.shape
    if q_window.shape[0] != batch or q_window.shape[3] != dim:
        raise ValueError(
            f"{op}: q_window must be [B={batch}, Hq, W, D={dim}] like k, "
            f"got {tuple(q_window.shape)}"
        )
    _check_groups(op, q_window.shape[1], hkv, "q_window")
    if q_window.shape[2] < 1 or length < 1:
        raise ValueError(
            f"{op}: need at least one query (W = {q_window.shape[2]}) and one key (L = {length})"
        )
    name = choose_backend(op, KERNELS, k, backend)
    return call_op(torch.ops.ponder.channel_scores, _channel_scores_impl, q_window, k, name)


def select_channels(scores: Tensor, keep: int) -> Tensor:
    """The ``keep`` best channels of each KV head, as sorted int64 indices.

    A sort over ``[B, Hkv, D]`` scores: no kernel is warranted, so this is the same torch code on
    every device. Ties go to the lower channel index.

    Args:
        scores: ``[B, Hkv, D]`` finite floats (from :func:`channel_scores`).
        keep: ``T``, the number of channels kept, ``0 <= T <= D``
            (``kept_channels(D, prune_ratio)`` gives ThinK's count).

    Returns:
        int64 ``[B, Hkv, T]``, ascending along the last dimension.
    """
    op = "select_channels"
    check_tensor(op, "scores", scores, dtype=(*DTYPES, torch.float64), ndim=3)
    dim = scores.shape[-1]
    keep = check_int(op, "keep", keep, minimum=None)
    if not 0 <= keep <= dim:
        raise ValueError(f"{op}: keep must be in [0, D={dim}], got {keep}")
    if _values_checkable() and scores.numel() and not bool(torch.isfinite(scores).all()):
        raise ValueError(f"{op}: scores must be finite (a NaN or inf has no rank)")
    return call_op(torch.ops.ponder.select_channels, _select_channels_impl, scores, keep)


def compact_keys(k: Tensor, idx: Tensor) -> Tensor:
    """The kept channels of the keys, stored densely: ``out[..., i] = k[..., idx[..., i]]``.

    Args:
        k: ``[B, Hkv, L, D]`` float32/16 or bfloat16.
        idx: ``[B, Hkv, T]`` int64 (or int32) channel indices in ``[0, D)``.

    Returns:
        ``[B, Hkv, L, T]``, contiguous, dtype of ``k``.
    """
    op = "compact_keys"
    check_tensor(op, "k", k, dtype=DTYPES, ndim=4)
    batch, hkv, _, dim = k.shape
    check_tensor(op, "idx", idx, dtype=INDEX_DTYPES, device=k.device, ndim=3)
    _check_idx(op, idx, k, (batch, hkv, idx.shape[-1]), dim)
    return call_op(torch.ops.ponder.compact_keys, _compact_keys_impl, k, idx)


def _check_positions(
    op: str, name: str, t: Tensor | None, like: Tensor, batch: int
) -> Tensor | None:
    if t is None:
        return None
    check_tensor(op, name, t, dtype=INDEX_DTYPES, device=like.device, shape=(batch,))
    return t


def pruned_decode_attention(
    q: Tensor,
    k_pruned: Tensor,
    idx: Tensor,
    k_recent: Tensor,
    v: Tensor,
    lengths: Tensor | None = None,
    scale: float | None = None,
    return_lse: bool = False,
    *,
    starts: Tensor | None = None,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Decode attention over channel-pruned keys plus full-width recent keys, one softmax.

    ``logit[t] = scale * q[idx] . k_pruned[t]`` for ``t < Lp``, ``scale * q . k_recent[t - Lp]``
    after; ``out = softmax(logits over the visible keys) @ v``. Positions, padding (``starts``
    for left padding, ``lengths`` for right padding) and the causal rule among the ``S`` queries
    are defined in the module docstring.

    Args:
        q: ``[B, Hq, S, D]`` queries, float32/16 or bfloat16; ``Hq % Hkv == 0``.
        k_pruned: ``[B, Hkv, Lp, T]`` compact keys (``T <= D``), same dtype.
        idx: ``[B, Hkv, T]`` int64 (or int32) channels of ``k_pruned``, in ``[0, D)``.
        k_recent: ``[B, Hkv, Lr, D]`` full-width keys.
        v: ``[B, Hkv, Lp + Lr, Dv]`` values, pruned tokens first.
        lengths: optional int ``[B]``, ``starts[b] <= lengths[b] <= Lp + Lr``: end of the valid keys.
        scale: logit scale; default ``1/sqrt(D)`` with the full ``D``.
        return_lse: also return the float32 ``[B, Hq, S]`` log-sum-exp of the scaled logits
            (``-inf`` for a query that sees nothing), for merging partial attentions.
        starts: optional int ``[B]``, ``0 <= starts[b]``: first valid key (left padding).
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``; default by device.

    Returns:
        ``out [B, Hq, S, Dv]`` in q's dtype (contiguous), and ``lse`` if ``return_lse``.

    Memory read per call: ``k_pruned``, ``k_recent`` and ``v`` once each (K/V of a KV head are
    shared by its query heads, never expanded).
    """
    op = "pruned_decode_attention"
    check_tensor(op, "q", q, dtype=DTYPES, ndim=4)
    batch, hq, _, dim = q.shape
    check_tensor(op, "k_pruned", k_pruned, dtype=q.dtype, device=q.device, ndim=4)
    hkv, lp, t_kept = k_pruned.shape[1], k_pruned.shape[2], k_pruned.shape[3]
    if k_pruned.shape[0] != batch:
        raise ValueError(
            f"{op}: k_pruned must be [B={batch}, Hkv, Lp, T], got {tuple(k_pruned.shape)}"
        )
    _check_groups(op, hq, hkv, "q")
    if t_kept > dim:
        raise ValueError(f"{op}: k_pruned keeps T={t_kept} channels, more than q's D={dim}")
    check_tensor(op, "k_recent", k_recent, dtype=q.dtype, device=q.device, ndim=4)
    if (k_recent.shape[0], k_recent.shape[1], k_recent.shape[3]) != (batch, hkv, dim):
        raise ValueError(
            f"{op}: k_recent must be [B={batch}, Hkv={hkv}, Lr, D={dim}], "
            f"got {tuple(k_recent.shape)}"
        )
    lr = k_recent.shape[2]
    check_tensor(op, "v", v, dtype=q.dtype, device=q.device, ndim=4)
    if v.shape[:3] != (batch, hkv, lp + lr):
        raise ValueError(
            f"{op}: v must be [B={batch}, Hkv={hkv}, Lp + Lr={lp + lr}, Dv], "
            f"got {tuple(v.shape)}"
        )
    _check_idx(op, idx, q, (batch, hkv, t_kept), dim)
    length = lp + lr
    lengths = _check_positions(op, "lengths", lengths, q, batch)
    starts = _check_positions(op, "starts", starts, q, batch)
    if batch and _values_checkable():
        lo = starts if starts is not None else torch.zeros(batch, dtype=torch.long, device=q.device)
        if bool((lo < 0).any()):
            raise ValueError(f"{op}: starts must be >= 0, got {starts.tolist()}")
        if lengths is not None and not bool(((lengths >= lo) & (lengths <= length)).all()):
            raise ValueError(
                f"{op}: lengths must satisfy starts <= lengths <= Lp + Lr = {length}, "
                f"got lengths={lengths.tolist()}"
            )
        if starts is not None and lengths is None and bool((starts > length).any()):
            raise ValueError(f"{op}: starts must be <= Lp + Lr = {length}, got {starts.tolist()}")
    if scale is None:
        scale = 1.0 / math.sqrt(dim) if dim else 1.0
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"{op}: scale must be a finite float or None, got {scale!r}")
    name = choose_backend(op, KERNELS, q, backend)
    out, lse = call_op(
        torch.ops.ponder.pruned_decode_attention,
        _pruned_decode_attention_impl,
        q, k_pruned, idx, k_recent, v, lengths, starts, float(scale), name,
    )
    return (out, lse) if return_lse else out


def pruned_decode_attention_backend(q: Tensor, backend: str | None = None) -> str:
    """The backend :func:`pruned_decode_attention` runs for queries like ``q`` (its device and
    dtype) and ``backend`` (None: by device); raises as that op would. For
    :func:`pruned_decode_attention_prechecked`."""
    return choose_backend("pruned_decode_attention", KERNELS, q, backend)


def pruned_decode_attention_prechecked(
    q: Tensor, k_pruned: Tensor, idx: Tensor, k_recent: Tensor, v: Tensor, *, scale: float,
    starts: Tensor | None, backend: str,
) -> Tensor:
    """:func:`pruned_decode_attention` without its per-call argument checks, for a caller that
    built the arguments itself and checked them once (ponder.kv's cache, once per prompt: the
    checks cost about 45 us a call on the CPU, a decode step's worth of a small layer).

    ``backend`` is a name from :func:`pruned_decode_attention_backend`; ``scale`` a float. The
    native launchers still check every bound they read. Eager and inference only: under
    ``torch.compile`` or with inputs that require grad, use :func:`pruned_decode_attention`.
    Returns ``out [B, Hq, S, Dv]``.
    """
    out, _ = _pruned_decode_attention_impl(q, k_pruned, idx, k_recent, v, None, starts,
                                           float(scale), backend)
    return out


class PrunedDecodePlan:
    """:func:`pruned_decode_attention` bound to a decode cache's buffers, for a decode loop.

    ponder.kv's cache keeps its stores in buffers preallocated for the whole generation and
    attends, each step, over their first ``n_pruned`` / ``n_recent`` tokens. Everything about a
    call that does not change from one step to the next (the kernel, the buffers' addresses,
    extents and strides, the index dtype, the dtype code) is worked out here, once; a call then
    only allocates the output and launches the kernel. At a 1K context on the CPU that takes a
    decode step's attention from about 110 to 90 us a layer (the argument handling of
    :func:`pruned_decode_attention_prechecked` is Python, per call).

    Args (the buffers are read in place, never copied; the plan holds them):
        q: a query like the ones to come (``[B, Hq, S, D]``: its dtype and device).
        k_pruned_buf: ``[B, Hkv, Cp, T]`` (the first ``n_pruned`` tokens used).
        idx: ``[B, Hkv, T]`` int64, contiguous.
        k_recent_buf: ``[B, Hkv, Cr, D]`` (the first ``n_recent`` used).
        v_buf: ``[B, Hkv, Cv, Dv]`` (the first ``n_pruned + n_recent`` used).
        starts: int64 ``[B]`` (left padding) or None.
        backend: a name from :func:`pruned_decode_attention_backend`.

    The caller guarantees what the public op would check (shapes, dtypes, devices, index
    ranges: ponder.kv's cache builds them so); the native launcher still checks every bound it
    reads. The plan is valid while the cache holds these same buffers (:meth:`holds`): a cache
    that grows or replaces a store makes a new plan. Eager inference only (no autograd, no
    ``torch.compile``): use :func:`pruned_decode_attention` there.
    """

    __slots__ = ("_args", "_dims", "_kernel", "_lse", "_strides", "backend", "buffers", "dtype")

    def __init__(self, q: Tensor, k_pruned_buf: Tensor, idx: Tensor, k_recent_buf: Tensor,
                 v_buf: Tensor, starts: Tensor | None, backend: str) -> None:
        self.buffers = (k_pruned_buf, idx, k_recent_buf, v_buf, starts)
        self.backend = backend
        self.dtype = q.dtype
        self._kernel = None
        self._lse = None
        if backend == "cpu" and all(t.stride(-1) == 1 for t in (k_pruned_buf, k_recent_buf, v_buf)):
            self._kernel = KERNELS.kernel("pruned_decode_attention", backend)
            # Launcher arguments from k_pruned to starts (lengths: none), as buffer_args gives
            # them for the views each step would pass (same address, extent and strides).
            self._args = buffer_args([k_pruned_buf, idx, k_recent_buf, v_buf, starts, None])
            batch, hkv, _, t_kept = k_pruned_buf.shape
            self._dims = (batch, hkv, k_recent_buf.shape[3], t_kept, v_buf.shape[3])
            self._strides = (*k_pruned_buf.stride()[:3], *k_recent_buf.stride()[:3],
                             *v_buf.stride()[:3], _backend.DTYPE_CODES[q.dtype])

    def holds(self, k_pruned_buf: Tensor, idx: Tensor, k_recent_buf: Tensor, v_buf: Tensor,
              starts: Tensor | None) -> bool:
        """Whether the plan was built on exactly these buffers (the same tensor objects)."""
        b = self.buffers
        return (b[0] is k_pruned_buf and b[1] is idx and b[2] is k_recent_buf and b[3] is v_buf
                and b[4] is starts)

    def __call__(self, q: Tensor, n_pruned: int, n_recent: int, scale: float) -> Tensor:
        """Attention of ``q [B, Hq, S, D]`` (the last ``S`` tokens, already in the stores) over
        the first ``n_pruned`` pruned and ``n_recent`` full-width tokens: ``out [B, Hq, S, Dv]``."""
        if q.dtype != self.dtype:
            raise TypeError(f"PrunedDecodePlan: q is {q.dtype}, the plan's buffers {self.dtype}")
        k_pruned_buf, idx, k_recent_buf, v_buf, starts = self.buffers
        batch, hq, s_len, _ = q.shape
        if self._kernel is None or q.numel() == 0 or n_pruned + n_recent == 0:
            return pruned_decode_attention_prechecked(
                q, k_pruned_buf[:, :, :n_pruned], idx, k_recent_buf[:, :, :n_recent],
                v_buf[:, :, :n_pruned + n_recent], scale=scale, starts=starts,
                backend=self.backend,
            )
        _, hkv, dim, t_kept, dv = self._dims
        out = torch.empty(batch, hq, s_len, dv, dtype=q.dtype, device=q.device)
        lse = self._lse
        if lse is None or lse.shape != (batch, hq, s_len):  # scratch: the decode needs no lse
            lse = self._lse = torch.empty(batch, hq, s_len, dtype=torch.float32,
                                          device=q.device)
        q = q.contiguous()
        self._kernel(
            out.data_ptr(), out.numel(), lse.data_ptr(), lse.numel(), q.data_ptr(), q.numel(),
            *self._args, batch, hq, hkv, s_len, n_pruned, n_recent, dim, t_kept, dv,
            *self._strides, float(scale), torch.get_num_threads(),
        )
        return out
