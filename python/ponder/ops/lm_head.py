"""Fused LM-head ops for training: per-token quantities of the softmax over the vocabulary, from
the last hidden states, without ever forming the ``[tokens, vocab]`` logits.

Every op reads ``hidden: [N, H]`` (flatten the batch), the LM head ``weight: [V, H]`` and an
optional ``bias: [V]``; the logits are ``z = (hidden @ weight.T + bias) / temperature``. Inputs may
be float32, float16, bfloat16 or float64; the math runs in float32 (float64 for float64 inputs)
and the outputs are float32 (float64).

- :func:`token_logprobs`: ``log pi(target)`` per token, optionally the entropy of ``pi``;
  gradients to hidden, weight and bias.
- :func:`kl_to_reference`: the exact full-vocabulary ``KL(pi || pi_ref)`` per token (OREO's KL
  regulariser); gradients on the policy side only.
- :func:`topk_logprobs`: the teacher pass (no gradient): the k largest log-probabilities, their
  ids and the probability mass they hold.
- :func:`topk_distill_loss`: FIRST's loss, the forward KL from the tempered teacher top-k to the
  student restricted to the same ids (optionally with an "other" bucket); gradients to hidden,
  weight and bias.

Tokens to skip (prompt, padding) are given by ``mask: [N]`` bool (True = the token counts) and,
for :func:`token_logprobs`, by ``targets == ignore_index``. A skipped token's outputs are 0
(top-k: ids -1, log-probabilities -inf, mass 0) and it gets no gradient; its hidden row is never
read.

How: the vocabulary is walked in chunks of ``chunk_vocab`` rows of the weight and the kept tokens
in chunks of ``chunk_tokens``; each ``[chunk_tokens, chunk_vocab]`` block of logits is one matrix
product (torch's: BLAS on the CPU, cuBLAS on a GPU) followed by one fused pass of the backend's
chunk kernel, which folds the block into per-token running statistics (an online log-sum-exp: the
running max ``m`` and ``s = sum exp(z - m)``, the target's logit, the entropy's or the KL's
weighted sum, the running top-k). The backward recomputes each block and turns it, in place,
into the gradient of the logits, which two more matrix products send to hidden and weight. Extra
memory is a few blocks plus ``O(N)`` per-token statistics, never ``O(N V)``.

Backends: ``cpu`` (the chunk kernels in C++, ``ponder._C``), ``triton`` (the chunk kernels in
Triton; on a CPU only under ``TRITON_INTERPRET=1``) and ``torch`` (the same chunked algorithm with
the chunk kernels written as torch ops; any device). Each op also has a ``*_reference``: plain
torch over the full logits, the definition and the tests' oracle (fine at small sizes only).

The math, the other bucket's formula and the memory bound: docs/lm_head.md.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .. import _backend
from ..validation import check_int, check_real, check_tensor
from ._common import (FLOAT_DTYPES, acc_dtype, call_op, choose_backend, launch_native,
                      refuse_grad)

__all__ = [
    "REDUCTIONS",
    "TopK",
    "FUSED_BLOCK_ELEMENTS",
    "kl_to_reference",
    "kl_to_reference_reference",
    "kl_to_reference_sum",
    "log1mexp",
    "token_logprobs",
    "token_logprobs_reference",
    "token_logprobs_sum",
    "topk_distill_loss",
    "topk_distill_loss_reference",
    "topk_logprobs",
    "topk_logprobs_reference",
]

REDUCTIONS = ("sum", "mean", "none")
# Default block: 1024 tokens x 4096 vocabulary rows = 16 MiB of float32 logits. Large enough
# that the matrix products run at BLAS speed, small enough to stay a few percent of the eager
# path's memory at V = 152K.
CHUNK_TOKENS = 1024
CHUNK_VOCAB = 4096

# Every op runs the same two chunk kernels: ``lm_head_chunk_forward`` folds a block of logits
# into the per-token statistics; ``lm_head_chunk_backward`` (listed under "chunk_backward", the
# kernel every differentiable op's backward uses) turns a block into its gradient in place.
_OPS = ("token_logprobs", "kl_to_reference", "topk_logprobs", "topk_distill_loss",
        "token_logprobs_sum", "kl_to_reference_sum")
KERNELS = _backend.KernelTable(
    "lm_head",
    {
        **{op: {"cpu": "lm_head_chunk_forward", "triton": "lm_head_chunk_forward"} for op in _OPS},
        "chunk_backward": {"cpu": "lm_head_chunk_backward", "triton": "lm_head_chunk_backward"},
        # Triton only: the logits product per tile (tl.dot) with the softmax parts fused.
        "fused_forward": {"triton": "lm_head_fused_forward"},
        "fused_backward": {"triton": "lm_head_fused_backward"},
    },
)


class TopK(NamedTuple):
    """The result of :func:`topk_logprobs`.

    Attributes:
        ids: ``[N, k]`` int64 token ids, by decreasing log-probability (ties: smaller id first);
            -1 at skipped tokens.
        logprobs: ``[N, k]`` their log-probabilities under the full softmax; -inf at skipped tokens.
        mass: ``[N]`` the probability they hold, ``sum(exp(logprobs))``; 0 at skipped tokens.
    """

    ids: Tensor
    logprobs: Tensor
    mass: Tensor


# --------------------------------------------------------------------------------------------
# References: plain torch over the full [N, V] logits. The definitions.
# --------------------------------------------------------------------------------------------


def _logits_reference(hidden: Tensor, weight: Tensor, bias: Tensor | None,
                      temperature: float) -> Tensor:
    acc = acc_dtype(hidden.dtype)
    z = hidden.to(acc) @ weight.to(acc).T
    if bias is not None:
        z = z + bias.to(acc)
    return z / temperature


def _keep_reference(n: int, device: torch.device, mask: Tensor | None) -> Tensor:
    return torch.ones(n, dtype=torch.bool, device=device) if mask is None else mask


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (-inf at ``x = 0``)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def token_logprobs_reference(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    with_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``log softmax(z)[target]`` per token (0 at skipped tokens) and, with ``with_entropy``,
    ``-sum_v p_v log p_v``. Shapes: hidden [N, H], weight [V, H], targets [N] -> [N]."""
    logp = _logits_reference(hidden, weight, bias, temperature).log_softmax(-1)
    keep = _keep_reference(hidden.shape[0], hidden.device, mask) & (targets != ignore_index)
    safe = torch.where(keep, targets, torch.zeros_like(targets)).unsqueeze(1)
    lp = logp.gather(1, safe).squeeze(1) if logp.shape[1] else logp.new_zeros(logp.shape[0])
    zero = torch.zeros_like(lp)
    lp = torch.where(keep, lp, zero)
    if not with_entropy:
        return lp
    ent = -(logp.exp() * logp).sum(-1)
    return lp, torch.where(keep, ent, zero)


def kl_to_reference_reference(
    hidden: Tensor,
    weight: Tensor,
    ref_hidden: Tensor,
    ref_weight: Tensor,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """``sum_v pi_v (log pi_v - log pi_ref_v)`` per token (0 at skipped tokens), with ``pi`` from
    (hidden, weight, bias) and ``pi_ref`` from (ref_hidden, ref_weight, ref_bias), both at
    ``temperature``. Shapes: hidden [N, H], ref_hidden [N, H_ref] -> [N]."""
    logp = _logits_reference(hidden, weight, bias, temperature).log_softmax(-1)
    logq = _logits_reference(ref_hidden, ref_weight, ref_bias, temperature).log_softmax(-1)
    kl = (logp.exp() * (logp - logq.to(logp.dtype))).sum(-1)
    keep = _keep_reference(hidden.shape[0], hidden.device, mask)
    return torch.where(keep, kl, torch.zeros_like(kl))


def topk_logprobs_reference(
    hidden: Tensor,
    weight: Tensor,
    k: int,
    bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> TopK:
    """The k largest entries of ``log softmax(z)`` per token, ties broken by the smaller id (a
    stable sort), and the mass they hold. Skipped tokens: ids -1, log-probabilities -inf, mass 0.
    """
    logp = _logits_reference(hidden, weight, bias, temperature).log_softmax(-1)
    vals, ids = torch.sort(logp, dim=-1, descending=True, stable=True)
    vals, ids = vals[:, :k], ids[:, :k]
    keep = _keep_reference(hidden.shape[0], hidden.device, mask).unsqueeze(1)
    ids = torch.where(keep, ids, torch.full_like(ids, -1))
    vals = torch.where(keep, vals, torch.full_like(vals, float("-inf")))
    return TopK(ids, vals, vals.exp().sum(-1))


def _teacher_log_buckets(teacher_logprobs: Tensor, temperature_c: float,
                         other_bucket: bool) -> Tensor:
    """``log P'``: the teacher's top-k (and other) buckets, tempered by c and renormalised.

    Without the other bucket ``P' = softmax(lp / c)`` over the k. With it the buckets are
    ``(lp_1, ..., lp_k, log(1 - sum exp lp))`` (the captured mass is clamped to 1 against
    rounding) and ``P' = softmax(buckets / c)`` over the k + 1.
    """
    lp = teacher_logprobs
    if other_bucket:
        captured = torch.logsumexp(lp, -1, keepdim=True).clamp(max=0.0)
        lp = torch.cat([lp, log1mexp(captured)], -1)
    return torch.log_softmax(lp / temperature_c, -1)


def _kl_terms(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``sum p (log p - log q)`` over the last dimension, with ``0 log 0 = 0``."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def topk_distill_loss_reference(
    hidden: Tensor,
    weight: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    temperature_c: float = 1.0,
    bias: Tensor | None = None,
    *,
    other_bucket: bool = False,
    reduction: str = "sum",
    temperature: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """FIRST's loss per token, ``KL(P' || Q)``, reduced.

    ``P'`` as in :func:`_teacher_log_buckets`. Without the other bucket, ``Q = softmax(z[ids])``:
    the student restricted to the teacher's k ids and renormalised. With it, ``Q`` is the
    student's full softmax on the k ids plus a bucket ``1 - sum_i Q_i``, as log-probabilities
    ``log1mexp(logsumexp(log_softmax(z)[ids]))``. Reductions: ``"none"`` ([N], 0 at skipped
    tokens), ``"sum"`` and ``"mean"`` (over the kept tokens; 0 when none is kept).
    """
    z = _logits_reference(hidden, weight, bias, temperature)
    keep = _keep_reference(hidden.shape[0], hidden.device, mask)
    safe_ids = torch.where(keep.unsqueeze(1), teacher_ids, torch.zeros_like(teacher_ids))
    acc = z.dtype
    log_p = _teacher_log_buckets(teacher_logprobs.to(acc), temperature_c, other_bucket)
    if other_bucket:
        logq_ids = z.log_softmax(-1).gather(1, safe_ids)
        log_q = torch.cat([logq_ids, log1mexp(torch.logsumexp(logq_ids, -1, keepdim=True))], -1)
    else:
        log_q = z.gather(1, safe_ids).log_softmax(-1)
    per_token = _kl_terms(log_p, log_q)
    per_token = torch.where(keep, per_token, torch.zeros_like(per_token))
    return _reduce(per_token, keep, reduction)


def _reduce(per_token: Tensor, keep: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return per_token
    total = per_token.sum()
    if reduction == "sum":
        return total
    return total / keep.sum().clamp(min=1).to(total.dtype)


# --------------------------------------------------------------------------------------------
# Chunk kernels written as torch ops (backend "torch"; any device)
# --------------------------------------------------------------------------------------------


def _merge_topk(best_vals: Tensor, best_ids: Tensor, z: Tensor, v0: int) -> None:
    """Fold the block ``z: [n, vc]`` (vocabulary ids ``v0 ..``) into the running top-k
    ``best_vals / best_ids: [n, k]`` (sorted by value, descending; ties: smaller id first)."""
    k = best_vals.shape[1]
    kk = min(k, z.shape[1])
    vals, idx = z.topk(kk, dim=1)
    # topk may pick any of several equal values at the boundary: rows where more than kk values
    # reach the kk-th are redone with a stable sort, which keeps the smaller ids.
    tied = (z >= vals[:, -1:]).sum(1) > kk
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        v2, i2 = torch.sort(z[rows], dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = v2[:, :kk], i2[:, :kk]
    # Order the block's candidates by (value desc, id asc), then merge: the running best comes
    # first and holds only smaller ids, so a stable sort keeps the tie rule across blocks.
    idx, order = idx.sort(dim=1)
    vals = vals.gather(1, order)
    cand_vals = torch.cat([best_vals, vals], 1)
    cand_ids = torch.cat([best_ids, idx + v0], 1)
    sv, si = torch.sort(cand_vals, dim=1, descending=True, stable=True)
    best_vals.copy_(sv[:, :k])
    best_ids.copy_(cand_ids.gather(1, si[:, :k]))


def _chunk_forward_torch(z, y, targets, m, s, s1, my, sy, tgt, best_vals, best_ids, v0):
    """Fold the logits block ``z: [n, vc]`` into the per-token statistics (all [n], in place):
    ``m, s`` the online log-sum-exp of z; ``s1`` (or None) ``sum exp(z - m) u`` with ``u = z - y``
    when ``y`` (the reference's block) is given, else ``u = z``; ``my, sy`` the online
    log-sum-exp of y; ``tgt[i] = z[i, targets[i] - v0]`` where that id is in the block; the
    running top-k. See docs/lm_head.md."""
    new_m = torch.maximum(m, z.amax(1))
    scale = torch.exp(m - new_m)
    e = torch.exp(z - new_m.unsqueeze(1))
    s.mul_(scale).add_(e.sum(1))
    if s1 is not None:
        u = z - y if y is not None else z
        s1.mul_(scale).add_((e * u).sum(1))
    m.copy_(new_m)
    if y is not None:
        new_my = torch.maximum(my, y.amax(1))
        sy.mul_(torch.exp(my - new_my)).add_(torch.exp(y - new_my.unsqueeze(1)).sum(1))
        my.copy_(new_my)
    if targets is not None:
        local = targets - v0
        inside = (local >= 0) & (local < z.shape[1])
        got = z.gather(1, local.clamp(0, z.shape[1] - 1).unsqueeze(1)).squeeze(1)
        tgt.copy_(torch.where(inside, got, tgt))
    if best_vals is not None:
        _merge_topk(best_vals, best_ids, z, v0)


def _chunk_backward_torch(z, y, lse, alpha, beta, gamma, targets, delta, v0):
    """Turn the block ``z`` into ``p * (alpha + beta z + gamma y)`` in place, ``p = exp(z - lse)``
    (coefficients [n] per token, beta / gamma optional), plus ``delta`` at each token's target."""
    coef = alpha.unsqueeze(1)
    if beta is not None:
        coef = coef + beta.unsqueeze(1) * z
    if gamma is not None:
        coef = coef + gamma.unsqueeze(1) * y
    z.sub_(lse.unsqueeze(1)).exp_().mul_(coef)
    if targets is not None:
        local = targets - v0
        inside = (local >= 0) & (local < z.shape[1])
        rows = inside.nonzero().squeeze(1)
        z[rows, local[rows]] += delta[rows]


# --------------------------------------------------------------------------------------------
# The chunked driver, shared by every backend
# --------------------------------------------------------------------------------------------


def _opt(t: Tensor | None, a: int, b: int) -> Tensor | None:
    return None if t is None else t[a:b]


def _chunk_forward(backend: str, op: str, z, y, targets, m, s, s1, my, sy, tgt, best_vals,
                   best_ids, v0: int) -> None:
    if backend == "torch":
        _chunk_forward_torch(z, y, targets, m, s, s1, my, sy, tgt, best_vals, best_ids, v0)
        return
    kernel = KERNELS.kernel(op, backend)
    k = 0 if best_vals is None else best_vals.shape[1]
    tensors = [z, y, targets, m, s, s1, my, sy, tgt, best_vals, best_ids]
    if backend == "triton":
        kernel(*tensors, v0)
        return
    launch_native("cpu", kernel, tensors, z.shape[0], z.shape[1], k, v0,
                  _backend.DTYPE_CODES[z.dtype])


def _chunk_backward(backend: str, z, y, lse, alpha, beta, gamma, targets, delta, v0: int) -> None:
    if backend == "torch":
        _chunk_backward_torch(z, y, lse, alpha, beta, gamma, targets, delta, v0)
        return
    kernel = KERNELS.kernel("chunk_backward", backend)
    tensors = [z, y, lse, alpha, beta, gamma, targets, delta]
    if backend == "triton":
        kernel(*tensors, v0)
        return
    launch_native("cpu", kernel, tensors, z.shape[0], z.shape[1], v0,
                  _backend.DTYPE_CODES[z.dtype])


class _Head(NamedTuple):
    """One model's side of the logits: its kept hidden rows (compute dtype), weight, bias."""

    rows: Tensor  # [n, H] in the compute dtype
    weight: Tensor  # [V, H] any float dtype and strides
    bias: Tensor | None  # [V]

    def block(self, w: Tensor, b: Tensor | None, t0: int, t1: int, inv_t: float,
              buf: Tensor | None = None) -> Tensor:
        """The contiguous logits block ``[t1 - t0, vc]`` for the weight rows ``w`` (compute
        dtype) and their bias ``b``, scaled by 1 / temperature; written into the flat buffer
        ``buf`` when given (see :func:`_block_buffer`)."""
        h = self.rows[t0:t1]
        if buf is not None:
            z = buf[:h.shape[0] * w.shape[0]].view(h.shape[0], w.shape[0])
            torch.addmm(b, h, w.T, out=z) if b is not None else torch.mm(h, w.T, out=z)
        else:
            z = torch.addmm(b, h, w.T) if b is not None else h @ w.T
        if inv_t != 1.0:
            z.mul_(inv_t)
        return z

    def vocab_slice(self, v0: int, v1: int) -> tuple[Tensor, Tensor | None]:
        acc = self.rows.dtype
        w = self.weight[v0:v1].to(acc)
        b = None if self.bias is None else self.bias[v0:v1].to(acc)
        return w, b


def _block_buffer(head: _Head | None, rows: int, cols: int) -> Tensor | None:
    """One flat buffer for every logits block of a pass, ``rows x cols`` elements. Reused
    rather than allocated per block: blocks of a few MiB freed and allocated again make the
    C allocator keep (and count) several of them at once."""
    if head is None:
        return None
    n, vocab = head.rows.shape[0], head.weight.shape[0]
    return torch.empty(min(rows, n) * min(cols, vocab), dtype=head.rows.dtype,
                       device=head.rows.device)


def _tile_fused(backend: str, head: _Head, ref: _Head | None) -> bool:
    """Whether the Triton backend runs the tiled kernels (the logits product by tl.dot inside
    the kernel): float32 math (tl.dot has no float64 on GPUs) and operands with unit column
    stride; otherwise it runs the block path (a torch product, then the chunk kernels)."""
    if backend != "triton" or head.rows.dtype != torch.float32:
        return False
    heads = (head,) if ref is None else (head, ref)
    return all(h.rows.stride(1) == 1 and h.weight.stride(1) == 1 and (
        h.bias is None or h.bias.stride(0) == 1) for h in heads)


def _kept_rows(hidden: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """The kept tokens' positions ``[n]`` and their hidden rows ``[n, H]`` in the compute dtype."""
    idx = keep.nonzero().squeeze(1)
    acc = acc_dtype(hidden.dtype)
    if idx.numel() == hidden.shape[0] and hidden.is_contiguous():
        # Every token kept: the rows are hidden itself (read only), not an N x H copy.
        return idx, hidden.to(acc)
    return idx, hidden.index_select(0, idx).to(acc)


def _vocab_forward(backend: str, op: str, head: _Head, inv_t: float, chunks: tuple[int, int], *,
                   ref: _Head | None = None, targets: Tensor | None = None,
                   with_s1: bool = False, k: int = 0) -> dict[str, Tensor]:
    """One pass over the vocabulary: the per-token statistics of the kept rows (see
    :func:`_chunk_forward_torch`). Returns the [n] (top-k: [n, k]) statistics by name."""
    n = head.rows.shape[0]
    vocab = head.weight.shape[0]
    acc = head.rows.dtype
    dev = head.rows.device

    def vec(fill: float) -> Tensor:
        return torch.full((n,), fill, dtype=acc, device=dev)

    st: dict[str, Tensor | None] = {"m": vec(-math.inf), "s": vec(0.0)}
    st["s1"] = vec(0.0) if with_s1 else None
    st["my"] = vec(-math.inf) if ref is not None else None
    st["sy"] = vec(0.0) if ref is not None else None
    st["tgt"] = vec(0.0) if targets is not None else None
    st["best_vals"] = torch.full((n, k), -math.inf, dtype=acc, device=dev) if k else None
    st["best_ids"] = torch.full((n, k), -1, dtype=torch.int64, device=dev) if k else None
    if not k and _tile_fused(backend, head, ref):
        # One launch over the whole vocabulary, the logits never stored.
        KERNELS.kernel("fused_forward", "triton")(
            head.rows, head.weight, head.bias, *(ref or (None, None, None)), targets,
            st["m"], st["s"], st["s1"], st["my"], st["sy"], st["tgt"], inv_t)
        return {key: value for key, value in st.items() if value is not None}
    ct, cv = chunks
    zbuf, ybuf = _block_buffer(head, ct, cv), _block_buffer(ref, ct, cv)
    for v0 in range(0, vocab, cv):
        v1 = min(v0 + cv, vocab)
        w, b = head.vocab_slice(v0, v1)
        wr, br = ref.vocab_slice(v0, v1) if ref is not None else (None, None)
        for t0 in range(0, n, ct):
            t1 = min(t0 + ct, n)
            z = head.block(w, b, t0, t1, inv_t, zbuf)
            y = ref.block(wr, br, t0, t1, inv_t, ybuf) if ref is not None else None
            _chunk_forward(backend, op, z, y, _opt(targets, t0, t1),
                           *(_opt(st[key], t0, t1) for key in
                             ("m", "s", "s1", "my", "sy", "tgt", "best_vals", "best_ids")),
                           v0)
    return {key: value for key, value in st.items() if value is not None}


def _vocab_backward(backend: str, head: _Head, inv_t: float, chunks: tuple[int, int],
                    lse: Tensor, alpha: Tensor, *, beta: Tensor | None = None,
                    gamma: Tensor | None = None, ref: _Head | None = None,
                    targets: Tensor | None = None, delta: Tensor | None = None,
                    need_weight: bool = True, need_bias: bool = True,
                    extra_weight_grad=None) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Gradients of the kept rows, the weight and the bias, given the gradient of the loss with
    respect to the (tempered) logits, ``dz = p * (alpha + beta z + gamma y) + delta 1[target]``
    per token. The coefficients already carry the 1 / temperature of ``z = (h W^T + b) / T``.

    ``extra_weight_grad(v0, v1, grad_w_block, grad_b_block)`` may add sparse contributions
    (the distillation loss's teacher ids) to each weight block before it is stored.

    Returns ``(grad_rows [n, H] compute dtype, grad_weight like weight or None, grad_bias or
    None)``.
    """
    rows = head.rows
    n, width = rows.shape
    vocab = head.weight.shape[0]
    acc = rows.dtype
    grad_rows = torch.zeros_like(rows)
    grad_w = torch.empty(head.weight.shape, dtype=head.weight.dtype, device=rows.device) \
        if need_weight else None
    grad_b = None
    if need_bias and head.bias is not None:
        grad_b = torch.empty(vocab, dtype=head.bias.dtype, device=rows.device)
    ct, cv = chunks
    tiled = _tile_fused(backend, head, ref)
    fused_bwd = KERNELS.kernel("fused_backward", "triton") if tiled else None
    zbuf = _block_buffer(head, ct, cv)
    ybuf = _block_buffer(ref, ct, cv) if not tiled else None
    for v0 in range(0, vocab, cv):
        v1 = min(v0 + cv, vocab)
        w, b = head.vocab_slice(v0, v1)
        wr, br = (ref.vocab_slice(v0, v1) if ref is not None and not tiled
                  else (None, None))
        gw = None
        if grad_w is not None:
            # Accumulate straight into the output where it has the compute dtype (no copy).
            gw = grad_w[v0:v1].zero_() if grad_w.dtype == acc else torch.zeros(
                (v1 - v0, width), dtype=acc, device=rows.device)
        gb = torch.zeros(v1 - v0, dtype=acc, device=rows.device) if grad_b is not None else None
        for t0 in range(0, n, ct):
            t1 = min(t0 + ct, n)
            if tiled:
                # The block's gradient straight from the tiles (tl.dot): no logits block.
                z = zbuf[:(t1 - t0) * (v1 - v0)].view(t1 - t0, v1 - v0)
                fused_bwd(rows[t0:t1], head.weight, head.bias,
                          *((ref.rows[t0:t1], ref.weight, ref.bias) if ref is not None
                            else (None, None, None)),
                          z, v0, lse[t0:t1], alpha[t0:t1], _opt(beta, t0, t1),
                          _opt(gamma, t0, t1), _opt(targets, t0, t1), _opt(delta, t0, t1),
                          inv_t)
            else:
                z = head.block(w, b, t0, t1, inv_t, zbuf)
                y = ref.block(wr, br, t0, t1, inv_t, ybuf) if ref is not None else None
                _chunk_backward(backend, z, y, lse[t0:t1], alpha[t0:t1], _opt(beta, t0, t1),
                                _opt(gamma, t0, t1), _opt(targets, t0, t1),
                                _opt(delta, t0, t1), v0)
            grad_rows[t0:t1].addmm_(z, w)
            if gw is not None:
                gw.addmm_(z.T, rows[t0:t1])
            if gb is not None:
                gb += z.sum(0)
        if extra_weight_grad is not None:
            extra_weight_grad(v0, v1, gw, gb)
        if grad_w is not None and gw.data_ptr() != grad_w[v0:v1].data_ptr():
            grad_w[v0:v1] = gw
        if grad_b is not None:
            grad_b[v0:v1] = gb
    return grad_rows, grad_w, grad_b


def _scatter_rows(grad_rows: Tensor, idx: Tensor, hidden: Tensor) -> Tensor:
    """The ``[N, H]`` hidden gradient: the kept rows' gradients at their positions, 0 elsewhere."""
    if idx.numel() == hidden.shape[0] and grad_rows.is_contiguous():
        return grad_rows.to(hidden.dtype)  # every token kept: no N x H copy
    out = torch.zeros(hidden.shape, dtype=grad_rows.dtype, device=hidden.device)
    out.index_copy_(0, idx, grad_rows)
    return out.to(hidden.dtype)


def _keep(n: int, device: torch.device, mask: Tensor | None) -> Tensor:
    return torch.ones(n, dtype=torch.bool, device=device) if mask is None else mask.clone()


def _lse(st: dict[str, Tensor], m: str = "m", s: str = "s") -> Tensor:
    return st[m] + torch.log(st[s])


# --------------------------------------------------------------------------------------------
# Data checks (values, not shapes): run inside each op before any kernel, so they also hold
# under torch.compile, where the public function's Python checks are traced, not run.
# --------------------------------------------------------------------------------------------


def _check_targets(op: str, targets: Tensor, keep: Tensor, vocab: int) -> None:
    bad = keep & ((targets < 0) | (targets >= vocab))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{op}: targets[{i}] = {int(targets[i])} is outside [0, V = {vocab}) "
                         "(skip a token with ignore_index or mask)")


def _check_teacher(op: str, ids: Tensor, logprobs: Tensor, keep: Tensor, vocab: int,
                   other_bucket: bool) -> None:
    if ids.numel() == 0:
        return
    kept = keep.unsqueeze(1)
    bad = kept & ((ids < 0) | (ids >= vocab))
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{op}: teacher_ids[{i}, {j}] = {int(ids[i, j])} is outside "
                         f"[0, V = {vocab})")
    srt = ids.sort(1).values
    dup = keep & (srt[:, 1:] == srt[:, :-1]).any(1)
    if bool(dup.any()):
        i = int(dup.nonzero()[0, 0])
        raise ValueError(f"{op}: teacher_ids[{i}] repeats an id ({ids[i].tolist()}); the k ids "
                         "of a token must differ")
    lp = logprobs.to(acc_dtype(logprobs.dtype))
    # Log-probabilities: NaN or above 0 (beyond rounding) means logits or probabilities were
    # passed instead (the original FIRST code mixed them up).
    bad = kept & (torch.isnan(lp) | (lp > 1e-4))
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"{op}: teacher_logprobs[{i}, {j}] = {float(lp[i, j])} is not a "
                         "log-probability (must be <= 0 or -inf)")
    empty = keep & torch.isneginf(lp).all(1)
    if bool(empty.any()):
        i = int(empty.nonzero()[0, 0])
        raise ValueError(f"{op}: teacher_logprobs[{i}] is all -inf: the teacher puts no mass "
                         "on its own top-k")
    if other_bucket:
        over = keep & (torch.logsumexp(lp, 1) > 1e-4)
        if bool(over.any()):
            i = int(over.nonzero()[0, 0])
            raise ValueError(f"{op}: teacher_logprobs[{i}] holds probability "
                             f"{float(torch.logsumexp(lp[i], 0).exp()):.6g} > 1")


# --------------------------------------------------------------------------------------------
# token_logprobs
# --------------------------------------------------------------------------------------------


def _chunks(chunk_tokens: int, chunk_vocab: int) -> tuple[int, int]:
    return (chunk_tokens or CHUNK_TOKENS, chunk_vocab or CHUNK_VOCAB)


def _token_logprobs_impl(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                         mask: Tensor | None, temperature: float, ignore_index: int,
                         with_entropy: bool, chunk_tokens: int, chunk_vocab: int,
                         backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (logprobs [N], entropy [N] (zeros without with_entropy), lse [N]: the log-sum-exp
    of the tempered logits, kept for the backward)."""
    op = "token_logprobs"
    n = hidden.shape[0]
    acc = acc_dtype(hidden.dtype)
    keep = _keep(n, hidden.device, mask) & (targets != ignore_index)
    _check_targets(op, targets, keep, weight.shape[0])
    lp, ent, lse = (torch.zeros(n, dtype=acc, device=hidden.device) for _ in range(3))
    idx, rows = _kept_rows(hidden, keep)
    if idx.numel() == 0:
        return lp, ent, lse
    st = _vocab_forward(backend, op, _Head(rows, weight, bias), 1.0 / temperature,
                        _chunks(chunk_tokens, chunk_vocab), targets=targets[idx].contiguous(),
                        with_s1=with_entropy)
    lse_k = _lse(st)
    lp[idx] = st["tgt"] - lse_k
    lse[idx] = lse_k
    if with_entropy:
        # H = lse - E_p[z], E_p[z] = s1 / s.
        ent[idx] = lse_k - st["s1"] / st["s"]
    return lp, ent, lse


def _fake_vectors(hidden: Tensor, count: int) -> tuple[Tensor, ...]:
    acc = acc_dtype(hidden.dtype)
    return tuple(hidden.new_empty(hidden.shape[0], dtype=acc) for _ in range(count))


_token_logprobs_op = torch.library.custom_op(
    "ponder::token_logprobs", _token_logprobs_impl, mutates_args=()
)


@_token_logprobs_op.register_fake
def _(hidden, weight, bias, targets, mask, temperature, ignore_index, with_entropy,
      chunk_tokens, chunk_vocab, backend):
    return _fake_vectors(hidden, 3)


def _token_logprobs_setup(ctx, inputs, output):
    hidden, weight, bias, targets, mask, temperature, ignore_index, with_entropy, ct, cv, be = \
        inputs
    _, ent, lse = output
    ctx.save_for_backward(hidden, weight, bias, targets, mask, ent, lse)
    ctx.args = (temperature, ignore_index, with_entropy, _chunks(ct, cv), be)
    ctx.mark_non_differentiable(lse)


def _token_logprobs_backward_impl(
    g_lp: Tensor, g_ent: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None,
    targets: Tensor, mask: Tensor | None, ent: Tensor, lse: Tensor, temperature: float,
    ignore_index: int, with_entropy: bool, chunk_tokens: int, chunk_vocab: int, backend: str,
    need_weight: bool, need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``d log p_t / dz = 1[t] - p`` and ``dH / dz = -p (log p + H) = -p (z - lse + H)``:
    ``dz = p (alpha + beta z) + delta 1[t]`` with ``alpha = -g_lp - g_H (H - lse)``,
    ``beta = -g_H``, ``delta = g_lp``, each times 1 / T. Returns (grad_hidden, grad_weight
    (``[0]`` when not needed), grad_bias (``[0]`` when not needed or absent))."""
    inv_t = 1.0 / temperature
    keep = _keep(hidden.shape[0], hidden.device, mask) & (targets != ignore_index)
    idx, rows = _kept_rows(hidden, keep)
    acc = rows.dtype
    g_lp = g_lp.to(acc)[idx]
    alpha = -g_lp
    beta = None
    if with_entropy:
        g_h = g_ent.to(acc)[idx]
        alpha = alpha - g_h * (ent[idx] - lse[idx])
        beta = (-g_h * inv_t).contiguous()
    gr, gw, gb = _vocab_backward(
        backend, _Head(rows, weight, bias), inv_t, _chunks(chunk_tokens, chunk_vocab),
        lse[idx].contiguous(), (alpha * inv_t).contiguous(), beta=beta,
        targets=targets[idx].contiguous(), delta=(g_lp * inv_t).contiguous(),
        need_weight=need_weight, need_bias=need_bias)
    return _grad_outputs(gr, gw, gb, idx, hidden)


def _grad_outputs(gr: Tensor, gw: Tensor | None, gb: Tensor | None, idx: Tensor,
                  hidden: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The backward ops' outputs: the scattered hidden gradient, and ``[0]`` placeholders for
    the weight / bias gradients not asked for (a custom op returns tensors, never None)."""
    empty = hidden.new_empty(0)
    return (_scatter_rows(gr, idx, hidden), empty if gw is None else gw,
            empty.clone() if gb is None else gb)


def _fake_grads(hidden, weight, bias, need_weight, need_bias):
    return (torch.empty_like(hidden, memory_format=torch.contiguous_format),
            weight.new_empty(weight.shape if need_weight else (0,)),
            (bias if bias is not None else weight).new_empty(
                (weight.shape[0],) if need_bias and bias is not None else (0,)))


_token_logprobs_backward_op = torch.library.custom_op(
    "ponder::token_logprobs_backward", _token_logprobs_backward_impl, mutates_args=())


@_token_logprobs_backward_op.register_fake
def _(g_lp, g_ent, hidden, weight, bias, targets, mask, ent, lse, temperature, ignore_index,
      with_entropy, ct, cv, be, need_weight, need_bias):
    return _fake_grads(hidden, weight, bias, need_weight, need_bias)


def _grads_or_none(ctx, grads: tuple[Tensor, Tensor, Tensor], bias: Tensor | None):
    gh, gw, gb = grads
    return (gh if ctx.needs_input_grad[0] else None, gw if ctx.needs_input_grad[1] else None,
            gb if ctx.needs_input_grad[2] and bias is not None else None)


def _token_logprobs_backward(ctx, g_lp, g_ent, _g_lse):
    hidden, weight, bias, targets, mask, ent, lse = ctx.saved_tensors
    temperature, ignore_index, with_entropy, (ct, cv), backend = ctx.args
    g_lp = torch.zeros_like(lse) if g_lp is None else g_lp
    g_ent = torch.zeros_like(lse) if g_ent is None else g_ent
    grads = torch.ops.ponder.token_logprobs_backward(
        g_lp, g_ent, hidden, weight, bias, targets, mask, ent, lse, temperature, ignore_index,
        with_entropy, ct, cv, backend, ctx.needs_input_grad[1],
        ctx.needs_input_grad[2] and bias is not None)
    return (*_grads_or_none(ctx, grads, bias), *(None,) * 8)


_token_logprobs_op.register_autograd(_token_logprobs_backward, setup_context=_token_logprobs_setup)


# --------------------------------------------------------------------------------------------
# kl_to_reference
# --------------------------------------------------------------------------------------------


def _kl_impl(hidden: Tensor, weight: Tensor, bias: Tensor | None, ref_hidden: Tensor,
             ref_weight: Tensor, ref_bias: Tensor | None, mask: Tensor | None,
             temperature: float, chunk_tokens: int, chunk_vocab: int,
             backend: str) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (kl [N], lse [N] of the policy's logits, mean_d [N] = E_pi[z - y]), the last two
    kept for the backward."""
    op = "kl_to_reference"
    n = hidden.shape[0]
    acc = acc_dtype(hidden.dtype)
    kl, lse, mean_d = (torch.zeros(n, dtype=acc, device=hidden.device) for _ in range(3))
    keep = _keep(n, hidden.device, mask)
    idx, rows = _kept_rows(hidden, keep)
    if idx.numel() == 0:
        return kl, lse, mean_d
    ref_rows = ref_hidden.index_select(0, idx).to(acc)
    st = _vocab_forward(backend, op, _Head(rows, weight, bias), 1.0 / temperature,
                        _chunks(chunk_tokens, chunk_vocab),
                        ref=_Head(ref_rows, ref_weight, ref_bias), with_s1=True)
    # KL = E_p[z - y] - lse(z) + lse(y).
    lse_z, lse_y = _lse(st), _lse(st, "my", "sy")
    ed = st["s1"] / st["s"]
    kl[idx] = ed - lse_z + lse_y
    lse[idx] = lse_z
    mean_d[idx] = ed
    return kl, lse, mean_d


_kl_op = torch.library.custom_op("ponder::kl_to_reference", _kl_impl, mutates_args=())


@_kl_op.register_fake
def _(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, temperature, ct, cv, be):
    return _fake_vectors(hidden, 3)


def _kl_setup(ctx, inputs, output):
    hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, temperature, ct, cv, be = inputs
    _, lse, mean_d = output
    ctx.save_for_backward(hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, lse,
                          mean_d)
    ctx.args = (temperature, _chunks(ct, cv), be)
    ctx.mark_non_differentiable(lse, mean_d)


def _kl_backward_impl(
    g_kl: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None, ref_hidden: Tensor,
    ref_weight: Tensor, ref_bias: Tensor | None, mask: Tensor | None, lse: Tensor,
    mean_d: Tensor, temperature: float, chunk_tokens: int, chunk_vocab: int, backend: str,
    need_weight: bool, need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``dKL / dz_v = p_v (d_v - E_p[d])`` with ``d = z - y``: ``alpha = -g E_p[d]``,
    ``beta = g``, ``gamma = -g`` (times 1 / T). The reference side gets no gradient."""
    inv_t = 1.0 / temperature
    keep = _keep(hidden.shape[0], hidden.device, mask)
    idx, rows = _kept_rows(hidden, keep)
    ref_rows = ref_hidden.index_select(0, idx).to(rows.dtype)
    g = g_kl.to(rows.dtype)[idx] * inv_t
    gr, gw, gb = _vocab_backward(
        backend, _Head(rows, weight, bias), inv_t, _chunks(chunk_tokens, chunk_vocab),
        lse[idx].contiguous(), (-g * mean_d[idx]).contiguous(), beta=g.contiguous(),
        gamma=(-g).contiguous(), ref=_Head(ref_rows, ref_weight, ref_bias),
        need_weight=need_weight, need_bias=need_bias)
    return _grad_outputs(gr, gw, gb, idx, hidden)


_kl_backward_op = torch.library.custom_op("ponder::kl_to_reference_backward", _kl_backward_impl,
                                          mutates_args=())


@_kl_backward_op.register_fake
def _(g_kl, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, lse, mean_d,
      temperature, ct, cv, be, need_weight, need_bias):
    return _fake_grads(hidden, weight, bias, need_weight, need_bias)


def _kl_backward(ctx, g_kl, _g_lse, _g_mean_d):
    hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, lse, mean_d = ctx.saved_tensors
    temperature, (ct, cv), backend = ctx.args
    grads = torch.ops.ponder.kl_to_reference_backward(
        g_kl, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, mask, lse, mean_d,
        temperature, ct, cv, backend, ctx.needs_input_grad[1],
        ctx.needs_input_grad[2] and bias is not None)
    return (*_grads_or_none(ctx, grads, bias), *(None,) * 8)


_kl_op.register_autograd(_kl_backward, setup_context=_kl_setup)


# --------------------------------------------------------------------------------------------
# topk_logprobs (no gradient)
# --------------------------------------------------------------------------------------------


def _topk_impl(hidden: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor | None, k: int,
               temperature: float, chunk_tokens: int, chunk_vocab: int,
               backend: str) -> tuple[Tensor, Tensor, Tensor]:
    n = hidden.shape[0]
    acc = acc_dtype(hidden.dtype)
    dev = hidden.device
    ids = torch.full((n, k), -1, dtype=torch.int64, device=dev)
    vals = torch.full((n, k), -math.inf, dtype=acc, device=dev)
    mass = torch.zeros(n, dtype=acc, device=dev)
    keep = _keep(n, dev, mask)
    idx, rows = _kept_rows(hidden, keep)
    if idx.numel() == 0:
        return ids, vals, mass
    st = _vocab_forward(backend, "topk_logprobs", _Head(rows, weight, bias), 1.0 / temperature,
                        _chunks(chunk_tokens, chunk_vocab), k=k)
    top = st["best_vals"] - _lse(st).unsqueeze(1)
    ids[idx] = st["best_ids"]
    vals[idx] = top
    mass[idx] = top.exp().sum(1)
    return ids, vals, mass


_topk_op = torch.library.custom_op("ponder::topk_logprobs", _topk_impl, mutates_args=())


@_topk_op.register_fake
def _(hidden, weight, bias, mask, k, temperature, ct, cv, be):
    n = hidden.shape[0]
    acc = acc_dtype(hidden.dtype)
    return (hidden.new_empty(n, k, dtype=torch.int64), hidden.new_empty(n, k, dtype=acc),
            hidden.new_empty(n, dtype=acc))


# --------------------------------------------------------------------------------------------
# topk_distill_loss
# --------------------------------------------------------------------------------------------


def _student_id_logits(rows: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor,
                       inv_t: float) -> Tensor:
    """``a[i, j] = z[i, ids[i, j]]``: the student's tempered logits at the teacher's ids,
    ``[n, k]``, from the k gathered weight rows per token (O(n k H), no vocabulary pass)."""
    acc = rows.dtype
    # [n, k, H]: the k weight rows of each token.
    w = weight.index_select(0, ids.reshape(-1)).to(acc).view(*ids.shape, weight.shape[1])
    a = torch.bmm(w, rows.unsqueeze(2)).squeeze(2)
    if bias is not None:
        a = a + bias.index_select(0, ids.reshape(-1)).to(acc).view(ids.shape)
    return a * inv_t


def _distill_terms(a: Tensor, log_p: Tensor, lse: Tensor | None,
                   other_bucket: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per token: the loss ``KL(P' || Q)``, ``dloss/da`` ([n, k]) and, with the other bucket,
    ``dloss/dL`` for the student's full log-sum-exp L ([n]).

    Without the other bucket ``Q = softmax(a)`` and ``dloss/da = Q - P'``. With it
    ``log Q_i = a_i - L``, ``log Q_o = log1mexp(logsumexp(a) - L)``, and
    ``dloss/da_i = -P'_i + P'_o Q_i / Q_o``, ``dloss/dL = 1 - P'_o / Q_o``.
    """
    k = a.shape[1]
    if not other_bucket:
        log_q = a.log_softmax(-1)
        return _kl_terms(log_p, log_q), log_q.exp() - log_p.exp(), None
    log_q_ids = a - lse.unsqueeze(1)
    log_q_o = log1mexp(torch.logsumexp(log_q_ids, -1).clamp(max=0.0))
    log_q = torch.cat([log_q_ids, log_q_o.unsqueeze(1)], 1)
    p = log_p.exp()
    p_o = p[:, k]
    ratio = torch.where(p_o > 0, torch.exp(log_p[:, k] - log_q_o), torch.zeros_like(p_o))
    g_a = -p[:, :k] + ratio.unsqueeze(1) * log_q_ids.exp()
    return _kl_terms(log_p, log_q), g_a, 1.0 - ratio


def _distill_impl(hidden: Tensor, weight: Tensor, bias: Tensor | None, teacher_ids: Tensor,
                  teacher_logprobs: Tensor, mask: Tensor | None, temperature: float,
                  temperature_c: float, other_bucket: bool, chunk_tokens: int, chunk_vocab: int,
                  backend: str) -> tuple[Tensor, Tensor]:
    """Returns (loss per token [N], lse [N]: the student's full log-sum-exp with the other
    bucket, else zeros), the second kept for the backward."""
    op = "topk_distill_loss"
    n = hidden.shape[0]
    acc = acc_dtype(hidden.dtype)
    keep = _keep(n, hidden.device, mask)
    _check_teacher(op, teacher_ids, teacher_logprobs, keep, weight.shape[0], other_bucket)
    loss, lse = (torch.zeros(n, dtype=acc, device=hidden.device) for _ in range(2))
    idx, rows = _kept_rows(hidden, keep)
    if idx.numel() == 0:
        return loss, lse
    inv_t = 1.0 / temperature
    ids = teacher_ids[idx]
    a = _student_id_logits(rows, weight, bias, ids, inv_t)
    log_p = _teacher_log_buckets(teacher_logprobs[idx].to(acc), temperature_c, other_bucket)
    lse_k = None
    if other_bucket:
        st = _vocab_forward(backend, op, _Head(rows, weight, bias), inv_t,
                            _chunks(chunk_tokens, chunk_vocab))
        lse_k = _lse(st)
        lse[idx] = lse_k
    loss[idx] = _distill_terms(a, log_p, lse_k, other_bucket)[0]
    return loss, lse


_distill_op = torch.library.custom_op("ponder::topk_distill_loss", _distill_impl,
                                      mutates_args=())


@_distill_op.register_fake
def _(hidden, weight, bias, teacher_ids, teacher_logprobs, mask, temperature, temperature_c,
      other_bucket, ct, cv, be):
    return _fake_vectors(hidden, 2)


def _distill_setup(ctx, inputs, output):
    (hidden, weight, bias, teacher_ids, teacher_logprobs, mask, temperature, temperature_c,
     other_bucket, ct, cv, be) = inputs
    ctx.save_for_backward(hidden, weight, bias, teacher_ids, teacher_logprobs, mask, output[1])
    ctx.args = (temperature, temperature_c, other_bucket, _chunks(ct, cv), be)
    ctx.mark_non_differentiable(output[1])


def _distill_backward_impl(
    g_loss: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None, teacher_ids: Tensor,
    teacher_logprobs: Tensor, mask: Tensor | None, lse: Tensor, temperature: float,
    temperature_c: float, other_bucket: bool, chunk_tokens: int, chunk_vocab: int, backend: str,
    need_weight: bool, need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The k teacher ids get ``g dloss/da`` (sparse: gathered weight rows, index_add into the
    weight gradient); with the other bucket the whole vocabulary also gets ``g dloss/dL p_v``
    through one backward pass over the vocabulary."""
    chunks = _chunks(chunk_tokens, chunk_vocab)
    inv_t = 1.0 / temperature
    keep = _keep(hidden.shape[0], hidden.device, mask)
    idx, rows = _kept_rows(hidden, keep)
    acc = rows.dtype
    ids = teacher_ids[idx]
    g = g_loss.to(acc)[idx]
    a = _student_id_logits(rows, weight, bias, ids, inv_t)
    log_p = _teacher_log_buckets(teacher_logprobs[idx].to(acc), temperature_c, other_bucket)
    _, g_a, g_l = _distill_terms(a, log_p, lse[idx] if other_bucket else None, other_bucket)
    coef = g_a * (g * inv_t).unsqueeze(1)  # [n, k], the gradient on the raw logits at the ids
    need_w, need_b = need_weight, need_bias and bias is not None
    w_ids = weight.index_select(0, ids.reshape(-1)).to(acc).view(*ids.shape, weight.shape[1])
    sparse_rows = torch.bmm(coef.unsqueeze(1), w_ids).squeeze(1)  # [n, H]

    def add_ids(v0: int, v1: int, gw: Tensor | None, gb: Tensor | None) -> None:
        inside = (ids >= v0) & (ids < v1)
        tok, slot = inside.nonzero().unbind(1)
        if gw is not None:
            gw.index_add_(0, ids[tok, slot] - v0, coef[tok, slot].unsqueeze(1) * rows[tok])
        if gb is not None:
            gb.index_add_(0, ids[tok, slot] - v0, coef[tok, slot])

    if other_bucket:
        gr, gw, gb = _vocab_backward(
            backend, _Head(rows, weight, bias), inv_t, chunks, lse[idx].contiguous(),
            (g * g_l * inv_t).contiguous(), need_weight=need_w, need_bias=need_b,
            extra_weight_grad=add_ids)
        gr = gr + sparse_rows
    else:
        # No vocabulary pass: only the teacher's ids have a gradient.
        gr = sparse_rows
        vocab, width = weight.shape
        gw_acc = torch.zeros(vocab, width, dtype=acc, device=rows.device) if need_w else None
        gb_acc = torch.zeros(vocab, dtype=acc, device=rows.device) if need_b else None
        add_ids(0, vocab, gw_acc, gb_acc)
        gw = None if gw_acc is None else gw_acc.to(weight.dtype)
        gb = None if gb_acc is None else gb_acc.to(bias.dtype)
    return _grad_outputs(gr, gw, gb, idx, hidden)


_distill_backward_op = torch.library.custom_op("ponder::topk_distill_loss_backward",
                                               _distill_backward_impl, mutates_args=())


@_distill_backward_op.register_fake
def _(g_loss, hidden, weight, bias, teacher_ids, teacher_logprobs, mask, lse, temperature,
      temperature_c, other_bucket, ct, cv, be, need_weight, need_bias):
    return _fake_grads(hidden, weight, bias, need_weight, need_bias)


def _distill_backward(ctx, g_loss, _g_lse):
    hidden, weight, bias, teacher_ids, teacher_logprobs, mask, lse = ctx.saved_tensors
    temperature, temperature_c, other_bucket, (ct, cv), backend = ctx.args
    grads = torch.ops.ponder.topk_distill_loss_backward(
        g_loss, hidden, weight, bias, teacher_ids, teacher_logprobs, mask, lse, temperature,
        temperature_c, other_bucket, ct, cv, backend, ctx.needs_input_grad[1],
        ctx.needs_input_grad[2] and bias is not None)
    return (*_grads_or_none(ctx, grads, bias), *(None,) * 9)


_distill_op.register_autograd(_distill_backward, setup_context=_distill_setup)


# --------------------------------------------------------------------------------------------
# Scalar losses with the gradient computed in the forward (3 matrix products, as eager)
# --------------------------------------------------------------------------------------------
#
# For a scalar loss sum_i w_i f_i with weights known at the forward, the gradient of the logits
# is known there too, up to the one scalar the backward brings (d out / d loss). So the forward
# walks the kept tokens in blocks of whole vocabulary rows ([c, V]: the log-sum-exp needs the
# whole row before the probabilities exist), and each block's logits are turned in place into
# their gradient and sent to hidden and weight right away: one product for the logits and two
# for the gradients, as the eager path, against four for the per-token ops (which must recompute
# the logits once they know each token's incoming gradient). The backward only scales the
# stored gradients.

# Elements of one [c, V] block of the fused losses (64 MiB in float32): c = this // V rows
# (the KL holds two such blocks, policy and reference), unless chunk_tokens is given.
FUSED_BLOCK_ELEMENTS = 1 << 24
_FUSED_KINDS = ("logprob", "kl", "distill_other")


def _fused_rows(chunk_tokens: int, vocab: int, blocks: int) -> int:
    """The token rows of one fused block: ``chunk_tokens`` when given (> 0), else the budget."""
    if chunk_tokens > 0:
        return chunk_tokens
    return max(1, FUSED_BLOCK_ELEMENTS // (blocks * max(vocab, 1)))


def _full_logits(head: _Head, t0: int, t1: int, inv_t: float, cv: int,
                 buf: Tensor | None = None) -> Tensor:
    """The logits of the kept rows ``t0:t1`` over the whole vocabulary, ``[t1 - t0, V]``
    contiguous, in the compute dtype. A weight in the compute dtype is one product; a 16-bit
    weight is converted block by block (``cv`` rows), never whole."""
    h = head.rows[t0:t1]
    acc = h.dtype
    vocab = head.weight.shape[0]
    z = buf[:(t1 - t0) * vocab].view(t1 - t0, vocab) if buf is not None else torch.empty(
        t1 - t0, vocab, dtype=acc, device=h.device)
    if head.weight.dtype == acc:
        b = None if head.bias is None else head.bias.to(acc)
        torch.addmm(b, h, head.weight.T, out=z) if b is not None else torch.mm(
            h, head.weight.T, out=z)
    else:
        for v0 in range(0, vocab, cv):
            v1 = min(v0 + cv, vocab)
            w, b = head.vocab_slice(v0, v1)
            torch.addmm(b, h, w.T, out=z[:, v0:v1]) if b is not None else torch.mm(
                h, w.T, out=z[:, v0:v1])
    if inv_t != 1.0:
        z.mul_(inv_t)
    return z


def _send_grad(dz: Tensor, head: _Head, t0: int, t1: int, cv: int, grad_rows: Tensor | None,
               grad_w: Tensor | None, grad_b: Tensor | None) -> None:
    """Add the gradient of the logits block ``dz [c, V]`` (rows ``t0:t1``) to the kept rows'
    (``dz @ W``), the weight's (``dz^T @ h``, into a compute-dtype accumulator) and the bias's."""
    acc = dz.dtype
    h = head.rows[t0:t1]
    if head.weight.dtype == acc:
        if grad_rows is not None:
            torch.mm(dz, head.weight, out=grad_rows[t0:t1])
        if grad_w is not None:
            grad_w.addmm_(dz.T, h)
    else:
        vocab = head.weight.shape[0]
        for v0 in range(0, vocab, cv):
            v1 = min(v0 + cv, vocab)
            if grad_rows is not None:
                grad_rows[t0:t1].addmm_(dz[:, v0:v1], head.weight[v0:v1].to(acc))
            if grad_w is not None:
                grad_w[v0:v1].addmm_(dz[:, v0:v1].T, h)
    if grad_b is not None:
        grad_b += dz.sum(0)


def _fused_loss_impl(
    kind: str, hidden: Tensor, weight: Tensor, bias: Tensor | None, ref_hidden: Tensor | None,
    ref_weight: Tensor | None, ref_bias: Tensor | None, targets: Tensor | None,
    teacher_ids: Tensor | None, teacher_logprobs: Tensor | None, weights: Tensor | None,
    mask: Tensor | None, temperature: float, temperature_c: float, ignore_index: int,
    mean: bool, chunk_tokens: int, chunk_vocab: int, backend: str, need_hidden: bool,
    need_weight: bool, need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``sum_i w_i f_i`` over the kept tokens (``mean``: divided by their count), ``f`` the
    log-probability of the target (``kind="logprob"``), the KL to the reference (``"kl"``) or
    FIRST's loss with the other bucket (``"distill_other"``), and, for the inputs flagged
    ``need_*``, its gradient (else ``[0]`` placeholders): returns ``(loss [], grad_hidden
    [N, H] like hidden, grad_weight like weight, grad_bias like bias)``."""
    op = {"logprob": "token_logprobs_sum", "kl": "kl_to_reference_sum",
          "distill_other": "topk_distill_loss"}[kind]
    kernel_op = {"logprob": "token_logprobs", "kl": "kl_to_reference",
                 "distill_other": "topk_distill_loss"}[kind]
    n = hidden.shape[0]
    vocab = weight.shape[0]
    acc = acc_dtype(hidden.dtype)
    dev = hidden.device
    keep = _keep(n, dev, mask)
    if kind == "logprob":
        keep &= targets != ignore_index
        _check_targets(op, targets, keep, vocab)
    if kind == "distill_other":
        _check_teacher(op, teacher_ids, teacher_logprobs, keep, vocab, True)
    idx, rows = _kept_rows(hidden, keep)
    kept = idx.numel()
    wt = torch.ones(kept, dtype=acc, device=dev) if weights is None else weights[idx].to(acc)
    if mean:
        wt = wt / max(kept, 1)
    inv_t = 1.0 / temperature
    need_b = need_bias and bias is not None
    grad_rows = torch.zeros(rows.shape, dtype=acc, device=dev) if need_hidden else None
    # The weight's gradient accumulates in the compute dtype: in place of the result for a
    # float32 (float64) weight, in a float32 copy for a 16-bit one.
    grad_w = torch.zeros(weight.shape, dtype=acc, device=dev) if need_weight else None
    grad_b = torch.zeros(vocab, dtype=acc, device=dev) if need_b else None
    any_grad = need_hidden or need_weight or need_b
    head = _Head(rows, weight, bias)
    ref = None
    if kind == "kl":
        ref = _Head(ref_hidden.index_select(0, idx).to(acc), ref_weight, ref_bias)
    tg = targets[idx].contiguous() if kind == "logprob" else None
    ids = a = log_p = None
    if kind == "distill_other":
        ids = teacher_ids[idx]
        a = _student_id_logits(rows, weight, bias, ids, inv_t)
        log_p = _teacher_log_buckets(teacher_logprobs[idx].to(acc), temperature_c, True)
    # The KL holds two blocks (policy, reference) of the same rows: halving them would double
    # the passes over the weights (measured slower), and its eager path holds twice the logits.
    ct = _fused_rows(chunk_tokens, vocab, 1)
    cv = chunk_vocab or CHUNK_VOCAB
    total = torch.zeros((), dtype=acc, device=dev)
    zbuf, ybuf = _block_buffer(head, ct, vocab), _block_buffer(ref, ct, vocab)
    for t0 in range(0, kept, ct):
        t1 = min(t0 + ct, kept)
        c = t1 - t0
        z = _full_logits(head, t0, t1, inv_t, cv, zbuf)
        y = _full_logits(ref, t0, t1, inv_t, cv, ybuf) if ref is not None else None
        m = torch.full((c,), -math.inf, dtype=acc, device=dev)
        s = torch.zeros(c, dtype=acc, device=dev)
        s1 = torch.zeros(c, dtype=acc, device=dev) if kind == "kl" else None
        my = torch.full((c,), -math.inf, dtype=acc, device=dev) if y is not None else None
        sy = torch.zeros(c, dtype=acc, device=dev) if y is not None else None
        tgt = torch.zeros(c, dtype=acc, device=dev) if tg is not None else None
        _chunk_forward(backend, kernel_op, z, y,
                       _opt(tg, t0, t1), m, s, s1, my, sy, tgt, None, None, 0)
        lse = m + torch.log(s)
        w = wt[t0:t1]
        beta = gamma = delta = None
        if kind == "logprob":
            # d log p_t / dz = 1[t] - p.
            per = tgt - lse
            alpha = -w * inv_t
            delta = w * inv_t
        elif kind == "kl":
            # KL = E_p[d] - lse(z) + lse(y), d = z - y; dKL / dz = p (d - E_p[d]).
            ed = s1 / s
            per = ed - lse + (my + torch.log(sy))
            alpha, beta, gamma = -w * ed * inv_t, w * inv_t, -w * inv_t
        else:
            per, g_a, g_l = _distill_terms(a[t0:t1], log_p[t0:t1], lse, True)
            alpha = w * g_l * inv_t
            coef = g_a * (w * inv_t).unsqueeze(1)  # [c, k]: the sparse part, at the ids
        total += (w * per).sum()
        if not any_grad:
            continue
        _chunk_backward(backend, z, y, lse.contiguous(), alpha.contiguous(),
                        None if beta is None else beta.contiguous(),
                        None if gamma is None else gamma.contiguous(), _opt(tg, t0, t1),
                        None if delta is None else delta.contiguous(), 0)
        del y
        _send_grad(z, head, t0, t1, cv, grad_rows, grad_w, grad_b)
        if kind == "distill_other":
            _add_sparse_grads(coef, ids[t0:t1], rows[t0:t1], weight, t0, grad_rows, grad_w,
                              grad_b)
    empty = hidden.new_empty(0)
    gh = _scatter_rows(grad_rows, idx, hidden) if grad_rows is not None else empty
    gw = grad_w.to(weight.dtype) if grad_w is not None else empty.clone()
    gb = grad_b.to(bias.dtype) if grad_b is not None else empty.clone()
    return total, gh, gw, gb


def _add_sparse_grads(coef: Tensor, ids: Tensor, rows: Tensor, weight: Tensor, t0: int,
                      grad_rows: Tensor | None, grad_w: Tensor | None,
                      grad_b: Tensor | None) -> None:
    """Add the gradient ``coef [c, k]`` of the logits at the ids ``[c, k]`` (rows ``t0 ..``):
    ``coef @ W[ids]`` to the rows, ``coef h`` to the weight rows ``ids``, ``coef`` to the bias."""
    acc = rows.dtype
    flat = ids.reshape(-1)
    if grad_rows is not None:
        w_ids = weight.index_select(0, flat).to(acc).view(*ids.shape, weight.shape[1])
        grad_rows[t0:t0 + rows.shape[0]] += torch.bmm(coef.unsqueeze(1), w_ids).squeeze(1)
    if grad_w is not None:
        grad_w.index_add_(0, flat, (coef.unsqueeze(2) * rows.unsqueeze(1)).reshape(
            -1, rows.shape[1]))
    if grad_b is not None:
        grad_b.index_add_(0, flat, coef.reshape(-1))


_fused_loss_op = torch.library.custom_op("ponder::lm_head_fused_loss", _fused_loss_impl,
                                         mutates_args=())


@_fused_loss_op.register_fake
def _(kind, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets, teacher_ids,
      teacher_logprobs, weights, mask, temperature, temperature_c, ignore_index, mean, ct, cv,
      be, need_hidden, need_weight, need_bias):
    acc = acc_dtype(hidden.dtype)
    gh, gw, gb = _fake_grads(hidden, weight, bias, need_weight, need_bias)
    if not need_hidden:
        gh = hidden.new_empty(0)
    return hidden.new_empty((), dtype=acc), gh, gw, gb


def _fused_loss_setup(ctx, inputs, output):
    ctx.save_for_backward(*output[1:])
    ctx.mark_non_differentiable(*output[1:])
    # The gradients are outputs too: without this, autograd would hand the backward a zero
    # tensor the size of each (a second weight-sized tensor at the peak).
    ctx.set_materialize_grads(False)
    ctx.computed = inputs[-3:]  # need_hidden, need_weight, need_bias


def _scaled(grad: Tensor, g: Tensor) -> Tensor:
    """``g * grad``, where ``grad`` is the gradient the forward stored and ``g`` the incoming
    scalar. In eager mode without a copy: ``grad`` itself when ``g == 1`` (the usual case:
    ``loss.backward()``), else scaled in place; a copy would hold a second weight-sized tensor
    at the peak. So a graph through a fused loss is backpropagated once: a second backward
    (``retain_graph``) is refused by autograd's saved-tensor version check, or, at ``g == 1``,
    sees the same stored gradient. Under tracing (torch.compile, fake tensors) out of place."""
    if (torch.compiler.is_compiling() or type(grad) is not torch.Tensor
            or type(g) is not torch.Tensor or g.requires_grad):
        return grad * g.to(grad.dtype)
    if bool(g == 1):
        return grad
    return grad.mul_(g.to(grad.dtype))


def _fused_loss_backward(ctx, g_loss, _gh, _gw, _gb):
    gh, gw, gb = ctx.saved_tensors
    if g_loss is None:  # not materialised: nothing flows back
        return (None,) * 22
    need = ctx.needs_input_grad
    # A gradient the forward was not asked for (its need_* flag off) is a [0] placeholder:
    # None (zeros) then. The public functions set the flags from requires_grad.
    return (None, *(_scaled(t, g_loss) if need[i + 1] and ctx.computed[i] else None
                    for i, t in enumerate((gh, gw, gb))), *(None,) * 18)


_fused_loss_op.register_autograd(_fused_loss_backward, setup_context=_fused_loss_setup)


def _fused_loss(kind: str, hidden: Tensor, weight: Tensor, bias: Tensor | None, *,
                ref_hidden=None, ref_weight=None, ref_bias=None, targets=None, teacher_ids=None,
                teacher_logprobs=None, weights=None, mask=None, temperature=1.0,
                temperature_c=1.0, ignore_index=-100, mean=False, chunk_tokens=0,
                chunk_vocab=0, backend="cpu") -> Tensor:
    """Run the fused loss op: the gradient is computed in the forward for the inputs autograd
    will want it for (none under no_grad)."""
    grad_on = torch.is_grad_enabled()
    need_h = grad_on and hidden.requires_grad
    need_w = grad_on and weight.requires_grad
    need_b = grad_on and bias is not None and bias.requires_grad
    args = (kind, hidden, weight, bias, ref_hidden, ref_weight, ref_bias, targets, teacher_ids,
            teacher_logprobs, weights, mask, temperature, temperature_c, ignore_index, mean,
            chunk_tokens, chunk_vocab, backend, need_h, need_w, need_b)
    if need_h or need_w or need_b:
        return torch.ops.ponder.lm_head_fused_loss(*args)[0]
    return call_op(torch.ops.ponder.lm_head_fused_loss, _fused_loss_impl, *args)[0]


# --------------------------------------------------------------------------------------------
# Public API: validate, choose the backend, call the op.
# --------------------------------------------------------------------------------------------


def _check_head(op: str, hidden: object, weight: object, bias: object, prefix: str = "",
                device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    hidden = check_tensor(op, f"{prefix}hidden", hidden, dtype=FLOAT_DTYPES, ndim=2,
                          device=device)
    dev = hidden.device
    weight = check_tensor(op, f"{prefix}weight", weight, dtype=FLOAT_DTYPES, ndim=2, device=dev)
    if weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"{op}: {prefix}weight must have shape [V, H] with H = "
                         f"{prefix}hidden.shape[1] = {hidden.shape[1]}, got "
                         f"{tuple(weight.shape)}")
    if weight.shape[0] == 0:
        raise ValueError(f"{op}: {prefix}weight has an empty vocabulary (V = 0)")
    if bias is not None:
        check_tensor(op, f"{prefix}bias", bias, dtype=FLOAT_DTYPES, device=dev,
                     shape=(weight.shape[0],))
    return hidden, weight, bias


def _check_common(op: str, hidden: Tensor, mask: object, temperature: object,
                  chunk_tokens: object, chunk_vocab: object, backend: str | None
                  ) -> tuple[float, int, int, str]:
    if mask is not None:
        check_tensor(op, "mask", mask, dtype=torch.bool, device=hidden.device,
                     shape=(hidden.shape[0],))
    t = check_real(op, "temperature", temperature, positive=True)
    ct = check_int(op, "chunk_tokens", chunk_tokens or CHUNK_TOKENS, minimum=1)
    cv = check_int(op, "chunk_vocab", chunk_vocab or CHUNK_VOCAB, minimum=1)
    name = choose_backend(op, KERNELS, hidden, backend)
    return t, ct, cv, name


def _call(op, impl, args, differentiable):
    """``call_op``, except that a call needing gradients goes through the registered op (its
    autograd formula); the eager shortcut would return results with no graph."""
    if torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in differentiable
    ):
        return op(*args)
    return call_op(op, impl, *args)


def token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    with_entropy: bool = False,
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
    backend: str | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """``log pi(target)`` per token from the hidden states, ``pi = softmax((h W^T + b) / T)``.

    Args:
        hidden: ``[N, H]`` last hidden states (flatten the batch), float32 / bfloat16 / float16
            (float64 too); any strides.
        weight: ``[V, H]`` the LM head, any float dtype; bias: optional ``[V]``.
        targets: ``[N]`` int64 token ids in ``[0, V)``, or ``ignore_index`` to skip a token.
        temperature: ``T > 0``.
        mask: optional ``[N]`` bool, False skips a token (prompt, padding).
        ignore_index: the target value that skips a token (default -100).
        with_entropy: also return the entropy ``-sum_v pi_v log pi_v`` per token.
        chunk_tokens, chunk_vocab: the block size (default 1024 x 4096); memory, not results,
            depends on it (up to rounding).
        backend: ``"cpu"``, ``"triton"`` or ``"torch"``; default by device.

    Returns:
        ``[N]`` float32 (float64 for float64 hidden) log-probabilities, 0 at skipped tokens;
        with ``with_entropy``, ``(logprobs, entropy)``. Differentiable w.r.t. hidden, weight
        and bias (both outputs).
    """
    op = "token_logprobs"
    hidden, weight, bias = _check_head(op, hidden, weight, bias)
    check_tensor(op, "targets", targets, dtype=torch.int64, device=hidden.device,
                 shape=(hidden.shape[0],))
    ignore = check_int(op, "ignore_index", ignore_index, minimum=None)
    if not isinstance(with_entropy, bool):
        raise TypeError(f"{op}: with_entropy must be a bool, got {type(with_entropy).__name__}")
    t, ct, cv, name = _check_common(op, hidden, mask, temperature, chunk_tokens, chunk_vocab,
                                    backend)
    args = (hidden, weight, bias, targets, mask, t, ignore, with_entropy, ct, cv, name)
    lp, ent, _ = _call(torch.ops.ponder.token_logprobs, _token_logprobs_impl, args,
                       (hidden, weight, bias))
    return (lp, ent) if with_entropy else lp


def kl_to_reference(
    hidden: Tensor,
    weight: Tensor,
    ref_hidden: Tensor,
    ref_weight: Tensor,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
    backend: str | None = None,
) -> Tensor:
    """The exact full-vocabulary ``KL(pi || pi_ref)`` per token (OREO's KL regulariser).

    ``pi = softmax((hidden @ weight.T + bias) / T)``, ``pi_ref`` likewise from the frozen
    reference's ``ref_hidden / ref_weight / ref_bias``. Computed in one pass over the vocabulary
    as ``E_pi[z - y] - lse(z) + lse(y)``.

    Args:
        hidden: ``[N, H]``; weight: ``[V, H]``; bias: optional ``[V]`` (the policy).
        ref_hidden: ``[N, H_ref]``; ref_weight: ``[V, H_ref]``; ref_bias: optional ``[V]`` (the
            reference model; no gradient flows to them).
        temperature, mask, chunk_tokens, chunk_vocab, backend: as :func:`token_logprobs`.

    Returns:
        ``[N]`` float32 (float64) KL per token, 0 at masked tokens; differentiable w.r.t.
        hidden, weight and bias.
    """
    op = "kl_to_reference"
    hidden, weight, bias = _check_head(op, hidden, weight, bias)
    ref_hidden, ref_weight, ref_bias = _check_head(op, ref_hidden, ref_weight, ref_bias, "ref_",
                                                   device=hidden.device)
    if ref_hidden.shape[0] != hidden.shape[0] or ref_weight.shape[0] != weight.shape[0]:
        raise ValueError(
            f"{op}: ref_hidden / ref_weight must have N = {hidden.shape[0]} rows / V = "
            f"{weight.shape[0]} rows like hidden / weight, got {tuple(ref_hidden.shape)} / "
            f"{tuple(ref_weight.shape)}")
    t, ct, cv, name = _check_common(op, hidden, mask, temperature, chunk_tokens, chunk_vocab,
                                    backend)
    args = (hidden, weight, bias, ref_hidden.detach(), ref_weight.detach(),
            None if ref_bias is None else ref_bias.detach(), mask, t, ct, cv, name)
    return _call(torch.ops.ponder.kl_to_reference, _kl_impl, args, (hidden, weight, bias))[0]


def topk_logprobs(
    hidden: Tensor,
    weight: Tensor,
    k: int,
    bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
    backend: str | None = None,
) -> TopK:
    """The teacher pass: the k largest log-probabilities per token, their ids and their mass.

    Args:
        hidden: ``[N, H]``; weight: ``[V, H]``; bias: optional ``[V]``.
        k: ``1 <= k <= V``.
        temperature, mask, chunk_tokens, chunk_vocab, backend: as :func:`token_logprobs`.

    Returns:
        :class:`TopK` ``(ids [N, k] int64, logprobs [N, k], mass [N])``, sorted by decreasing
        log-probability, ties broken by the smaller id; skipped tokens have ids -1,
        log-probabilities -inf and mass 0. No gradient (inputs are detached).
    """
    op = "topk_logprobs"
    hidden, weight, bias = _check_head(op, hidden, weight, bias)
    kk = check_int(op, "k", k, minimum=1, maximum=weight.shape[0])
    t, ct, cv, name = _check_common(op, hidden, mask, temperature, chunk_tokens, chunk_vocab,
                                    backend)
    args = (hidden.detach(), weight.detach(), None if bias is None else bias.detach(), mask, kk,
            t, ct, cv, name)
    return TopK(*call_op(torch.ops.ponder.topk_logprobs, _topk_impl, *args))


def topk_distill_loss(
    hidden: Tensor,
    weight: Tensor,
    teacher_ids: Tensor,
    teacher_logprobs: Tensor,
    temperature_c: float = 1.0,
    other_bucket: bool = False,
    reduction: str = "sum",
    *,
    bias: Tensor | None = None,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
    backend: str | None = None,
) -> Tensor:
    """FIRST's distillation loss from the student's hidden states and the teacher's top-k.

    Per token: ``KL(P' || Q)`` where ``P' = softmax(teacher_logprobs / c)`` over the k ids and
    ``Q`` is the student's softmax restricted to the same ids and renormalised. With
    ``other_bucket``, both sides get a (k+1)-th bucket holding ``1 - sum`` of their top-k
    probabilities, as a log-probability (``log(1 - sum exp lp)``); then ``P'`` is the softmax of
    the k + 1 teacher buckets over c, and ``Q`` uses the student's full-vocabulary probabilities
    (one pass over the vocabulary). With c = 1 and no other bucket this is the forward KL
    between the teacher and the student, both renormalised on the k ids. Formulas:
    docs/lm_head.md.

    Args:
        hidden: ``[N, H]``; weight: ``[V, H]``; bias: optional ``[V]`` (the student).
        teacher_ids: ``[N, k]`` int64 ids in ``[0, V)``, distinct within a row (checked; rows
            of skipped tokens are not read).
        teacher_logprobs: ``[N, k]`` the teacher's log-probabilities of those ids (<= 0; -inf
            allowed; with the other bucket their mass must be <= 1).
        temperature_c: ``c > 0``, the teacher's rescaling temperature.
        other_bucket: add the (k+1)-th bucket.
        reduction: ``"sum"`` over kept tokens (FIRST's), ``"mean"`` over kept tokens (0 when
            none is kept), or ``"none"`` (``[N]``, 0 at skipped tokens).
        temperature: the student's softmax temperature ``T > 0``.
        mask, chunk_tokens, chunk_vocab, backend: as :func:`token_logprobs`.

    Returns:
        A scalar (``[N]`` for ``"none"``), float32 (float64); differentiable w.r.t. hidden,
        weight and bias (the teacher is data: no gradient).
    """
    op = "topk_distill_loss"
    hidden, weight, bias = _check_head(op, hidden, weight, bias)
    n = hidden.shape[0]
    check_tensor(op, "teacher_ids", teacher_ids, dtype=torch.int64, device=hidden.device, ndim=2)
    if teacher_ids.shape[0] != n or teacher_ids.shape[1] < 1:
        raise ValueError(f"{op}: teacher_ids must have shape [N = {n}, k >= 1], got "
                         f"{tuple(teacher_ids.shape)}")
    check_tensor(op, "teacher_logprobs", teacher_logprobs, dtype=FLOAT_DTYPES,
                 device=hidden.device, shape=tuple(teacher_ids.shape))
    c = check_real(op, "temperature_c", temperature_c, positive=True)
    if not isinstance(other_bucket, bool):
        raise TypeError(f"{op}: other_bucket must be a bool, got {type(other_bucket).__name__}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    t, ct, cv, name = _check_common(op, hidden, mask, temperature, chunk_tokens, chunk_vocab,
                                    backend)
    if other_bucket and reduction != "none":
        # A scalar loss over a vocabulary pass: the gradient is computed in the forward
        # (3 matrix products instead of 4; see _fused_loss_impl).
        fused_ct = 0 if chunk_tokens is None else ct
        return _fused_loss("distill_other", hidden, weight, bias, teacher_ids=teacher_ids,
                           teacher_logprobs=teacher_logprobs.detach(), mask=mask,
                           temperature=t, temperature_c=c, mean=reduction == "mean",
                           chunk_tokens=fused_ct, chunk_vocab=cv, backend=name)
    args = (hidden, weight, bias, teacher_ids, teacher_logprobs.detach(), mask, t, c,
            other_bucket, ct, cv, name)
    per_token = _call(torch.ops.ponder.topk_distill_loss, _distill_impl, args,
                      (hidden, weight, bias))[0]
    keep = _keep(n, hidden.device, mask)
    return _reduce(per_token, keep, reduction)


def _check_weights(op: str, weights: object, hidden: Tensor) -> Tensor | None:
    if weights is None:
        return None
    weights = check_tensor(op, "weights", weights, dtype=FLOAT_DTYPES, device=hidden.device,
                           shape=(hidden.shape[0],))
    refuse_grad(op, "the per-token weights are data", weights=weights)
    return weights


def _check_reduction(op: str, reduction: object, allowed: tuple[str, ...]) -> str:
    if reduction not in allowed:
        raise ValueError(f"{op}: reduction must be one of {allowed}, got {reduction!r}")
    return reduction


def token_logprobs_sum(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    weights: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "sum",
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
    backend: str | None = None,
) -> Tensor:
    """``sum_i weights_i log pi(target_i)`` over the kept tokens, as one fused scalar loss whose
    gradient is computed in the forward (3 matrix products, as the eager path; the per-token
    :func:`token_logprobs` needs 4). ``-token_logprobs_sum(..., reduction="mean")`` is the
    (fused linear) cross-entropy.

    Args:
        hidden, weight, targets, bias, temperature, mask, ignore_index, backend: as
            :func:`token_logprobs`.
        weights: optional ``[N]`` per-token weights (data: no gradient; 1 when omitted), e.g.
            advantages or a loss mask in float.
        reduction: ``"sum"`` over the kept tokens, or ``"mean"``: the sum divided by the number
            of kept tokens (0 when none is kept).
        chunk_tokens: token rows per block of whole vocabulary rows ``[chunk_tokens, V]``;
            default: as many as fit ``FUSED_BLOCK_ELEMENTS`` (64 MiB of float32 logits).
        chunk_vocab: for 16-bit weights, the weight rows converted to float32 at a time.

    Returns:
        A scalar, float32 (float64 for float64 hidden), differentiable w.r.t. hidden, weight
        and bias. The backward scales the gradient stored by the forward in place, so a graph
        through it can be backpropagated once (no ``retain_graph`` second pass).
    """
    op = "token_logprobs_sum"
    hidden, weight, bias = _check_head(op, hidden, weight, bias)
    check_tensor(op, "targets", targets, dtype=torch.int64, device=hidden.device,
                 shape=(hidden.shape[0],))
    weights = _check_weights(op, weights, hidden)
    ignore = check_int(op, "ignore_index", ignore_index, minimum=None)
    red = _check_reduction(op, reduction, ("sum", "mean"))
    t, _, cv, name = _check_common(op, hidden, mask, temperature, chunk_tokens, chunk_vocab,
                                   backend)
    ct = 0 if chunk_tokens is None else check_int(op, "chunk_tokens", chunk_tokens, minimum=1)
    return _fused_loss("logprob", hidden, weight, bias, targets=targets, weights=weights,
                       mask=mask, temperature=t, ignore_index=ignore, mean=red == "mean",
                       chunk_tokens=ct, chunk_vocab=cv, backend=name)


def kl_to_reference_sum(
    hidden: Tensor,
    weight: Tensor,
    ref_hidden: Tensor,
    ref_weight: Tensor,
    weights: Tensor | None = None,
    bias: Tensor | None = None,
    ref_bias: Tensor | None = None,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: str = "sum",
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
    backend: str | None = None,
) -> Tensor:
    """``sum_i weights_i KL(pi_i || pi_ref_i)`` over the kept tokens, as one fused scalar loss
    whose gradient is computed in the forward (4 matrix products, as the eager path: the policy's
    and the reference's logits, two for the gradient; the per-token :func:`kl_to_reference`
    needs 6).

    Args: as :func:`kl_to_reference`, plus ``weights`` (optional ``[N]``, data), ``reduction``
    (``"sum"`` or ``"mean"`` over the kept tokens) and ``chunk_tokens`` / ``chunk_vocab`` as
    :func:`token_logprobs_sum` (two blocks of that many rows: the policy's and the
    reference's). Returns a scalar; gradients to hidden, weight, bias only, computed in the
    forward (backpropagate once).
    """
    op = "kl_to_reference_sum"
    hidden, weight, bias = _check_head(op, hidden, weight, bias)
    ref_hidden, ref_weight, ref_bias = _check_head(op, ref_hidden, ref_weight, ref_bias, "ref_",
                                                   device=hidden.device)
    if ref_hidden.shape[0] != hidden.shape[0] or ref_weight.shape[0] != weight.shape[0]:
        raise ValueError(
            f"{op}: ref_hidden / ref_weight must have N = {hidden.shape[0]} rows / V = "
            f"{weight.shape[0]} rows like hidden / weight, got {tuple(ref_hidden.shape)} / "
            f"{tuple(ref_weight.shape)}")
    weights = _check_weights(op, weights, hidden)
    red = _check_reduction(op, reduction, ("sum", "mean"))
    t, _, cv, name = _check_common(op, hidden, mask, temperature, chunk_tokens, chunk_vocab,
                                   backend)
    ct = 0 if chunk_tokens is None else check_int(op, "chunk_tokens", chunk_tokens, minimum=1)
    return _fused_loss("kl", hidden, weight, bias, ref_hidden=ref_hidden.detach(),
                       ref_weight=ref_weight.detach(),
                       ref_bias=None if ref_bias is None else ref_bias.detach(),
                       weights=weights, mask=mask, temperature=t, mean=red == "mean",
                       chunk_tokens=ct, chunk_vocab=cv, backend=name)
