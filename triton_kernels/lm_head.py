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



# --------------------------------------------------------------------------------------------
# Fused kernels: the logits product per tile with tl.dot, the softmax parts in the same kernel
# (flash-attention style over vocabulary tiles). No logits block is materialised by the
# forward; the backward writes the block's gradient only (never the logits).
# --------------------------------------------------------------------------------------------


def _tiles() -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_V, BLOCK_H). tl.dot needs every dimension >= 16. The interpreter runs
    each program in numpy: small tiles there; on a GPU tiles sized for the tensor cores (not
    tuned: no GPU was at hand)."""
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        return 16, 32, 16
    return 64, 128, 64


@triton.jit
def _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, width, ldh, ldw, inv_t,
                 HAS_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                 BLOCK_H: tl.constexpr):
    """The tile ``(h[rows] @ w[cols].T + b[cols]) * inv_t``, ``[BLOCK_N, BLOCK_V]`` float32.
    rows / cols are int64 index vectors, -1 for lanes past the end (their loads read 0)."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    hoffs = tl.arange(0, BLOCK_H)
    for k0 in range(0, width, BLOCK_H):
        kin = k0 + hoffs < width
        ht = tl.load(h_ptr + rows[:, None] * ldh + (k0 + hoffs)[None, :],
                     mask=(rows[:, None] >= 0) & kin[None, :], other=0.0)
        wt = tl.load(w_ptr + cols[None, :] * ldw + (k0 + hoffs)[:, None],
                     mask=(cols[None, :] >= 0) & kin[:, None], other=0.0)
        acc += tl.dot(ht.to(tl.float32), wt.to(tl.float32), input_precision="ieee")
    if HAS_B:
        acc += tl.load(b_ptr + cols, mask=cols >= 0, other=0.0).to(tl.float32)[None, :]
    return acc * inv_t


@triton.jit
def _fused_forward_kernel(h_ptr, w_ptr, b_ptr, hy_ptr, wy_ptr, by_ptr, t_ptr, m_ptr, s_ptr,
                          s1_ptr, my_ptr, sy_ptr, tgt_ptr, n, vocab, width, width_y, ldh, ldw,
                          ldhy, ldwy, inv_t, HAS_B: tl.constexpr, HAS_Y: tl.constexpr,
                          HAS_BY: tl.constexpr, HAS_S1: tl.constexpr, HAS_T: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr):
    """One program per tile of BLOCK_N tokens walks the whole vocabulary: per vocabulary tile,
    the logits tile by tl.dot, then the online log-sum-exp (m, s), s1 (``sum e z``, or
    ``sum e (z - y)`` with the reference), the reference's own (my, sy) and the target's logit.
    """
    pid = tl.program_id(0).to(tl.int64)
    r = pid * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    rin = r < n
    rows = tl.where(rin, r, -1)
    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], dtype=tl.float32)
    s1 = tl.zeros([BLOCK_N], dtype=tl.float32)
    my = tl.full([BLOCK_N], float("-inf"), tl.float32)
    sy = tl.zeros([BLOCK_N], dtype=tl.float32)
    tgt = tl.zeros([BLOCK_N], dtype=tl.float32)
    if HAS_T:
        target = tl.load(t_ptr + r, mask=rin, other=-1)
    for v0 in range(0, vocab, BLOCK_V):
        c = v0 + tl.arange(0, BLOCK_V).to(tl.int64)
        cin = c < vocab
        cols = tl.where(cin, c, -1)
        z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, width, ldh, ldw, inv_t, HAS_B,
                         BLOCK_N, BLOCK_V, BLOCK_H)
        # Columns past the vocabulary are -inf for the maxima, 0 weight for the sums; their
        # value is set to 0 in the products (0 * -inf would be NaN).
        zs = tl.where(cin[None, :], z, 0.0)
        nm = tl.maximum(m, tl.max(tl.where(cin[None, :], z, float("-inf")), 1))
        e = tl.where(cin[None, :], tl.exp(zs - nm[:, None]), 0.0)
        scale = tl.exp(m - nm)
        s = s * scale + tl.sum(e, 1)
        if HAS_Y:
            y = _logits_tile(hy_ptr, wy_ptr, by_ptr, rows, cols, width_y, ldhy, ldwy, inv_t,
                             HAS_BY, BLOCK_N, BLOCK_V, BLOCK_H)
            ys = tl.where(cin[None, :], y, 0.0)
            nmy = tl.maximum(my, tl.max(tl.where(cin[None, :], y, float("-inf")), 1))
            sy = sy * tl.exp(my - nmy) + tl.sum(
                tl.where(cin[None, :], tl.exp(ys - nmy[:, None]), 0.0), 1)
            my = nmy
            if HAS_S1:
                s1 = s1 * scale + tl.sum(e * (zs - ys), 1)
        else:
            if HAS_S1:
                s1 = s1 * scale + tl.sum(e * zs, 1)
        m = nm
        if HAS_T:
            hit = (c[None, :] == target[:, None]) & cin[None, :]
            tgt += tl.sum(tl.where(hit, zs, 0.0), 1)
    tl.store(m_ptr + r, m, mask=rin)
    tl.store(s_ptr + r, s, mask=rin)
    if HAS_S1:
        tl.store(s1_ptr + r, s1, mask=rin)
    if HAS_Y:
        tl.store(my_ptr + r, my, mask=rin)
        tl.store(sy_ptr + r, sy, mask=rin)
    if HAS_T:
        tl.store(tgt_ptr + r, tgt, mask=rin)


@triton.jit
def _fused_backward_kernel(h_ptr, w_ptr, b_ptr, hy_ptr, wy_ptr, by_ptr, dz_ptr, lse_ptr, a_ptr,
                           be_ptr, g_ptr, t_ptr, d_ptr, n, cols_n, v0, width, width_y, ldh, ldw,
                           ldhy, ldwy, inv_t, HAS_B: tl.constexpr, HAS_Y: tl.constexpr,
                           HAS_BY: tl.constexpr, HAS_BETA: tl.constexpr,
                           HAS_GAMMA: tl.constexpr, HAS_T: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                           BLOCK_H: tl.constexpr):
    """One program per (token tile, vocabulary tile) of the block ``[n, cols_n]`` (vocabulary
    ids ``v0 ..``): the logits tile by tl.dot (and the reference's), then the gradient of the
    logits ``exp(z - lse) (alpha + beta z + gamma y) + delta 1[target]``, written to ``dz``."""
    pid_n = tl.program_id(0).to(tl.int64)
    pid_v = tl.program_id(1).to(tl.int64)
    r = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    rin = r < n
    rows = tl.where(rin, r, -1)
    lc = pid_v * BLOCK_V + tl.arange(0, BLOCK_V).to(tl.int64)
    cin = lc < cols_n
    cols = tl.where(cin, v0 + lc, -1)
    z = _logits_tile(h_ptr, w_ptr, b_ptr, rows, cols, width, ldh, ldw, inv_t, HAS_B, BLOCK_N,
                     BLOCK_V, BLOCK_H)
    lse = tl.load(lse_ptr + r, mask=rin, other=0.0)
    coef = tl.load(a_ptr + r, mask=rin, other=0.0)[:, None] + tl.zeros([BLOCK_N, BLOCK_V],
                                                                      dtype=tl.float32)
    if HAS_BETA:
        coef += tl.load(be_ptr + r, mask=rin, other=0.0)[:, None] * z
    if HAS_GAMMA:
        y = _logits_tile(hy_ptr, wy_ptr, by_ptr, rows, cols, width_y, ldhy, ldwy, inv_t,
                         HAS_BY, BLOCK_N, BLOCK_V, BLOCK_H)
        coef += tl.load(g_ptr + r, mask=rin, other=0.0)[:, None] * y
    dz = tl.exp(z - lse[:, None]) * coef
    if HAS_T:
        target = tl.load(t_ptr + r, mask=rin, other=-1)
        delta = tl.load(d_ptr + r, mask=rin, other=0.0)
        dz += tl.where((v0 + lc)[None, :] == target[:, None], delta[:, None], 0.0)
    tl.store(dz_ptr + r[:, None] * cols_n + lc[None, :], dz, mask=rin[:, None] & cin[None, :])


def _ld(t) -> int:
    # Row stride of a [rows, width] operand (unit column stride is required: the driver passes
    # contiguous rows and a weight with contiguous rows).
    return t.stride(0)


def lm_head_fused_forward(h, w, b, hy, wy, by, targets, m, s, s1, my, sy, tgt,
                          inv_t: float) -> None:
    """The per-token statistics of ``z = (h @ w.T + b) * inv_t`` over the whole vocabulary
    (and of the reference ``y`` from ``hy, wy, by``): m, s, s1, my, sy, tgt (float32 [n],
    written). h / hy: [n, H] with unit column stride; w / wy: [V, H] likewise."""
    n, width = h.shape
    vocab = w.shape[0]
    if n == 0:
        return
    bn, bv, bh = _tiles()
    has_y = hy is not None
    _fused_forward_kernel[(triton.cdiv(n, bn),)](
        h, w, b, hy, wy, by, targets, m, s, s1, my, sy, tgt, n, vocab, width,
        hy.shape[1] if has_y else 0, _ld(h), _ld(w), _ld(hy) if has_y else 0,
        _ld(wy) if has_y else 0, inv_t, HAS_B=b is not None, HAS_Y=has_y,
        HAS_BY=by is not None, HAS_S1=s1 is not None, HAS_T=targets is not None,
        BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh)


def lm_head_fused_backward(h, w, b, hy, wy, by, dz, v0: int, lse, alpha, beta, gamma, targets,
                           delta, inv_t: float) -> None:
    """``dz [n, cols] := exp(z - lse) (alpha + beta z + gamma y) + delta 1[target]`` for the
    logits block ``z = (h @ w[v0:v0 + cols].T + b) * inv_t`` (and ``y`` likewise from the
    reference), computed per tile with tl.dot: the block's logits are never stored."""
    n, cols = dz.shape
    if n == 0 or cols == 0:
        return
    width = h.shape[1]
    has_y = hy is not None
    bn, bv, bh = _tiles()
    _fused_backward_kernel[(triton.cdiv(n, bn), triton.cdiv(cols, bv))](
        h, w, b, hy, wy, by, dz, lse, alpha, beta, gamma, targets, delta, n, cols, v0, width,
        hy.shape[1] if has_y else 0, _ld(h), _ld(w), _ld(hy) if has_y else 0,
        _ld(wy) if has_y else 0, inv_t, HAS_B=b is not None, HAS_Y=has_y,
        HAS_BY=by is not None, HAS_BETA=beta is not None, HAS_GAMMA=gamma is not None,
        HAS_T=targets is not None, BLOCK_N=bn, BLOCK_V=bv, BLOCK_H=bh)
