"""Triton kernels for ponder.ops.think (GPU; on the CPU only under TRITON_INTERPRET=1).

pruned_decode_attention is split-K flash-decoding: one program per (batch x KV head, split of
the keys) runs an online softmax over its keys for all ``G * S`` query rows of that KV head (so
each K/V row is read once, never expanded for GQA) and writes a partial ``(max, sum, acc)``; a
second kernel merges the splits of each query row. The launchers take tensors already validated
by ponder.ops.think and write into the given outputs.

Both products go through ``tl.dot`` in float32 with ``input_precision="ieee"`` (no TF32): decode
is bound by reading K and V, not by the few query rows' arithmetic, and the op promises float32
accumulation.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _backend

_LOG2E = 1.4426950408889634
BLOCK_N = 64  # keys per step


def _pow2(n: int, floor: int = 16) -> int:
    return max(floor, triton.next_power_of_2(max(int(n), 1)))


@triton.jit
def _attend_part(
    acc, m_i, l_i, q_ptrs_kept, q_mask, k_base, v_base,
    rows, row_ok, s_pos_end, start, lo, hi, kd, stride_kl, stride_vl, dv,
    key_offset, BLOCK_K: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Online softmax (base 2) over keys [lo, hi) of one store, at positions key_offset + j."""
    offs_k = tl.arange(0, BLOCK_K)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptrs_kept, mask=q_mask, other=0.0).to(tl.float32)  # [R, K], pre-scaled below
    for j0 in range(lo, hi, BLOCK_N):
        offs_n = j0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < hi
        k = tl.load(
            k_base + offs_n[:, None] * stride_kl + offs_k[None, :],
            mask=n_ok[:, None] & (offs_k[None, :] < kd), other=0.0,
        ).to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
        pos = key_offset + offs_n
        seen = (
            row_ok[:, None] & n_ok[None, :] & (pos[None, :] >= start)
            & (pos[None, :] <= s_pos_end[:, None])
        )
        s = tl.where(seen, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Rows that have seen nothing yet keep m = -inf: subtract 0 instead (p is 0 there).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_base + offs_n[:, None] * stride_vl + offs_dv[None, :],
            mask=n_ok[:, None] & (offs_dv[None, :] < dv), other=0.0,
        ).to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _pruned_decode_partial_kernel(
    part_acc_ptr, part_m_ptr, part_l_ptr,
    q_ptr, kp_ptr, idx_ptr, kr_ptr, v_ptr, starts_ptr, lengths_ptr,
    hkv, s_len, rows_n, lp, lr, dim, kept, dv, split_len, n_splits,
    kp_sb, kp_sh, kp_sl, kr_sb, kr_sh, kr_sl, v_sb, v_sh, v_sl,
    HAS_STARTS: tl.constexpr, HAS_LENGTHS: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    b = bh // hkv
    h = bh % hkv
    length = lp + lr
    start = 0
    end = length
    if HAS_STARTS:
        start = tl.load(starts_ptr + b)
    if HAS_LENGTHS:
        end = tl.load(lengths_ptr + b)
    rows = tl.arange(0, BLOCK_R)
    row_ok = rows < rows_n
    # Query row r = g * S + s sits at position end - S + s and sees keys up to it.
    s_pos_end = end - s_len + rows % s_len
    lo = tl.maximum(split * split_len, start)
    hi = tl.minimum(tl.minimum((split + 1) * split_len, length), end)

    acc = tl.zeros([BLOCK_R, BLOCK_DV], dtype=tl.float32)
    m_i = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    q_rows = q_ptr + (bh * rows_n + rows) * dim  # the R rows of this KV head are contiguous
    # Pruned store: q gathered through idx once.
    offs_t = tl.arange(0, BLOCK_T)
    t_ok = offs_t < kept
    ch = tl.load(idx_ptr + bh * kept + offs_t, mask=t_ok, other=0)
    acc, m_i, l_i = _attend_part(
        acc, m_i, l_i, q_rows[:, None] + ch[None, :], row_ok[:, None] & t_ok[None, :],
        kp_ptr + b * kp_sb + h * kp_sh, v_ptr + b * v_sb + h * v_sh,
        rows, row_ok, s_pos_end, start, lo, tl.minimum(hi, lp), kept, kp_sl, v_sl, dv, 0,
        BLOCK_T, BLOCK_DV, BLOCK_N,
    )
    # Recent store: full width, positions lp + j.
    offs_d = tl.arange(0, BLOCK_D)
    acc, m_i, l_i = _attend_part(
        acc, m_i, l_i, q_rows[:, None] + offs_d[None, :],
        row_ok[:, None] & (offs_d[None, :] < dim),
        kr_ptr + b * kr_sb + h * kr_sh, v_ptr + b * v_sb + h * v_sh + lp * v_sl,
        rows, row_ok, s_pos_end, start, tl.maximum(lo, lp) - lp, hi - lp, dim, kr_sl, v_sl,
        dv, lp, BLOCK_D, BLOCK_DV, BLOCK_N,
    )
    part = (bh * n_splits + split) * rows_n + rows
    tl.store(part_m_ptr + part, m_i, mask=row_ok)
    tl.store(part_l_ptr + part, l_i, mask=row_ok)
    offs_dv = tl.arange(0, BLOCK_DV)
    tl.store(
        part_acc_ptr + part[:, None] * dv + offs_dv[None, :], acc,
        mask=row_ok[:, None] & (offs_dv[None, :] < dv),
    )


@triton.jit
def _merge_kernel(
    out_ptr, lse_ptr, part_acc_ptr, part_m_ptr, part_l_ptr, rows_n, n_splits, dv,
    BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # (b * Hkv + h) * R + r
    bh = row // rows_n
    r = row % rows_n
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < n_splits
    part = (bh * n_splits + offs_s) * rows_n + r
    m = tl.load(part_m_ptr + part, mask=s_ok, other=float("-inf"))
    l_s = tl.load(part_l_ptr + part, mask=s_ok, other=0.0)
    mx = tl.max(m, axis=0)
    mx_safe = tl.where(mx == float("-inf"), 0.0, mx)
    w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - mx_safe))
    total = tl.sum(w * l_s, axis=0)
    offs_dv = tl.arange(0, BLOCK_DV)
    acc = tl.load(
        part_acc_ptr + part[:, None] * dv + offs_dv[None, :],
        mask=s_ok[:, None] & (offs_dv[None, :] < dv), other=0.0,
    )
    o = tl.sum(w[:, None] * acc, axis=0)
    seen = total != 0.0  # a NaN total (NaN inputs) passes, so the output is NaN as in torch
    o = tl.where(seen, o / tl.where(seen, total, 1.0), 0.0)
    tl.store(out_ptr + row * dv + offs_dv, o.to(out_ptr.dtype.element_ty), mask=offs_dv < dv)
    lse = tl.where(seen, (mx_safe + tl.log2(tl.where(seen, total, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    tl.store(lse_ptr + row, lse)


def _n_splits(heads: int, length: int, device: torch.device) -> int:
    """Splits of the keys: enough programs to fill the GPU, at least BLOCK_N keys each. Under
    the interpreter, one split per BLOCK_N keys so that tests exercise the merge."""
    max_splits = max(1, triton.cdiv(length, BLOCK_N))
    if _backend.triton_interpreted() or device.type != "cuda":
        return max_splits
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(max_splits, triton.cdiv(4 * sms, max(heads, 1)), 256))


def pruned_decode_attention(out, lse, q, k_pruned, idx, k_recent, v, starts, lengths, scale):
    """out [B, Hq, S, Dv], lse [B, Hq, S] float32; q contiguous; K/V with unit last stride."""
    batch, hq, s_len, dim = q.shape
    hkv, lp, kept = k_pruned.shape[1], k_pruned.shape[2], k_pruned.shape[3]
    lr, dv = k_recent.shape[2], v.shape[3]
    rows_n = (hq // hkv) * s_len
    heads = batch * hkv
    length = lp + lr
    n_splits = _n_splits(heads, length, q.device)
    split_len = triton.cdiv(triton.cdiv(length, n_splits), BLOCK_N) * BLOCK_N
    n_splits = triton.cdiv(length, split_len)
    f32 = {"dtype": torch.float32, "device": q.device}
    part_acc = torch.empty(heads * n_splits * rows_n * dv, **f32)
    part_m = torch.empty(heads * n_splits * rows_n, **f32)
    part_l = torch.empty(heads * n_splits * rows_n, **f32)
    # q is pre-scaled by scale * log2(e) (in float32) so that scores are in base 2.
    q_scaled = (q.float() * (scale * _LOG2E)).contiguous()
    dummy = idx
    block_r = _pow2(rows_n)
    _pruned_decode_partial_kernel[(heads, n_splits)](
        part_acc, part_m, part_l, q_scaled, k_pruned, idx, k_recent, v,
        starts if starts is not None else dummy, lengths if lengths is not None else dummy,
        hkv, s_len, rows_n, lp, lr, dim, kept, dv, split_len, n_splits,
        *k_pruned.stride()[:3], *k_recent.stride()[:3], *v.stride()[:3],
        HAS_STARTS=starts is not None, HAS_LENGTHS=lengths is not None,
        BLOCK_R=block_r, BLOCK_T=_pow2(kept), BLOCK_D=_pow2(dim), BLOCK_DV=_pow2(dv),
        BLOCK_N=BLOCK_N,
    )
    _merge_kernel[(heads * rows_n,)](
        out, lse, part_acc, part_m, part_l, rows_n, n_splits, dv,
        BLOCK_S=_pow2(n_splits, 2), BLOCK_DV=_pow2(dv),
    )


@triton.jit
def _channel_scores_kernel(
    out_ptr, q_ptr, k_ptr, group_rows, length, dim, inv_rows, inv_length,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < dim
    # Elementwise accumulators, reduced once at the end: blocked sums keep float32 accurate.
    ks = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    k_base = k_ptr + bh * length * dim
    for t0 in range(0, length, BLOCK_L):
        offs_t = t0 + tl.arange(0, BLOCK_L)
        x = tl.load(
            k_base + offs_t[:, None] * dim + offs_d[None, :],
            mask=(offs_t[:, None] < length) & d_ok[None, :], other=0.0,
        ).to(tl.float32)
        ks += x * x
    qs = tl.zeros([BLOCK_L, BLOCK_D], dtype=tl.float32)
    q_base = q_ptr + bh * group_rows * dim  # the G * W query rows of this KV head
    for w0 in range(0, group_rows, BLOCK_L):
        offs_w = w0 + tl.arange(0, BLOCK_L)
        x = tl.load(
            q_base + offs_w[:, None] * dim + offs_d[None, :],
            mask=(offs_w[:, None] < group_rows) & d_ok[None, :], other=0.0,
        ).to(tl.float32)
        qs += x * x
    score = (tl.sum(qs, axis=0) * inv_rows) * (tl.sum(ks, axis=0) * inv_length)
    tl.store(out_ptr + bh * dim + offs_d, score, mask=d_ok)


def channel_scores(out, q_window, k):
    """out [B, Hkv, D] float32; q_window [B, Hq, W, D], k [B, Hkv, L, D] contiguous."""
    batch, hq, window, dim = q_window.shape
    hkv, length = k.shape[1], k.shape[2]
    group_rows = (hq // hkv) * window
    block_d = min(_pow2(dim, 16), 64)
    _channel_scores_kernel[(batch * hkv, triton.cdiv(dim, block_d))](
        out, q_window, k, group_rows, length, dim, 1.0 / group_rows, 1.0 / length,
        BLOCK_L=32, BLOCK_D=block_d,
    )
