"""Triton kernels for ponder.ops.speculative (GPU; on the CPU only under TRITON_INTERPRET=1).

One program per batch row walks the K draft positions, stopping (by a flag: Triton has no
``break``) at the first rejection. Each vocabulary row is reduced in BLOCK_V tiles with an online
log-sum-exp; the final token is an exponential race over the same tiles. Random numbers come from
Triton's Philox (``tl.randint``) keyed by a per-row seed, so they differ from the C++ stream; exact
parity across backends is only promised on the explicit-uniform path.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .. import _backend

BLOCK_V = 1024
# Globals a @triton.jit function reads must be constexpr (Triton refuses plain floats there).
_NEG_BIG = tl.constexpr(-3.0e38)  # a finite "minus infinity" for running maxima (avoids inf - inf)
_FLOAT32_MAX = tl.constexpr(3.4028234663852886e38)
_GOLDEN = 0x9E3779B97F4A7C15


@triton.jit
def _uniform_open(seed, offs):
    # (r >> 8 + 0.5) / 2^24: in (0, 1), never 0, never 1 (float32).
    r = tl.randint(seed, offs)
    return ((r >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08


@triton.jit
def _scaled(ptr, offs, mask, thr, inv_t):
    logits = tl.load(ptr + offs, mask=mask, other=float("-inf")).to(tl.float32)
    keep = mask & (logits >= thr)
    return tl.where(keep, logits * inv_t, float("-inf")), keep, logits


@triton.jit
def _contract_ok(top, nans, inv_t):
    # The logits contract (ponder.ops.speculative): no NaN, and the largest logit (float32) times
    # 1/T is finite (a NaN fails the comparison).
    y = top * inv_t
    return ((nans == 0) & (tl.abs(y) <= _FLOAT32_MAX)).to(tl.int32)


@triton.jit
def _row_lse(ptr, thr, inv_t, vocab, BLOCK_V: tl.constexpr):
    # The row's log-sum-exp, and whether it keeps the contract (checked in the same pass).
    m = tl.full((), _NEG_BIG, tl.float32)
    s = tl.zeros((), tl.float32)
    top = tl.full((), float("-inf"), tl.float32)
    nans = tl.zeros((), tl.int32)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x, keep, raw = _scaled(ptr, offs, offs < vocab, thr, inv_t)
        new_m = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - new_m) + tl.sum(tl.where(keep, tl.exp(x - new_m), 0.0), axis=0)
        m = new_m
        top = tl.maximum(top, tl.max(raw, axis=0))
        nans += tl.sum((raw != raw).to(tl.int32), axis=0)
    return m + tl.log(s), _contract_ok(top, nans, inv_t)


@triton.jit
def _row_ok(ptr, inv_t, vocab, BLOCK_V: tl.constexpr):
    # The contract check alone, for the rows the test never reads.
    top = tl.full((), float("-inf"), tl.float32)
    nans = tl.zeros((), tl.int32)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        raw = tl.load(ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
        top = tl.maximum(top, tl.max(raw, axis=0))
        nans += tl.sum((raw != raw).to(tl.int32), axis=0)
    return _contract_ok(top, nans, inv_t)


@triton.jit
def _prob(ptr, v, thr, inv_t, lse):
    # Through _scaled, like the lse and the race: every pass must see the same rounded l / T.
    x, keep, _ = _scaled(ptr, v, v >= 0, thr, inv_t)
    return tl.where(keep, tl.exp(x - lse), 0.0)


@triton.jit
def _race(t_ptr, thr_t, lse_t, d_ptr, thr_d, lse_d, point, u_ptr, seed, roff, inv_t, vocab,
          HAS_DRAFT: tl.constexpr, HAS_U: tl.constexpr, BLOCK_V: tl.constexpr):
    # argmax_v max(0, p_v - q_v) / E_v, E_v = -log u_v: a draw from max(0, p - q), unnormalised.
    best = tl.full((), -1, tl.int64)
    best_key = tl.zeros((), tl.float32)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        mask = offs < vocab
        xt, kt, _ = _scaled(t_ptr, offs, mask, thr_t, inv_t)
        p = tl.where(kt, tl.exp(xt - lse_t), 0.0)
        if HAS_DRAFT:
            xd, kd, _ = _scaled(d_ptr, offs, mask, thr_d, inv_t)
            q = tl.where(kd, tl.exp(xd - lse_d), 0.0)
        else:
            q = tl.where(offs == point, 1.0, 0.0)
        w = tl.maximum(p - q, 0.0)
        if HAS_U:
            u = tl.load(u_ptr + offs, mask=mask, other=0.5)
            e = (0.0 - tl.log(u)).to(tl.float32)  # u = 1 gives E = +0, not -0
        else:
            e = -tl.log(_uniform_open(seed, roff + offs))
        key = tl.where(mask & (w > 0.0), w / e, 0.0)
        bm = tl.max(key, axis=0)
        idx = tl.min(tl.where(key == bm, offs, vocab), axis=0).to(tl.int64)
        take = bm > best_key
        best = tl.where(take, idx, best)
        best_key = tl.where(take, bm, best_key)
    return best


@triton.jit
def _row_argmax(ptr, vocab, BLOCK_V: tl.constexpr):
    # The first index of the row's largest logit, and whether the row keeps the contract.
    best = tl.zeros((), tl.int64)
    best_val = tl.full((), float("-inf"), tl.float32)
    nans = tl.zeros((), tl.int32)
    for start in range(0, vocab, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        logits = tl.load(ptr + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
        bm = tl.max(logits, axis=0)
        idx = tl.min(tl.where(logits == bm, offs, vocab), axis=0).to(tl.int64)
        take = bm > best_val
        best = tl.where(take, idx, best)
        best_val = tl.where(take, bm, best_val)
        nans += tl.sum((logits != logits).to(tl.int32), axis=0)
    return best, _contract_ok(best_val, nans, 1.0)


@triton.jit
def _accept_tokens_kernel(tokens_ptr, counts_ptr, draft_ptr, tl_ptr, dl_ptr, tthr_ptr, dthr_ptr,
                          au_ptr, ru_ptr, seeds_ptr, k, vocab, inv_t,
                          GREEDY: tl.constexpr, HAS_DRAFT: tl.constexpr, HAS_U: tl.constexpr,
                          BLOCK_V: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    seed = tl.load(seeds_ptr + b)
    out = tokens_ptr + b * (k + 1)
    active = tl.full((), 1, tl.int32)
    accepted = tl.zeros((), tl.int64)
    final = tl.full((), -1, tl.int64)
    # The logits contract, as in the C++ kernel: the first bad target / draft row of b (-1: none)
    # and the first row of each not yet checked; a bad row stops the test.
    bad_t = tl.full((), -1, tl.int64)
    bad_d = tl.full((), -1, tl.int64)
    next_t = tl.zeros((), tl.int64)
    next_d = tl.zeros((), tl.int64)
    for j in range(k):
        if active != 0:
            x = tl.load(draft_ptr + b * k + j)
            t_row = tl_ptr + (b * (k + 1) + j) * vocab
            next_t = tl.zeros((), tl.int64) + j + 1
            if GREEDY:
                best, ok_t = _row_argmax(t_row, vocab, BLOCK_V)
                if ok_t == 0:
                    bad_t = tl.zeros((), tl.int64) + j
                    active = 0
                elif best == x:
                    tl.store(out + j, x)
                    accepted += 1
                else:
                    final = best
                    active = 0
            else:
                thr_t = tl.load(tthr_ptr + b * (k + 1) + j)
                lse_t, ok_t = _row_lse(t_row, thr_t, inv_t, vocab, BLOCK_V)
                p = _prob(t_row, x, thr_t, inv_t, lse_t)
                d_row = dl_ptr + (b * k + j) * vocab
                thr_d = tl.load(dthr_ptr + b * k + j)
                if HAS_DRAFT:
                    lse_d, ok_d = _row_lse(d_row, thr_d, inv_t, vocab, BLOCK_V)
                    q = _prob(d_row, x, thr_d, inv_t, lse_d)
                    next_d = next_t
                else:
                    lse_d = 0.0
                    q = 1.0
                    ok_d = tl.full((), 1, tl.int32)
                if HAS_U:
                    u = tl.load(au_ptr + b * k + j)
                else:
                    u = _uniform_open(seed, tl.zeros((), tl.int32) + j).to(tl.float64)
                if ok_t == 0:
                    bad_t = tl.zeros((), tl.int64) + j
                    active = 0
                elif ok_d == 0:
                    bad_d = tl.zeros((), tl.int64) + j
                    active = 0
                elif u * q.to(tl.float64) < p.to(tl.float64):
                    tl.store(out + j, x)
                    accepted += 1
                else:
                    final = _race(t_row, thr_t, lse_t, d_row, thr_d, lse_d, x,
                                  ru_ptr + b * vocab, seed, k, inv_t, vocab, HAS_DRAFT, HAS_U,
                                  BLOCK_V)
                    if final < 0:  # p <= q everywhere (rounding): draw from p itself
                        final = _race(t_row, thr_t, lse_t, d_row, thr_d, lse_d, -1,
                                      ru_ptr + b * vocab, seed, k, inv_t, vocab, False, HAS_U,
                                      BLOCK_V)
                    active = 0
    if active != 0:  # all K accepted: the bonus token from p at position K
        t_row = tl_ptr + (b * (k + 1) + k) * vocab
        next_t = tl.zeros((), tl.int64) + k + 1
        if GREEDY:
            final, ok_t = _row_argmax(t_row, vocab, BLOCK_V)
        else:
            thr_t = tl.load(tthr_ptr + b * (k + 1) + k)
            lse_t, ok_t = _row_lse(t_row, thr_t, inv_t, vocab, BLOCK_V)
            final = _race(t_row, thr_t, lse_t, t_row, thr_t, lse_t, -1, ru_ptr + b * vocab, seed,
                          k, inv_t, vocab, False, HAS_U, BLOCK_V)
        if ok_t == 0:
            bad_t = tl.zeros((), tl.int64) + k
    tl.store(out + accepted, final)
    for j in range(k + 1):
        if j > accepted:
            tl.store(out + j, -1)
    # Every row is under the contract, read or not (whether a call is refused must not depend on
    # the random draws): check the rows the test did not reach, target rows first.
    for j in range(k + 1):
        if (bad_t < 0) & (j >= next_t):
            if _row_ok(tl_ptr + (b * (k + 1) + j) * vocab, inv_t, vocab, BLOCK_V) == 0:
                bad_t = tl.zeros((), tl.int64) + j
    if HAS_DRAFT:
        for j in range(k):
            if (bad_t < 0) & (bad_d < 0) & (j >= next_d):
                if _row_ok(dl_ptr + (b * k + j) * vocab, inv_t, vocab, BLOCK_V) == 0:
                    bad_d = tl.zeros((), tl.int64) + j
    # A bad row is reported through the count, as the C++ kernel does (csrc/cpu/ops.inc).
    code = tl.where(bad_t >= 0, -1 - bad_t, tl.where(bad_d >= 0, -1 - (k + 1) - bad_d, accepted))
    tl.store(counts_ptr + b, code)


def accept_tokens(tokens, counts, draft_tokens, target_logits, draft_logits, target_thr,
                  draft_thr, accept_u, race_u, seeds, temperature, per_row_seeds):
    batch, k = draft_tokens.shape
    vocab = target_logits.shape[-1]
    device = target_logits.device
    greedy = temperature == 0.0
    if target_thr is None:
        target_thr = torch.full((batch, k + 1), float("-inf"), device=device)
    if draft_thr is None:
        draft_thr = torch.full((batch, k), float("-inf"), device=device)
    if not per_row_seeds:
        # One seed for the batch: give each row its own key so rows never share numbers.
        base = int(seeds[0]) if batch else 0
        seeds = torch.tensor([(base + r * _GOLDEN) % (2**63) for r in range(batch)],
                             dtype=torch.int64, device=device)
    has_u = accept_u is not None
    # A row that breaks the logits contract (NaN, +inf) is computed through with NaNs until the
    # kernel reports it; the GPU does that silently, the interpreter's numpy would warn.
    quiet = contextlib.nullcontext()
    if _backend.triton_interpreted():
        import numpy

        quiet = numpy.errstate(invalid="ignore", over="ignore", divide="ignore")
    with quiet:
        _accept_tokens_kernel[(batch,)](
            tokens, counts, draft_tokens, target_logits,
            target_logits if draft_logits is None else draft_logits,
            target_thr, draft_thr,
            accept_u if has_u else target_thr, race_u if has_u else target_thr, seeds,
            k, vocab, 1.0 if greedy else 1.0 / temperature,
            GREEDY=greedy, HAS_DRAFT=draft_logits is not None, HAS_U=has_u, BLOCK_V=BLOCK_V,
            # No fused multiply-add: fma(l, 1/T, -lse) keeps the product's rounding error that the
            # max / lse pass rounded away, so at a tiny temperature (l / T ~ 1e9) exp(l / T - lse)
            # at the argmax underflows to 0 instead of 1 and the greedy token is lost.
            enable_fp_fusion=False,
        )


@triton.jit
def _accept_steps_kernel(acc_ptr, w_ptr, r_ptr, u_ptr, n, threshold, sharpness, seed,
                         KIND: tl.constexpr, HAS_U: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    r = tl.load(r_ptr + offs, mask=mask, other=0.0)
    if KIND == 0:
        w = tl.where(r >= threshold, 1.0, 0.0).to(tl.float64)
    elif KIND == 1:
        w = tl.zeros_like(r) + threshold
    elif KIND == 2:
        w = tl.minimum(tl.maximum(r / threshold, 0.0), 1.0)
    else:
        w = 1.0 / (1.0 + tl.exp(-sharpness * (r - threshold)))
    if HAS_U:
        u = tl.load(u_ptr + offs, mask=mask, other=1.0)
    else:
        u = _uniform_open(seed, offs).to(tl.float64)
    tl.store(w_ptr + offs, w, mask=mask)
    tl.store(acc_ptr + offs, u < w, mask=mask)


def accept_steps(accepted, weights, rewards, uniforms, kind, threshold, sharpness, seed):
    n = rewards.numel()
    block = 256
    _accept_steps_kernel[(triton.cdiv(n, block),)](
        accepted, weights, rewards, rewards if uniforms is None else uniforms, n, threshold,
        sharpness, seed, KIND=kind, HAS_U=uniforms is not None, BLOCK=block,
    )
