"""Triton chunk kernels for ponder.ops.lm_head (GPU; on the CPU only under TRITON_INTERPRET=1).

The block of logits ``z: [rows, cols]`` (vocabulary ids ``v0 ..``) is a cuBLAS product made by
ponder.ops.lm_head; these kernels do the rest of the block in one launch, one program per token
row, walking the row in tiles of BLOCK:

- ``lm_head_chunk_forward``: the online log-sum-exp (running max ``m``, ``s = sum exp(z - m)``),
  the weighted sum ``s1`` (``u = z - y`` with a reference block ``y``, else ``u = z``), the
  reference's own log-sum-exp, the target's logit, and the running top-k (k passes over the row
  and the running best, each taking the next entry in (value desc, id asc) order).
- ``lm_head_chunk_backward``: ``z := exp(z - lse) (alpha + beta z + gamma y)`` plus ``delta`` at
  the target, in place.

The launchers take inputs already validated by ponder.ops.lm_head (contiguous blocks and
per-token vectors in float32 / float64).
"""

from __future__ import annotations

import triton
import triton.language as tl


def _block(cols: int) -> int:
    return min(triton.next_power_of_2(max(cols, 1)), 1024)


@triton.jit
def _forward_kernel(z_ptr, y_ptr, t_ptr, m_ptr, s_ptr, s1_ptr, my_ptr, sy_ptr, tgt_ptr, bv_ptr,
                    bi_ptr, cols, v0, HAS_Y: tl.constexpr, HAS_S1: tl.constexpr,
                    HAS_T: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
                    BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * cols
    offs = tl.arange(0, BLOCK)
    # Pass 1: the block's max of z (and of y).
    cm = tl.max(tl.full([BLOCK], float("-inf"), tl.float32), 0).to(z_ptr.dtype.element_ty)
    cmy = cm
    for c0 in range(0, cols, BLOCK):
        inside = c0 + offs < cols
        x = tl.load(z_ptr + base + c0 + offs, mask=inside, other=float("-inf"))
        cm = tl.maximum(cm, tl.max(x, 0))
        if HAS_Y:
            yv = tl.load(y_ptr + base + c0 + offs, mask=inside, other=float("-inf"))
            cmy = tl.maximum(cmy, tl.max(yv, 0))
    old = tl.load(m_ptr + row)
    nm = tl.maximum(old, cm)
    scale = tl.where(nm == float("-inf"), 1.0, tl.exp(old - nm))
    # Pass 2: the exponential sums at the new max.
    se = tl.sum(tl.zeros([BLOCK], dtype=z_ptr.dtype.element_ty), 0)
    s1 = se
    sy = se
    if HAS_Y:
        oldy = tl.load(my_ptr + row)
        nmy = tl.maximum(oldy, cmy)
        scy = tl.where(nmy == float("-inf"), 1.0, tl.exp(oldy - nmy))
    for c0 in range(0, cols, BLOCK):
        inside = c0 + offs < cols
        # Lanes past the row read 0 (not -inf), so that e * x and x - y stay finite there.
        x = tl.load(z_ptr + base + c0 + offs, mask=inside, other=0.0)
        e = tl.where(inside, tl.exp(x - nm), 0.0)
        se += tl.sum(e, 0)
        if HAS_Y:
            yv = tl.load(y_ptr + base + c0 + offs, mask=inside, other=0.0)
            sy += tl.sum(tl.where(inside, tl.exp(yv - nmy), 0.0), 0)
            if HAS_S1:
                s1 += tl.sum(tl.where(inside, e * (x - yv), 0.0), 0)
        else:
            if HAS_S1:
                s1 += tl.sum(tl.where(inside, e * x, 0.0), 0)
    tl.store(s_ptr + row, tl.load(s_ptr + row) * scale + se)
    tl.store(m_ptr + row, nm)
    if HAS_S1:
        tl.store(s1_ptr + row, tl.load(s1_ptr + row) * scale + s1)
    if HAS_Y:
        tl.store(sy_ptr + row, tl.load(sy_ptr + row) * scy + sy)
        tl.store(my_ptr + row, nmy)
    if HAS_T:
        local = tl.load(t_ptr + row) - v0
        if (local >= 0) & (local < cols):
            tl.store(tgt_ptr + row, tl.load(z_ptr + base + local))
    if K > 0:
        # The new top-k from the old one (ids < v0) and the block, one entry per pass, in
        # (value desc, id asc) order: entry (v, j) comes after (pv, pj) iff v < pv, or v == pv
        # and j > pj. Placeholders (-inf, id -1) stay when fewer than k values were seen.
        koffs = tl.arange(0, KP)
        kin = koffs < K
        old_v = tl.load(bv_ptr + row * K + koffs, mask=kin, other=float("-inf"))
        old_i = tl.load(bi_ptr + row * K + koffs, mask=kin, other=-1)
        new_v = old_v
        new_i = old_i
        pv = tl.max(tl.full([BLOCK], float("inf"), tl.float32), 0).to(z_ptr.dtype.element_ty)
        pj = tl.max(tl.full([BLOCK], -2, tl.int64), 0)
        for p in tl.static_range(K):
            elig_o = kin & ((old_v < pv) | ((old_v == pv) & (old_i > pj)))
            bv = tl.max(tl.where(elig_o, old_v, float("-inf")), 0)
            bj = tl.min(tl.where(elig_o & (old_v == bv), old_i, 9223372036854775807), 0)
            found = tl.sum(elig_o.to(tl.int32), 0) > 0
            for c0 in range(0, cols, BLOCK):
                inside = c0 + offs < cols
                x = tl.load(z_ptr + base + c0 + offs, mask=inside, other=float("-inf"))
                ids = v0 + c0 + offs.to(tl.int64)
                elig = inside & ((x < pv) | ((x == pv) & (ids > pj)))
                tv = tl.max(tl.where(elig, x, float("-inf")), 0)
                tj = tl.min(tl.where(elig & (x == tv), ids, 9223372036854775807), 0)
                tfound = tl.sum(elig.to(tl.int32), 0) > 0
                better = tfound & ((~found) | (tv > bv))
                bv = tl.where(better, tv, bv)
                bj = tl.where(better, tj, bj)
                found = found | tfound
            bv = tl.where(found, bv, float("-inf"))
            bj = tl.where(found, bj, -1)
            new_v = tl.where(koffs == p, bv, new_v)
            new_i = tl.where(koffs == p, bj, new_i)
            pv = bv
            pj = bj
        tl.store(bv_ptr + row * K + koffs, new_v, mask=kin)
        tl.store(bi_ptr + row * K + koffs, new_i, mask=kin)


@triton.jit
def _backward_kernel(z_ptr, y_ptr, lse_ptr, a_ptr, b_ptr, g_ptr, t_ptr, d_ptr, cols, v0,
                     HAS_Y: tl.constexpr, HAS_B: tl.constexpr, HAS_G: tl.constexpr,
                     HAS_T: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = row * cols
    offs = tl.arange(0, BLOCK)
    lse = tl.load(lse_ptr + row)
    alpha = tl.load(a_ptr + row)
    beta = 0.0
    gamma = 0.0
    if HAS_B:
        beta = tl.load(b_ptr + row)
    if HAS_G:
        gamma = tl.load(g_ptr + row)
    for c0 in range(0, cols, BLOCK):
        inside = c0 + offs < cols
        x = tl.load(z_ptr + base + c0 + offs, mask=inside, other=0.0)
        coef = alpha + beta * x
        if HAS_Y:
            yv = tl.load(y_ptr + base + c0 + offs, mask=inside, other=0.0)
            coef += gamma * yv
        tl.store(z_ptr + base + c0 + offs, tl.exp(x - lse) * coef, mask=inside)
    if HAS_T:
        local = tl.load(t_ptr + row) - v0
        if (local >= 0) & (local < cols):
            # The same program wrote this entry above: a plain read-modify-write.
            tl.debug_barrier()
            ptr = z_ptr + base + local
            tl.store(ptr, tl.load(ptr) + tl.load(d_ptr + row))


def lm_head_chunk_forward(z, y, targets, m, s, s1, my, sy, tgt, best_vals, best_ids,
                          v0: int) -> None:
    """Fold the block ``z [rows, cols]`` into the per-token statistics (see ops.lm_head)."""
    rows, cols = z.shape
    if rows == 0:
        return
    k = 0 if best_vals is None else best_vals.shape[1]
    _forward_kernel[(rows,)](
        z, y, targets, m, s, s1, my, sy, tgt, best_vals, best_ids, cols, v0,
        HAS_Y=y is not None, HAS_S1=s1 is not None, HAS_T=targets is not None, K=k,
        KP=triton.next_power_of_2(max(k, 1)), BLOCK=_block(cols),
    )


def lm_head_chunk_backward(z, y, lse, alpha, beta, gamma, targets, delta, v0: int) -> None:
    """``z := exp(z - lse) (alpha + beta z + gamma y)`` plus ``delta`` at the target, in place."""
    rows, cols = z.shape
    if rows == 0:
        return
    _backward_kernel[(rows,)](
        z, y, lse, alpha, beta, gamma, targets, delta, cols, v0,
        HAS_Y=y is not None, HAS_B=beta is not None, HAS_G=gamma is not None,
        HAS_T=targets is not None, BLOCK=_block(cols),
    )

