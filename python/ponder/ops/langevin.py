"""Langevin-family sampler steps, fused: one pass over memory per step, noise drawn in-kernel.

Every op works on a batch of chains, ``x: [C, d]`` (the elementwise steps accept any shape), in
float32 / float64, and float16 / bfloat16 where the backend can (the math runs in float32 for
those, float64 for float64). Gradients are of the log-density: ``grad_logp = -grad f`` for a
target ``p(x) ~ exp(-f(x))``.

Randomness: pass ``noise`` (standard normals) for an exact, backend-independent result, or let
the kernel draw its own from a counter-based Philox stream keyed by ``generator`` (an int seed, a
``torch.Generator``, or None for torch's default generator). The same seed, backend and shapes
give the same result, whatever the thread count.

Each op has a plain-torch ``*_reference`` (the definition, used by the tests) and is registered
as a ``torch.library`` custom op ``ponder::<name>`` with a fake, so it works under
``torch.compile``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from .. import _backend
from ..validation import check_real, check_tensor, resolve_seed
from ._common import (
    FLOAT_DTYPES,
    acc_dtype,
    call_op,
    choose_backend,
    empty_output,
    launch_native,
    seeded_generator,
)

__all__ = [
    "mala_accept",
    "mala_accept_reference",
    "mala_log_alpha_reference",
    "mala_propose",
    "mala_propose_reference",
    "proximal_step",
    "proximal_step_reference",
    "ula_step",
    "ula_step_reference",
    "uld_coefficients",
    "uld_step",
    "uld_step_reference",
]


# Every step has a kernel on every backend; each backend's module names it like the op.
KERNELS = _backend.KernelTable(
    "langevin",
    {
        op: {"cpu": op, "cuda": op, "triton": op}
        for op in ("ula_step", "mala_propose", "proximal_step", "uld_step", "mala_accept")
    },
)


# --------------------------------------------------------------------------------------------
# Coefficients (host, float64)
# --------------------------------------------------------------------------------------------


def _series(s: float, first: int, coef: Callable[[int], float], terms: int = 14) -> float:
    """sum_{k >= first} coef(k) (-s)^k / k!  (for the small-s branches below)."""
    return sum(coef(k) * (-s) ** k / math.factorial(k) for k in range(first, first + terms))


def uld_coefficients(
    step_size: float, friction: float
) -> tuple[float, float, float, float, float, float]:
    """Coefficients of the exact-OU underdamped Langevin step (unit mass, unit temperature).

    With ``a = exp(-gamma h)``, ``b = (1 - a) / gamma`` and ``e = (h - b) / gamma``::

        v' = a v + b grad_logp + sv n_v
        x' = x + b v + e grad_logp + sxv n_v + sx n_x

    where ``(sv, sxv, sx)`` is the Cholesky factor of the joint covariance of the noise:
    ``Var xi_v = 1 - a^2``, ``Cov(xi_x, xi_v) = (1 - a)^2 / gamma`` and
    ``Var xi_x = (2 / gamma) (h - 2 (1 - a) / gamma + (1 - a^2) / (2 gamma))`` (docs/samplers.md).
    Small ``gamma h`` uses series, so nothing cancels catastrophically. Exact for
    ``1e-150 <= gamma <= 1e150`` and ``gamma h >= 1e-100`` (what :func:`uld_step` accepts).

    Returns:
        ``(a, b, e, sv, sxv, sx)`` as Python floats.
    """
    h, gamma = float(step_size), float(friction)
    s = gamma * h
    a = math.exp(-s)
    one_minus_a = -math.expm1(-s)
    b = one_minus_a / gamma
    if s < 0.1:
        # s - (1 - e^-s) = sum_{k>=2} (-s)^k / k!
        e_num = _series(s, 2, lambda k: 1.0)
        # s - 2 (1 - e^-s) + (1 - e^-2s) / 2 = sum_{k>=3} (2 - 2^(k-1)) (-s)^k / k!
        var_x_num = _series(s, 3, lambda k: 2.0 - 2.0 ** (k - 1))
    else:
        e_num = s - one_minus_a
        var_x_num = s - 2.0 * one_minus_a + 0.5 * (-math.expm1(-2.0 * s))
    e = e_num / gamma**2
    var_v = -math.expm1(-2.0 * s)
    var_x = 2.0 * var_x_num / gamma**2
    cov = one_minus_a**2 / gamma
    sv = math.sqrt(var_v)
    sxv = cov / sv
    sx = math.sqrt(max(var_x - sxv * sxv, 0.0))
    return a, b, e, sv, sxv, sx


# Where uld_coefficients is exact: it divides by friction**2, which must be a normal float64, and
# its small-(friction h) series are s**2 / 2 and s**3 / 3 at leading order, which must not
# underflow either (they did not raise, they went silently wrong).
ULD_FRICTION_RANGE = (1e-150, 1e150)
ULD_MIN_FRICTION_STEP = 1e-100


def check_uld_range(op: str, step_size: float, friction: float) -> None:
    """Raise ValueError (naming ``op``) where ULD's coefficients break down in float64: friction
    outside ULD_FRICTION_RANGE, or step_size * friction too small or too large."""
    low, high = ULD_FRICTION_RANGE
    if not low <= friction <= high:
        raise ValueError(f"{op}: friction must be in [{low:g}, {high:g}], got {friction:g}")
    s = step_size * friction
    if not ULD_MIN_FRICTION_STEP <= s <= sys.float_info.max:
        raise ValueError(
            f"{op}: step_size * friction must be in [{ULD_MIN_FRICTION_STEP:g}, "
            f"{sys.float_info.max:g}], got step_size={step_size:g}, friction={friction:g}"
        )


def _check_coefficients(
    op: str, x: Tensor, backend: str, coefs: Mapping[str, float], args: str
) -> None:
    """Refuse finite arguments whose step coefficients are not finite in the dtype the kernels
    compute in (``acc_dtype(x.dtype)``; float32 on Triton, which takes Python float arguments
    as float32): the step would silently be inf or NaN everywhere."""
    acc = torch.float32 if backend == "triton" else acc_dtype(x.dtype)
    limit = torch.finfo(acc).max
    for formula, value in coefs.items():
        if not abs(value) <= limit:  # NaN fails too
            raise ValueError(
                f"{op}: {args} too large: they give {formula} = {value:g}, beyond "
                f"{str(acc).removeprefix('torch.')}'s range (need |{formula}| <= {limit:g})"
            )


# --------------------------------------------------------------------------------------------
# References: plain torch, math in float32 (float64 for float64 inputs). The definition of each op.
# --------------------------------------------------------------------------------------------


def ula_step_reference(
    x: Tensor, grad_logp: Tensor, step_size: float, temperature: float = 1.0, *, noise: Tensor
) -> Tensor:
    """``x + h grad_logp + sqrt(2 h T) noise``."""
    acc = acc_dtype(x.dtype)
    out = (
        x.to(acc)
        + step_size * grad_logp.to(acc)
        + math.sqrt(2.0 * step_size * temperature) * noise.to(acc)
    )
    return out.to(x.dtype)


def mala_propose_reference(
    x: Tensor, grad_logp: Tensor, step_size: float, *, noise: Tensor
) -> Tensor:
    """The MALA proposal ``x + h grad_logp + sqrt(2 h) noise``."""
    return ula_step_reference(x, grad_logp, step_size, 1.0, noise=noise)


def mala_log_alpha_reference(
    x: Tensor,
    logp: Tensor,
    grad_logp: Tensor,
    x_prop: Tensor,
    logp_prop: Tensor,
    grad_logp_prop: Tensor,
    step_size: float,
) -> Tensor:
    """Per-chain log acceptance ratio, float64: ``logp' - logp + log q(x|x') - log q(x'|x)``
    with ``log q(a|b) = -|a - b - h grad_logp(b)|^2 / (4 h)``. Shapes: x [C, d] -> [C].

    The proposal part is ``sum_j (r_f^2 - r_b^2) / (4 h)`` with ``r_f = x' - x - h g`` and
    ``r_b = x - x' - h g'``, summed per coordinate as the difference of squares
    ``-(g + g') (2 (x' - x) + h (g' - g)) / 4``: no 1/h, so a tiny step neither overflows
    (-inf - -inf, a NaN) nor cancels catastrophically (the kernels compute the same). A
    coordinate with an infinite input keeps the direct form, whose NaN / inf pattern is that of
    the two squared norms: NaN (rejected) where both are infinite.
    """
    x, g, xp, gp = (t.double() for t in (x, grad_logp, x_prop, grad_logp_prop))
    h = step_size
    term = -0.25 * (g + gp) * (2.0 * (xp - x) + h * (gp - g))
    r_f, r_b = xp - x - h * g, x - xp - h * gp
    finite = torch.isfinite(x) & torch.isfinite(g) & torch.isfinite(xp) & torch.isfinite(gp)
    term = torch.where(finite, term, (r_f * r_f - r_b * r_b) / (4 * h))
    return logp_prop.double() - logp.double() + term.sum(-1)


def mala_accept_reference(
    x: Tensor,
    logp: Tensor,
    grad_logp: Tensor,
    x_prop: Tensor,
    logp_prop: Tensor,
    grad_logp_prop: Tensor,
    step_size: float,
    *,
    uniforms: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Metropolis-Hastings: accept chain c where ``log u_c < log alpha_c`` (a NaN log alpha is
    rejected), and return the selected ``(x, logp, grad_logp)`` and ``accepted``."""
    log_alpha = mala_log_alpha_reference(
        x, logp, grad_logp, x_prop, logp_prop, grad_logp_prop, step_size
    )
    accepted = torch.log(uniforms.double()) < log_alpha
    row = accepted.unsqueeze(-1)
    return (
        torch.where(row, x_prop, x),
        torch.where(accepted, logp_prop, logp),
        torch.where(row, grad_logp_prop, grad_logp),
        accepted,
    )


def uld_step_reference(
    x: Tensor, v: Tensor, grad_logp: Tensor, step_size: float, friction: float, *, noise: Tensor
) -> tuple[Tensor, Tensor]:
    """One exact-OU underdamped Langevin step; ``noise: [2, *x.shape]`` = (n_v, n_x), independent
    standard normals (see :func:`uld_coefficients`)."""
    acc = acc_dtype(x.dtype)
    a, b, e, sv, sxv, sx = uld_coefficients(step_size, friction)
    x32, v32, g32 = x.to(acc), v.to(acc), grad_logp.to(acc)
    n_v, n_x = noise[0].to(acc), noise[1].to(acc)
    v_new = a * v32 + b * g32 + sv * n_v
    x_new = x32 + b * v32 + e * g32 + sxv * n_v + sx * n_x
    return x_new.to(x.dtype), v_new.to(x.dtype)


def proximal_step_reference(
    z: Tensor, y: Tensor, grad_logp: Tensor, step_size: float, eta: float, *, noise: Tensor
) -> Tensor:
    """SPS inner step ``(1 - tau/eta) z + (tau/eta) y + tau grad_logp + sqrt(2 tau) noise``."""
    acc = acc_dtype(z.dtype)
    tau = step_size
    out = (
        (1.0 - tau / eta) * z.to(acc)
        + (tau / eta) * y.to(acc)
        + tau * grad_logp.to(acc)
        + math.sqrt(2.0 * tau) * noise.to(acc)
    )
    return out.to(z.dtype)


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------


def _draw_noise(shape: Sequence[int], like: Tensor, seed: int) -> Tensor:
    gen = seeded_generator(seed, like.device)
    return torch.randn(tuple(shape), generator=gen, dtype=acc_dtype(like.dtype), device=like.device)


def _run_elementwise(
    name: str,
    backend: str,
    inputs: Sequence[Tensor],
    noise: Tensor | None,
    coefs: Sequence[float],
    seed: int,
    reference: Callable[[Sequence[Tensor], Tensor], Tensor | tuple[Tensor, ...]],
    n_out: int = 1,
) -> list[Tensor]:
    """Run an elementwise step on any backend. ``inputs[0]`` fixes shape, dtype and device;
    ``noise`` is None or its normals (``[n_streams, *shape]`` for several streams)."""
    first = inputs[0]
    if first.numel() == 0:
        return [
            torch.empty(first.shape, dtype=first.dtype, device=first.device) for _ in range(n_out)
        ]
    if backend == "torch":
        n_streams = 2 if n_out == 2 else 1
        if noise is None:
            shape = (2, *first.shape) if n_streams == 2 else first.shape
            noise = _draw_noise(shape, first, seed)
        result = reference(inputs, noise)
        # The reference keeps a permuted input's strides; the op promises contiguous outputs.
        results = result if isinstance(result, tuple) else (result,)
        return [r.contiguous() for r in results]
    inputs = [t.contiguous() for t in inputs]
    noise = None if noise is None else noise.contiguous()
    outs = [empty_output(first.shape, first.dtype, first.device) for _ in range(n_out)]
    kernel = KERNELS.kernel(name, backend)
    if backend == "triton":
        kernel(*outs, *inputs, noise, *coefs, seed)
    else:
        code = _backend.DTYPE_CODES[first.dtype]
        launch_native(backend, kernel, [*outs, *inputs, noise], first.numel(), code, *coefs, seed)
    return outs


def _empty_like_contiguous(x: Tensor) -> Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _ula_step_impl(
    x: Tensor,
    grad_logp: Tensor,
    step_size: float,
    temperature: float,
    noise: Tensor | None,
    seed: int,
    backend: str,
) -> Tensor:
    coefs = (step_size, math.sqrt(2.0 * step_size * temperature))
    return _run_elementwise(
        "ula_step",
        backend,
        [x, grad_logp],
        noise,
        coefs,
        seed,
        lambda t, xi: ula_step_reference(t[0], t[1], step_size, temperature, noise=xi),
    )[0]


_ula_step_op = torch.library.custom_op("ponder::ula_step", _ula_step_impl, mutates_args=())


@_ula_step_op.register_fake
def _(x, grad_logp, step_size, temperature, noise, seed, backend):
    return _empty_like_contiguous(x)


def _mala_propose_impl(
    x: Tensor,
    grad_logp: Tensor,
    step_size: float,
    noise: Tensor | None,
    seed: int,
    backend: str,
) -> Tensor:
    coefs = (step_size, math.sqrt(2.0 * step_size))
    return _run_elementwise(
        "mala_propose",
        backend,
        [x, grad_logp],
        noise,
        coefs,
        seed,
        lambda t, xi: mala_propose_reference(t[0], t[1], step_size, noise=xi),
    )[0]


_mala_propose_op = torch.library.custom_op(
    "ponder::mala_propose", _mala_propose_impl, mutates_args=()
)


@_mala_propose_op.register_fake
def _(x, grad_logp, step_size, noise, seed, backend):
    return _empty_like_contiguous(x)


def _proximal_step_impl(
    z: Tensor,
    y: Tensor,
    grad_logp: Tensor,
    step_size: float,
    eta: float,
    noise: Tensor | None,
    seed: int,
    backend: str,
) -> Tensor:
    tau = step_size
    coefs = (1.0 - tau / eta, tau / eta, tau, math.sqrt(2.0 * tau))
    return _run_elementwise(
        "proximal_step",
        backend,
        [z, y, grad_logp],
        noise,
        coefs,
        seed,
        lambda t, xi: proximal_step_reference(t[0], t[1], t[2], tau, eta, noise=xi),
    )[0]


_proximal_step_op = torch.library.custom_op(
    "ponder::proximal_step", _proximal_step_impl, mutates_args=()
)


@_proximal_step_op.register_fake
def _(z, y, grad_logp, step_size, eta, noise, seed, backend):
    return _empty_like_contiguous(z)


def _uld_step_impl(
    x: Tensor,
    v: Tensor,
    grad_logp: Tensor,
    step_size: float,
    friction: float,
    noise: Tensor | None,
    seed: int,
    backend: str,
) -> tuple[Tensor, Tensor]:
    coefs = uld_coefficients(step_size, friction)
    # Native launchers write (x_out, v_out); the reference returns (x_new, v_new) too.
    x_new, v_new = _run_elementwise(
        "uld_step",
        backend,
        [x, v, grad_logp],
        noise,
        coefs,
        seed,
        lambda t, xi: uld_step_reference(t[0], t[1], t[2], step_size, friction, noise=xi),
        n_out=2,
    )
    return x_new, v_new


_uld_step_op = torch.library.custom_op("ponder::uld_step", _uld_step_impl, mutates_args=())


@_uld_step_op.register_fake
def _(x, v, grad_logp, step_size, friction, noise, seed, backend):
    return _empty_like_contiguous(x), _empty_like_contiguous(x)


def _mala_accept_impl(
    x: Tensor,
    logp: Tensor,
    grad_logp: Tensor,
    x_prop: Tensor,
    logp_prop: Tensor,
    grad_logp_prop: Tensor,
    step_size: float,
    uniforms: Tensor | None,
    seed: int,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    chains, dim = x.shape
    if backend == "torch":
        if uniforms is None:
            gen = seeded_generator(seed, x.device)
            # (0, 1]: never exactly 0, so log u is finite.
            uniforms = 1.0 - torch.rand(chains, generator=gen, dtype=torch.float64, device=x.device)
        x_new, logp_new, g_new, accepted = mala_accept_reference(
            x, logp, grad_logp, x_prop, logp_prop, grad_logp_prop, step_size, uniforms=uniforms
        )
        return x_new.contiguous(), logp_new.clone(), g_new.contiguous(), accepted
    x, grad_logp, x_prop, grad_logp_prop = (
        t.contiguous() for t in (x, grad_logp, x_prop, grad_logp_prop)
    )
    l0 = logp.to(torch.float64).contiguous()
    l1 = logp_prop.to(torch.float64).contiguous()
    u = None if uniforms is None else uniforms.to(torch.float64).contiguous()
    x_out = empty_output(x.shape, x.dtype, x.device)
    g_out = empty_output(grad_logp.shape, grad_logp.dtype, grad_logp.device)
    logp_out = torch.empty(chains, dtype=torch.float64, device=x.device)
    accepted = torch.empty(chains, dtype=torch.bool, device=x.device)
    if chains > 0:
        tensors = [
            x_out,
            logp_out,
            g_out,
            accepted,
            x,
            l0,
            grad_logp,
            x_prop,
            l1,
            grad_logp_prop,
            u,
        ]
        kernel = KERNELS.kernel("mala_accept", backend)
        if backend == "triton":
            kernel(*tensors, step_size, seed)
        else:
            code = _backend.DTYPE_CODES[x.dtype]
            launch_native(backend, kernel, tensors, chains, dim, code, step_size, seed)
    return x_out, logp_out.to(logp.dtype), g_out, accepted


_mala_accept_op = torch.library.custom_op("ponder::mala_accept", _mala_accept_impl, mutates_args=())


@_mala_accept_op.register_fake
def _(x, logp, grad_logp, x_prop, logp_prop, grad_logp_prop, step_size, uniforms, seed, backend):
    return (
        _empty_like_contiguous(x),
        torch.empty(logp.shape, dtype=logp.dtype, device=logp.device),
        _empty_like_contiguous(grad_logp),
        torch.empty(logp.shape, dtype=torch.bool, device=logp.device),
    )


# --------------------------------------------------------------------------------------------
# Autograd. Each step is affine in its tensor inputs (x, grad_logp, the noise, ...) with scalar
# coefficients, so the backward is that same linear map transposed, exact on every backend; the
# random draws do not enter it. mala_accept selects rows: the gradient goes to the side each
# chain took (the accept decision is piecewise constant in the inputs: zero derivative almost
# everywhere).
# --------------------------------------------------------------------------------------------


def _cast(g: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    """The gradient of an input of ``dtype`` (None: the input is not a tensor or was None)."""
    return None if g is None or dtype is None else g.to(dtype)


def _setup_context(ctx, inputs, output):
    # Backwards need the scalar coefficients, each tensor input's dtype (None for a scalar or an
    # absent tensor), and for mala_accept which chains were accepted.
    ctx.args = [a if not isinstance(a, Tensor) else None for a in inputs]
    ctx.dtypes = [a.dtype if isinstance(a, Tensor) else None for a in inputs]
    if isinstance(output, tuple) and len(output) == 4:  # mala_accept
        ctx.save_for_backward(output[3])


def _ula_step_backward(ctx, g_out):
    dx, dg, _, _, dn = ctx.dtypes[:5]
    h, t = ctx.args[2], ctx.args[3]
    return (_cast(g_out, dx), _cast(h * g_out, dg), None, None,
            _cast(math.sqrt(2.0 * h * t) * g_out, dn), None, None)


def _mala_propose_backward(ctx, g_out):
    dx, dg, _, dn = ctx.dtypes[:4]
    h = ctx.args[2]
    return (_cast(g_out, dx), _cast(h * g_out, dg), None,
            _cast(math.sqrt(2.0 * h) * g_out, dn), None, None)


def _proximal_step_backward(ctx, g_out):
    dz, dy, dg, _, _, dn = ctx.dtypes[:6]
    tau, eta = ctx.args[3], ctx.args[4]
    return (_cast((1.0 - tau / eta) * g_out, dz), _cast((tau / eta) * g_out, dy),
            _cast(tau * g_out, dg), None, None,
            _cast(math.sqrt(2.0 * tau) * g_out, dn), None, None)


def _uld_step_backward(ctx, g_x, g_v):
    dx, dv, dg, _, _, dn = ctx.dtypes[:6]
    a, b, e, sv, sxv, sx = uld_coefficients(ctx.args[3], ctx.args[4])
    g_x = torch.zeros_like(g_v) if g_x is None else g_x
    g_v = torch.zeros_like(g_x) if g_v is None else g_v
    g_noise = torch.stack((sv * g_v + sxv * g_x, sx * g_x)) if dn is not None else None
    return (_cast(g_x, dx), _cast(a * g_v + b * g_x, dv), _cast(b * g_v + e * g_x, dg),
            None, None, _cast(g_noise, dn), None, None)


def _mala_accept_backward(ctx, g_x, g_logp, g_grad, _g_accepted):
    (accepted,) = ctx.saved_tensors
    dx, dl, dg, dxp, dlp, dgp = ctx.dtypes[:6]

    def split(g, mask, d_rejected, d_accepted):
        if g is None:
            return None, None
        zero = torch.zeros_like(g)
        return _cast(torch.where(mask, zero, g), d_rejected), \
            _cast(torch.where(mask, g, zero), d_accepted)

    row = accepted.unsqueeze(-1)
    gx, gxp = split(g_x, row, dx, dxp)
    gl, glp = split(g_logp, accepted, dl, dlp)
    gg, ggp = split(g_grad, row, dg, dgp)
    return gx, gl, gg, gxp, glp, ggp, None, None, None, None


for _op, _backward in (
    (_ula_step_op, _ula_step_backward),
    (_mala_propose_op, _mala_propose_backward),
    (_proximal_step_op, _proximal_step_backward),
    (_uld_step_op, _uld_step_backward),
    (_mala_accept_op, _mala_accept_backward),
):
    _op.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------
# Public API: validate, choose the backend, resolve the seed, call the op.
# --------------------------------------------------------------------------------------------


def _prepare(op: str, x: object, backend: str | None, arg: str = "x") -> str:
    x = check_tensor(op, arg, x, dtype=FLOAT_DTYPES)
    return choose_backend(op, KERNELS, x, backend)


def _check_like(
    op: str, name: str, t: object, x: Tensor, shape: Sequence[int] | None = None
) -> Tensor:
    return check_tensor(
        op, name, t, dtype=x.dtype, device=x.device, shape=x.shape if shape is None else shape
    )


def _seed(op: str, noise: Tensor | None, generator: object) -> int:
    if noise is not None:
        if generator is not None:
            raise ValueError(f"{op}: pass noise or generator, not both")
        return 0
    return resolve_seed(op, generator)


def ula_step(
    x: Tensor,
    grad_logp: Tensor,
    step_size: float,
    *,
    temperature: float = 1.0,
    noise: Tensor | None = None,
    generator: torch.Generator | int | None = None,
    backend: str | None = None,
) -> Tensor:
    """One unadjusted Langevin (ULA) step; SGLD when ``grad_logp`` is a minibatch estimate.

    ``x_new = x + h * grad_logp + sqrt(2 h T) * xi``,  ``xi ~ N(0, I)``.

    Args:
        x: ``[C, d]`` chain states (any shape works), float32/64 or float16/bfloat16.
        grad_logp: like ``x``: the gradient of the log-density at ``x``.
        step_size: ``h > 0``.
        temperature: ``T >= 0`` (``T = 0`` is plain gradient ascent). ``h`` and
            ``sqrt(2 h T)`` must be finite in the compute dtype (float32 for float32/16 and
            bfloat16 inputs), else a ValueError (the step would be inf or NaN).
        noise: optional standard normals like ``x`` (exact, backend-independent path).
        generator: int seed, ``torch.Generator`` or None (torch's default generator).
        backend: ``"cpu"``, ``"cuda"``, ``"triton"`` or ``"torch"``; default by device.

    Returns:
        ``x_new``: like ``x`` (contiguous).
    """
    op = "ula_step"
    name = _prepare(op, x, backend)
    _check_like(op, "grad_logp", grad_logp, x)
    h = check_real(op, "step_size", step_size, positive=True)
    t = check_real(op, "temperature", temperature, nonnegative=True)
    _check_coefficients(op, x, name, {"step_size": h, "sqrt(2 step_size temperature)":
                                math.sqrt(2.0 * h * t)}, "step_size and temperature are")
    if noise is not None:
        _check_like(op, "noise", noise, x)
    seed = _seed(op, noise, generator)
    return call_op(torch.ops.ponder.ula_step, _ula_step_impl, x, grad_logp, h, t, noise, seed, name)


def mala_propose(
    x: Tensor,
    grad_logp: Tensor,
    step_size: float,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | int | None = None,
    backend: str | None = None,
) -> Tensor:
    """The MALA proposal ``x_prop = x + h * grad_logp + sqrt(2 h) * xi``.

    Evaluate the log-density and its gradient at ``x_prop``, then call :func:`mala_accept`.

    Args:
        x: ``[C, d]`` chain states; grad_logp: like ``x``; step_size: ``h > 0``;
        noise / generator / backend: as in :func:`ula_step`.

    Returns:
        ``x_prop``: like ``x``.
    """
    op = "mala_propose"
    name = _prepare(op, x, backend)
    _check_like(op, "grad_logp", grad_logp, x)
    h = check_real(op, "step_size", step_size, positive=True)
    _check_coefficients(op, x, name, {"step_size": h, "sqrt(2 step_size)": math.sqrt(2.0 * h)},
                        "step_size is")
    if noise is not None:
        _check_like(op, "noise", noise, x)
    seed = _seed(op, noise, generator)
    return call_op(
        torch.ops.ponder.mala_propose, _mala_propose_impl, x, grad_logp, h, noise, seed, name
    )


def mala_accept(
    x: Tensor,
    logp: Tensor,
    grad_logp: Tensor,
    x_prop: Tensor,
    logp_prop: Tensor,
    grad_logp_prop: Tensor,
    step_size: float,
    *,
    uniforms: Tensor | None = None,
    generator: torch.Generator | int | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The MALA Metropolis-Hastings test, selecting each chain's next state in one pass.

    ``log alpha = logp' - logp + log q(x | x') - log q(x' | x)`` with
    ``log q(a | b) = -|a - b - h grad_logp(b)|^2 / (4 h)``; chain ``c`` moves iff
    ``log u_c < log alpha_c``. A NaN log-density at the proposal is rejected.

    Args:
        x, grad_logp: ``[C, d]`` current states and gradients of the log-density there.
        logp: ``[C]`` log-density at ``x`` (any float dtype; the test runs in float64).
        x_prop, grad_logp_prop: ``[C, d]`` proposals (from :func:`mala_propose`) and gradients.
        logp_prop: ``[C]`` log-density at ``x_prop``, same dtype as ``logp``.
        step_size: the ``h > 0`` used by the proposal.
        uniforms: optional ``[C]`` uniforms in (0, 1] (exact path); else drawn from
            ``generator`` (int seed, ``torch.Generator`` or None), never exactly 0.
        backend: as in :func:`ula_step`.

    Returns:
        ``(x_new [C, d], logp_new [C], grad_logp_new [C, d], accepted [C] bool)``.
    """
    op = "mala_accept"
    name = _prepare(op, x, backend)
    if x.dim() != 2:
        raise ValueError(f"{op}: x must be [chains, dim], got shape {tuple(x.shape)}")
    chains = x.shape[0]
    _check_like(op, "grad_logp", grad_logp, x)
    _check_like(op, "x_prop", x_prop, x)
    _check_like(op, "grad_logp_prop", grad_logp_prop, x)
    check_tensor(op, "logp", logp, dtype=FLOAT_DTYPES, device=x.device, shape=(chains,))
    check_tensor(op, "logp_prop", logp_prop, dtype=logp.dtype, device=x.device, shape=(chains,))
    h = check_real(op, "step_size", step_size, positive=True)
    if uniforms is not None:
        if generator is not None:
            raise ValueError(f"{op}: pass uniforms or generator, not both")
        check_tensor(op, "uniforms", uniforms, dtype=FLOAT_DTYPES, device=x.device, shape=(chains,))
        if chains and not bool(((uniforms > 0) & (uniforms <= 1)).all()):
            raise ValueError(f"{op}: uniforms must lie in (0, 1]")
        seed = 0
    else:
        seed = resolve_seed(op, generator)
    return call_op(
        torch.ops.ponder.mala_accept,
        _mala_accept_impl,
        x,
        logp,
        grad_logp,
        x_prop,
        logp_prop,
        grad_logp_prop,
        h,
        uniforms,
        seed,
        name,
    )


def uld_step(
    x: Tensor,
    v: Tensor,
    grad_logp: Tensor,
    step_size: float,
    friction: float,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | int | None = None,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """One underdamped Langevin step with the exact OU integrator (gradient frozen over the step).

    ``dx = v dt``, ``dv = -gamma v dt + grad_logp dt + sqrt(2 gamma) dB`` (unit mass and
    temperature), integrated exactly for a constant gradient, with the correlated Gaussian noise
    of the exact solution (coefficients: :func:`uld_coefficients`). Biased at O(h) for a
    non-constant gradient, as in RTK-ULD.

    Args:
        x, v: ``[C, d]`` positions and velocities (any shape works, the same for both).
        grad_logp: like ``x``: the gradient of the log-density at ``x``.
        step_size: ``h > 0``; friction: ``gamma`` in ``[1e-150, 1e150]``, with
            ``gamma h >= 1e-100``, and coefficients finite in the compute dtype (float32 for
            float32/16 and bfloat16 inputs).
        noise: optional ``[2, *x.shape]`` independent standard normals ``(n_v, n_x)``; the op
            correlates them.
        generator / backend: as in :func:`ula_step`.

    Returns:
        ``(x_new, v_new)``, each like ``x``.
    """
    op = "uld_step"
    name = _prepare(op, x, backend)
    _check_like(op, "v", v, x)
    _check_like(op, "grad_logp", grad_logp, x)
    h = check_real(op, "step_size", step_size, positive=True)
    gamma = check_real(op, "friction", friction, positive=True)
    check_uld_range(op, h, gamma)
    _check_coefficients(op, x, name, dict(zip(("a", "b", "e", "sv", "sxv", "sx"),
                                        uld_coefficients(h, gamma), strict=True)),
                        "step_size and friction are")
    if noise is not None:
        _check_like(op, "noise", noise, x, shape=(2, *x.shape))
    seed = _seed(op, noise, generator)
    return call_op(
        torch.ops.ponder.uld_step, _uld_step_impl, x, v, grad_logp, h, gamma, noise, seed, name
    )


def proximal_step(
    z: Tensor,
    y: Tensor,
    grad_logp: Tensor,
    step_size: float,
    eta: float,
    *,
    noise: Tensor | None = None,
    generator: torch.Generator | int | None = None,
    backend: str | None = None,
) -> Tensor:
    """The SPS inner step: one Langevin step on the restricted Gaussian oracle
    ``exp(log p(z) - |z - y|^2 / (2 eta))``:

    ``z_new = (1 - tau/eta) z + (tau/eta) y + tau * grad_logp + sqrt(2 tau) * xi``.

    Args:
        z: ``[C, d]`` inner states; y: like ``z``: the outer proximal centre.
        grad_logp: like ``z``: gradient (often a minibatch estimate) of the log-density at ``z``.
        step_size: ``tau > 0`` (stable for ``tau < eta``); eta: the proximal step ``eta > 0``.
        noise / generator / backend: as in :func:`ula_step`.

    Returns:
        ``z_new``: like ``z``.
    """
    op = "proximal_step"
    name = _prepare(op, z, backend, arg="z")
    _check_like(op, "y", y, z)
    _check_like(op, "grad_logp", grad_logp, z)
    tau = check_real(op, "step_size", step_size, positive=True)
    eta_ = check_real(op, "eta", eta, positive=True)
    _check_coefficients(op, z, name, {"step_size / eta": tau / eta_, "step_size": tau,
                                "sqrt(2 step_size)": math.sqrt(2.0 * tau)},
                        "step_size and eta are")
    if noise is not None:
        _check_like(op, "noise", noise, z)
    seed = _seed(op, noise, generator)
    return call_op(
        torch.ops.ponder.proximal_step,
        _proximal_step_impl,
        z,
        y,
        grad_logp,
        tau,
        eta_,
        noise,
        seed,
        name,
    )
