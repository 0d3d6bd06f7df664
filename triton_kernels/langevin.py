"""Triton kernels for ponder.ops.langevin (GPU; on the CPU only under TRITON_INTERPRET=1).

The launchers take contiguous tensors already validated by ponder.ops.langevin and write into
the given outputs. Normals come from Triton's Philox (``tl.randn``) keyed by the seed, so the
numbers differ from the C++ backends' stream; exact parity across backends is only promised on
the explicit-noise path.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024
# Independent Philox keys derived from the seed: a second normal per element (uld_step), and
# mala_accept's uniforms (so the same seed for propose and accept does not couple them).
_SECOND_STREAM = 0x5851F42D4C957F2D
_ACCEPT_STREAM = 0x2545F4914F6CDD1D


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _derived_seed(seed: int, stream: int) -> int:
    return (seed ^ stream) & (2**63 - 1)


@triton.jit
def _normals(noise_ptr, offs, mask, seed, HAS_NOISE: tl.constexpr, ACC: tl.constexpr):
    if HAS_NOISE:
        xi = tl.load(noise_ptr + offs, mask=mask, other=0.0).to(ACC)
    else:
        xi = tl.randn(seed, offs).to(ACC)
    return xi


@triton.jit
def _ula_step_kernel(out_ptr, x_ptr, g_ptr, noise_ptr, n, drift, noise_scale, seed,
                     HAS_NOISE: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
    xi = _normals(noise_ptr, offs, mask, seed, HAS_NOISE, ACC)
    out = x + drift * g + noise_scale * xi
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _proximal_step_kernel(out_ptr, z_ptr, y_ptr, g_ptr, noise_ptr, n, keep, pull, drift,
                          noise_scale, seed, HAS_NOISE: tl.constexpr, ACC: tl.constexpr,
                          BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    z = tl.load(z_ptr + offs, mask=mask, other=0.0).to(ACC)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(ACC)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
    xi = _normals(noise_ptr, offs, mask, seed, HAS_NOISE, ACC)
    out = keep * z + pull * y + drift * g + noise_scale * xi
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _uld_step_kernel(x_out_ptr, v_out_ptr, x_ptr, v_ptr, g_ptr, noise_ptr, n, a, b, e, sv, sxv,
                     sx, seed, seed2, HAS_NOISE: tl.constexpr, ACC: tl.constexpr,
                     BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(ACC)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(ACC)
    n_v = _normals(noise_ptr, offs, mask, seed, HAS_NOISE, ACC)
    n_x = _normals(noise_ptr + n, offs, mask, seed2, HAS_NOISE, ACC)
    v_new = a * v + b * g + sv * n_v
    x_new = x + b * v + e * g + sxv * n_v + sx * n_x
    tl.store(x_out_ptr + offs, x_new.to(x_out_ptr.dtype.element_ty), mask=mask)
    tl.store(v_out_ptr + offs, v_new.to(v_out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _mala_accept_kernel(x_out_ptr, logp_out_ptr, g_out_ptr, acc_ptr, x_ptr, logp_ptr, g_ptr,
                        xp_ptr, logpp_ptr, gp_ptr, u_ptr, dim, h, seed,
                        HAS_U: tl.constexpr, ACC: tl.constexpr, BLOCK_D: tl.constexpr):
    # One program per chain: reduce the proposal term over the row (float64), decide, copy.
    c = tl.program_id(0)
    row = c.to(tl.int64) * dim
    total = tl.zeros([BLOCK_D], dtype=tl.float64)
    for start in range(0, dim, BLOCK_D):
        offs = start + tl.arange(0, BLOCK_D)
        m = offs < dim
        x0 = tl.load(x_ptr + row + offs, mask=m, other=0.0).to(ACC)
        g0 = tl.load(g_ptr + row + offs, mask=m, other=0.0).to(ACC)
        x1 = tl.load(xp_ptr + row + offs, mask=m, other=0.0).to(ACC)
        g1 = tl.load(gp_ptr + row + offs, mask=m, other=0.0).to(ACC)
        term = -0.25 * (g0 + g1) * (2.0 * (x1 - x0) + h * (g1 - g0))
        # An infinite coordinate: the direct form, NaN like the definition where both squared
        # norms are infinite (csrc/include/ponder/langevin.h, mala_log_ratio_term).
        finite = ((x0 - x0) + (x1 - x1) + (g0 - g0) + (g1 - g1)) == 0.0
        r_f = x1 - x0 - h * g0
        r_b = x0 - x1 - h * g1
        term = tl.where(finite, term, (r_f * r_f - r_b * r_b) / (4.0 * h))
        total += term.to(tl.float64)
    l0 = tl.load(logp_ptr + c)
    l1 = tl.load(logpp_ptr + c)
    log_alpha = l1 - l0 + tl.sum(total, axis=0)
    if HAS_U:
        u = tl.load(u_ptr + c)
    else:
        r = tl.randint(seed, c)
        # (r + 0.5) / 2^32 in float64: never 0, never 1.
        u = (r.to(tl.float64) + 0.5) * 2.3283064365386963e-10
    take = tl.log(u) < log_alpha  # NaN log alpha: rejected
    tl.store(acc_ptr + c, take)
    tl.store(logp_out_ptr + c, tl.where(take, l1, l0))
    for start in range(0, dim, BLOCK_D):
        offs = start + tl.arange(0, BLOCK_D)
        m = offs < dim
        x0 = tl.load(x_ptr + row + offs, mask=m)
        x1 = tl.load(xp_ptr + row + offs, mask=m)
        g0 = tl.load(g_ptr + row + offs, mask=m)
        g1 = tl.load(gp_ptr + row + offs, mask=m)
        tl.store(x_out_ptr + row + offs, tl.where(take, x1, x0), mask=m)
        tl.store(g_out_ptr + row + offs, tl.where(take, g1, g0), mask=m)


def _grid(n: int):
    return (triton.cdiv(n, BLOCK),)


def _dummy(noise, like):
    # Triton needs a pointer even when the noise branch is compiled out.
    return like if noise is None else noise


def ula_step(out, x, grad_logp, noise, drift, noise_scale, seed):
    n = x.numel()
    _ula_step_kernel[_grid(n)](out, x, grad_logp, _dummy(noise, x), n, drift, noise_scale, seed,
                               HAS_NOISE=noise is not None, ACC=_acc(x.dtype), BLOCK=BLOCK)


mala_propose = ula_step  # ula_step at temperature 1: the Python layer passes sqrt(2 h)


def proximal_step(out, z, y, grad_logp, noise, keep, pull, drift, noise_scale, seed):
    n = z.numel()
    _proximal_step_kernel[_grid(n)](out, z, y, grad_logp, _dummy(noise, z), n, keep, pull, drift,
                                    noise_scale, seed, HAS_NOISE=noise is not None,
                                    ACC=_acc(z.dtype), BLOCK=BLOCK)


def uld_step(x_out, v_out, x, v, grad_logp, noise, a, b, e, sv, sxv, sx, seed):
    n = x.numel()
    _uld_step_kernel[_grid(n)](x_out, v_out, x, v, grad_logp, _dummy(noise, x), n, a, b, e, sv,
                               sxv, sx, seed, _derived_seed(seed, _SECOND_STREAM), HAS_NOISE=noise is not None,
                               ACC=_acc(x.dtype), BLOCK=BLOCK)


def mala_accept(x_out, logp_out, g_out, accepted, x, logp, grad_logp, x_prop, logp_prop,
                grad_logp_prop, uniforms, step_size, seed):
    chains, dim = x.shape
    block_d = min(triton.next_power_of_2(max(dim, 1)), 1024)
    _mala_accept_kernel[(chains,)](
        x_out, logp_out, g_out, accepted, x, logp, grad_logp, x_prop, logp_prop, grad_logp_prop,
        _dummy(uniforms, logp), dim, step_size, _derived_seed(seed, _ACCEPT_STREAM), HAS_U=uniforms is not None,
        ACC=_acc(x.dtype), BLOCK_D=block_d,
    )
