"""Triton kernel for ponder.ops.prm (GPU; on the CPU only under TRITON_INTERPRET=1).

One program per row of the batch: it walks the row's steps in tiles of BLOCK_S, gathers the
hidden rows at the step positions (masked: padding is never read), accumulates the dot products
with the 1 or 2 head rows over H in chunks of BLOCK_H in float32 (float64 for float64 hidden),
and carries the row's min / last / product / sum / count across tiles, so the scores and the
aggregates come out of one launch. The launcher takes inputs already validated by
ponder.ops.prm.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@triton.jit
def _mul(a, b):
    return a * b


@triton.jit
def _sigmoid(z):
    # Both branches only ever exponentiate a non-positive number: no overflow.
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _prm_steps_kernel(logits_ptr, scores_ptr, min_ptr, last_ptr, prod_ptr, mean_ptr, count_ptr,
                      hidden_ptr, idx_ptr, head_ptr, bias_ptr, steps, width, stride_b, stride_l,
                      LABELS: tl.constexpr, HAS_BIAS: tl.constexpr, WANT_LOGITS: tl.constexpr,
                      WANT_SCORES: tl.constexpr, ACC: tl.constexpr, BLOCK_S: tl.constexpr,
                      BLOCK_H: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    b0 = 0.0
    b1 = 0.0
    if HAS_BIAS:
        b0 = tl.load(bias_ptr).to(ACC)
        if LABELS == 2:
            b1 = tl.load(bias_ptr + 1).to(ACC)
    agg_min = tl.full([], float("inf"), ACC)
    agg_last = tl.full([], float("nan"), ACC)
    agg_prod = tl.full([], 1.0, ACC)
    agg_sum = tl.full([], 0.0, ACC)
    agg_count = tl.full([], 0, tl.int64)
    row_base = hidden_ptr + b * stride_b
    for s0 in range(0, steps, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        in_row = offs_s < steps
        pos = tl.load(idx_ptr + b * steps + offs_s, mask=in_row, other=-1)
        valid = pos >= 0
        rows = row_base + tl.where(valid, pos, 0) * stride_l  # [BLOCK_S] pointers
        acc0 = tl.zeros([BLOCK_S, BLOCK_H], dtype=ACC)
        acc1 = tl.zeros([BLOCK_S, BLOCK_H], dtype=ACC)
        for h0 in range(0, width, BLOCK_H):
            offs_h = h0 + tl.arange(0, BLOCK_H)
            in_h = offs_h < width
            x = tl.load(rows[:, None] + offs_h[None, :], mask=valid[:, None] & in_h[None, :],
                        other=0.0).to(ACC)
            w0 = tl.load(head_ptr + offs_h, mask=in_h, other=0.0).to(ACC)
            acc0 += x * w0[None, :]
            if LABELS == 2:
                w1 = tl.load(head_ptr + width + offs_h, mask=in_h, other=0.0).to(ACC)
                acc1 += x * w1[None, :]
        z0 = tl.sum(acc0, 1) + b0
        z1 = tl.sum(acc1, 1) + b1
        out = (b * steps + offs_s).to(tl.int64)
        if WANT_LOGITS:
            tl.store(logits_ptr + out * LABELS, tl.where(valid, z0, 0.0), mask=in_row)
            if LABELS == 2:
                tl.store(logits_ptr + out * LABELS + 1, tl.where(valid, z1, 0.0), mask=in_row)
        if WANT_SCORES:
            if LABELS == 2:
                score = _sigmoid(z0 - z1)
            else:
                score = _sigmoid(z0)
            tl.store(scores_ptr + out, tl.where(valid, score, float("nan")), mask=in_row)
            # tl.min / tl.minimum skip NaN (PTX min.f32 returns the other operand), while the
            # reference's amin propagates it: a NaN step makes the row's min NaN.
            tile_min = tl.min(tl.where(valid, score, float("inf")), 0)
            tile_nan = tl.max(tl.where(valid & (score != score), 1, 0), 0) > 0
            agg_min = tl.where(tile_nan | (agg_min != agg_min), float("nan"),
                               tl.minimum(agg_min, tile_min))
            agg_prod *= tl.reduce(tl.where(valid, score, 1.0), 0, _mul)
            agg_sum += tl.sum(tl.where(valid, score, 0.0), 0)
            n_tile = tl.sum(valid.to(tl.int64), 0)
            last_s = tl.max(tl.where(valid, offs_s, -1), 0)
            tile_last = tl.sum(tl.where(offs_s == last_s, score, 0.0), 0)
            agg_last = tl.where(n_tile > 0, tile_last, agg_last)
            agg_count += n_tile
    if WANT_SCORES:
        has = agg_count > 0
        tl.store(min_ptr + b, tl.where(has, agg_min, float("nan")))
        tl.store(last_ptr + b, agg_last)
        tl.store(prod_ptr + b, tl.where(has, agg_prod, float("nan")))
        tl.store(mean_ptr + b, tl.where(has, agg_sum / tl.maximum(agg_count, 1).to(ACC),
                                        float("nan")))
        tl.store(count_ptr + b, agg_count)


def prm_steps(logits, scores, mins, lasts, products, means, num_steps, hidden, step_index, head,
              bias) -> None:
    """Fill ``logits [B, S, K]`` and/or ``scores [B, S]`` + the aggregates (see ops.prm).

    ``hidden [B, L, H]`` has a unit innermost stride; ``step_index [B, S]`` int64 contiguous;
    ``head [K, H]`` and ``bias [K]`` (or None) contiguous in the accumulation dtype.
    """
    batch, _, width = hidden.shape
    steps = step_index.shape[1]
    labels = head.shape[0]
    if batch == 0:
        return
    block_s = min(triton.next_power_of_2(max(steps, 1)), 16)
    block_h = min(triton.next_power_of_2(max(width, 1)), 128)
    _prm_steps_kernel[(batch,)](
        logits, scores, mins, lasts, products, means, num_steps,
        hidden, step_index, head, bias, steps, width, hidden.stride(0), hidden.stride(1),
        LABELS=labels, HAS_BIAS=bias is not None, WANT_LOGITS=logits is not None,
        WANT_SCORES=scores is not None, ACC=_acc(hidden.dtype), BLOCK_S=block_s, BLOCK_H=block_h,
    )
