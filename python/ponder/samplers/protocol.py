"""The target protocol of the samplers: :class:`Target` and its finite-sum and diffusion
kinds, the adapters for user functions, and the checked_* calls that validate what a target
returns. The library of concrete targets is :mod:`ponder.samplers.targets`.

A target is a density ``p(x) ~ exp(-f(x))`` on ``R^d``, evaluated on a batch of chains
``x: [C, d]`` (float32 or float64, any device). Every target gives ``logp(x): [C]``,
``grad_logp(x): [C, d]`` (the gradient of the log-density, ``-grad f``: ponder's sign convention)
and ``logp_and_grad(x)``; most also give exact samples.

Parameters are stored as tensors (float64 unless given as tensors of another floating dtype).
They are cast to ``x``'s dtype and device on each call, so any ``x`` works; move a target once
with ``target.to(device=..., dtype=...)`` to avoid the per-call copies on a hot loop.

Normalisation: ``Target.normalized`` says whether ``logp`` is the exact normalised log-density
(the Gaussian family and the double well) or only up to an additive constant (logistic
regression, user functions). Samplers only need differences of ``logp``.

User functions enter through :meth:`Target.from_functions` (autograd supplies the gradient when
only ``logp`` is given). Their outputs are validated lazily by :func:`checked_logp_and_grad` and
friends, which the samplers call: a wrong shape or a NaN gradient is a ValueError that names the
function, never a silent wrong sample.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..validation import GeneratorLike, as_generator, check_int, check_real, check_tensor

__all__ = [
    "X_DTYPES",
    "DiffusionTarget",
    "FiniteSumTarget",
    "Target",
    "check_time",
    "checked_grad_logp",
    "checked_logp_and_grad",
    "checked_logp_and_score",
    "checked_score",
    "float_tensor",
]

# The dtypes of x a target evaluates (and of its parameters).
X_DTYPES = (torch.float32, torch.float64)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def float_tensor(op: str, name: str, value: object) -> Tensor:
    """A finite floating tensor from a tensor (its floating dtype is kept) or anything
    ``torch.as_tensor`` takes (float64)."""
    if isinstance(value, Tensor):
        t = value.detach()
        if t.dtype not in X_DTYPES:
            t = t.to(torch.float64)
    else:
        try:
            t = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{op}: {name} must be a tensor or a sequence of numbers") from err
    if not torch.isfinite(t).all():
        raise ValueError(f"{op}: {name} must be finite")
    return t


def check_time(op: str, t: object) -> float:
    return check_real(op, "t", t, nonnegative=True)


def _autograd_logp_and_grad(fn: Callable[[Tensor], Tensor], x: Tensor, what: str):
    """``(fn(x), grad of fn(x).sum() w.r.t. x)``, both detached.

    The chains are independent rows, so the gradient of the sum is each row's own gradient. A
    fresh leaf is made outside any inference/no-grad mode, so this works inside samplers that
    run under ``torch.no_grad()`` or ``torch.inference_mode()``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        out = fn(leaf)
        if not isinstance(out, Tensor):
            raise TypeError(f"{what} must return a torch.Tensor, got {type(out).__name__}")
        if not out.requires_grad:
            raise ValueError(
                f"{what} returned a tensor that does not depend on x through torch operations "
                "(did it go through numpy or .item()?); autograd cannot differentiate it: "
                "pass grad_logp / score as well"
            )
        (grad,) = torch.autograd.grad(out.sum(), leaf, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x)
    return out.detach(), grad


# --------------------------------------------------------------------------------------------
# Base classes
# --------------------------------------------------------------------------------------------


class Target:
    """A density ``p(x) ~ exp(-f(x))`` on ``R^dim``, batched over chains.

    Subclasses implement :meth:`logp` and usually :meth:`grad_logp` (the default differentiates
    ``logp`` with autograd) and, when computing both together is cheaper,
    :meth:`logp_and_grad`.

    Attributes
    ----------
    dim : int
        The dimension ``d``.
    normalized : bool
        True when ``logp`` is the exact normalised log-density, False when it is known only up to
        an additive constant (enough for MCMC).
    has_logp : bool
        False for targets given by a gradient (or score) alone: samplers that need energies
        (MALA) cannot use them.
    """

    normalized: bool = False
    has_logp: bool = True

    def __init__(self, dim: int):
        self.dim = check_int(type(self).__name__, "dim", dim, minimum=1)

    # ---- the interface -------------------------------------------------------------------

    def logp(self, x: Tensor) -> Tensor:
        """Log-density. ``x: [C, d]`` -> ``[C]``, in ``x``'s dtype."""
        raise NotImplementedError(f"{type(self).__name__} does not implement logp")

    def grad_logp(self, x: Tensor) -> Tensor:
        """Gradient of the log-density. ``x: [C, d]`` -> ``[C, d]``. Default: autograd."""
        return _autograd_logp_and_grad(self.logp, x, self._describe("logp"))[1]

    def logp_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logp(x): [C], grad_logp(x): [C, d])``."""
        return self.logp(x), self.grad_logp(x)

    def sample(self, n: int, generator: GeneratorLike = None) -> Tensor:
        """``n`` exact, independent samples ``[n, d]`` (in the parameters' dtype and device).

        ``generator``: a ``torch.Generator``, an int seed, or None for torch's default generator.
        Raises NotImplementedError where exact sampling is not available.
        """
        raise NotImplementedError(f"{type(self).__name__} has no exact sampler")

    def to(self, device=None, dtype: torch.dtype | None = None) -> Target:
        """A copy with every parameter tensor moved to ``device`` and floating parameters cast
        to ``dtype`` (float32 / float64)."""
        if dtype is not None and dtype not in X_DTYPES:
            raise TypeError(f"{type(self).__name__}.to: dtype must be float32 or float64")
        new = copy.copy(self)
        for key, value in vars(self).items():
            if isinstance(value, Tensor):
                cast = dtype if value.is_floating_point() else None
                setattr(new, key, value.to(device=device, dtype=cast))
        return new

    @staticmethod
    def from_functions(
        dim: int,
        logp: Callable[[Tensor], Tensor] | None = None,
        grad_logp: Callable[[Tensor], Tensor] | None = None,
        logp_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None,
        *,
        sample: Callable[[int, torch.Generator | None], Tensor] | None = None,
    ) -> Target:
        """A target from user functions of ``x: [C, dim]``.

        Give ``logp_and_grad`` (returning ``([C], [C, dim])``), or ``logp`` and/or
        ``grad_logp``. With ``logp`` alone the gradient comes from autograd (the function must
        use torch operations and treat rows independently); with ``grad_logp`` alone the target
        has no energies (``has_logp`` is False: fine for ULA/SGLD/ULD, not for MALA). ``logp``
        may be unnormalised. ``sample(n, generator) -> [n, dim]``, if given, provides exact
        samples.

        The functions are not called here; :func:`checked_logp_and_grad` validates what they
        return (shape, dtype, device, finiteness) when a sampler calls them.
        """
        return _FunctionTarget(dim, logp, grad_logp, logp_and_grad, sample)

    # ---- helpers for subclasses -------------------------------------------------------------

    def _describe(self, method: str) -> str:
        """How error messages name the function behind ``method``."""
        return f"{type(self).__name__}.{method}"

    def _describe_pair(self, method: str) -> tuple[str, str]:
        """How errors name the functions behind the two outputs of ``method``."""
        return self._describe(method), self._describe(method)

    def _check_x(self, method: str, x: object) -> Tensor:
        op = f"{type(self).__name__}.{method}"
        check_tensor(op, "x", x, dtype=X_DTYPES, ndim=2)
        if x.shape[1] != self.dim:
            raise ValueError(f"{op}: x must have shape [C, {self.dim}], got {tuple(x.shape)}")
        return x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class FiniteSumTarget(Target):
    """A target whose log-density is a sum over ``n_data`` data points.

    Convention: ``logp(x) = -sum_{i=1}^{n} f_i(x)`` (= ``-n * mean_i f_i(x)``), where each
    ``f_i`` carries its share ``1/n`` of the prior. A minibatch ``idx`` of ``B`` indices gives
    ``logp_est = -(n / B) sum_{i in idx} f_i(x)`` and the matching gradient: unbiased when the
    indices are drawn uniformly (with or without replacement), and the average over a partition
    of ``range(n)`` into equal-size batches is exactly the full value. (In the SPS paper's
    notation, ``p ~ exp(-F)`` with ``F = (1/n) sum_i F_i``, this is ``F_i = n f_i``.)
    """

    def __init__(self, dim: int, n_data: int):
        super().__init__(dim)
        self.n_data = check_int(type(self).__name__, "n_data", n_data, minimum=1)

    def logp_and_grad_minibatch(self, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Unbiased estimates of ``(logp(x): [C], grad_logp(x): [C, d])`` from the data points
        ``idx: [B]`` (int64), scaled by ``n_data / B``; the same batch serves every chain."""
        raise NotImplementedError(f"{type(self).__name__} does not implement minibatches")

    def logp_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        idx = torch.arange(self.n_data, device=x.device)
        return self.logp_and_grad_minibatch(x, idx)

    def logp(self, x: Tensor) -> Tensor:
        return self.logp_and_grad(x)[0]

    def grad_logp(self, x: Tensor) -> Tensor:
        return self.logp_and_grad(x)[1]

    def random_batch(self, batch_size: int, generator: GeneratorLike = None, device=None) -> Tensor:
        """``batch_size`` distinct indices ``[B]`` (int64) drawn uniformly without replacement,
        on ``device`` (default: the generator's device, else the CPU)."""
        op = f"{type(self).__name__}.random_batch"
        b = check_int(op, "batch_size", batch_size, minimum=1)
        if b > self.n_data:
            raise ValueError(f"{op}: batch_size must be <= n_data = {self.n_data}, got {b}")
        if device is None:
            device = generator.device if isinstance(generator, torch.Generator) else "cpu"
        gen = as_generator(op, generator, torch.device(device))
        where = device if gen is None else gen.device
        return torch.randperm(self.n_data, generator=gen, device=where)[:b].to(device)

    def _check_idx(self, idx: object) -> Tensor:
        op = f"{type(self).__name__}.logp_and_grad_minibatch"
        check_tensor(op, "idx", idx, dtype=(torch.int64, torch.int32), ndim=1)
        if idx.numel() == 0:
            raise ValueError(f"{op}: idx must hold at least one data index")
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.n_data:
            raise ValueError(
                f"{op}: idx must be in [0, n_data = {self.n_data}), got values in [{lo}, {hi}]"
            )
        return idx.long()


class DiffusionTarget(Target):
    """A target with the marginals of the OU forward process started at it.

    ``dX = -X dt + sqrt(2) dB``, ``X_0 ~ p``: ``X_t = e^-t X_0 + sqrt(1 - e^-2t) Z``, so
    ``p_0 = p`` and ``p_t -> N(0, I)`` as ``t -> inf``. ``t`` is a Python float ``>= 0``.
    Subclasses implement :meth:`logp_t` and, ideally, :meth:`score` (the default
    differentiates ``logp_t`` with autograd); the plain-target methods are the ``t = 0`` case.
    """

    def logp_t(self, x: Tensor, t: float) -> Tensor:
        """``log p_t(x)``. ``x: [C, d]`` -> ``[C]``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement logp_t")

    def score(self, x: Tensor, t: float) -> Tensor:
        """``grad_x log p_t(x)``. ``x: [C, d]`` -> ``[C, d]``. Default: autograd of logp_t."""
        return _autograd_logp_and_grad(lambda z: self.logp_t(z, t), x, self._describe("logp_t"))[1]

    def logp_and_score(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        """``(logp_t(x, t): [C], score(x, t): [C, d])``."""
        return self.logp_t(x, t), self.score(x, t)

    def logp(self, x: Tensor) -> Tensor:
        return self.logp_t(x, 0.0)

    def grad_logp(self, x: Tensor) -> Tensor:
        return self.score(x, 0.0)

    def logp_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.logp_and_score(x, 0.0)

    def sample_t(self, n: int, t: float, generator: GeneratorLike = None) -> Tensor:
        """``n`` exact samples ``[n, d]`` of ``p_t``: ``e^-t X_0 + sqrt(1 - e^-2t) Z``."""
        t = check_time(f"{type(self).__name__}.sample_t", t)
        x0 = self.sample(n, generator)
        gen = as_generator(f"{type(self).__name__}.sample_t", generator, x0.device)
        z = torch.randn(x0.shape, generator=gen, dtype=x0.dtype, device=x0.device)
        return math.exp(-t) * x0 + math.sqrt(-math.expm1(-2.0 * t)) * z

    @staticmethod
    def from_functions(
        dim: int,
        logp_t: Callable[[Tensor, float], Tensor] | None = None,
        score: Callable[[Tensor, float], Tensor] | None = None,
        logp_and_score: Callable[[Tensor, float], tuple[Tensor, Tensor]] | None = None,
        *,
        sample: Callable[[int, torch.Generator | None], Tensor] | None = None,
    ) -> DiffusionTarget:
        """A diffusion target from user functions of ``(x: [C, dim], t: float)``.

        As :meth:`Target.from_functions`: give ``logp_and_score``, or ``logp_t`` and/or
        ``score``. A score model alone (``score`` only) has ``has_logp = False``: RTK-MALA
        then needs energy differences from a line integral of the score.
        """
        return _FunctionDiffusionTarget(dim, logp_t, score, logp_and_score, sample)


# --------------------------------------------------------------------------------------------
# User functions
# --------------------------------------------------------------------------------------------


def _fn_name(fn: Callable) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


class _UserFunctions:
    """The functions behind a user-made target, and how error messages name them.

    ``names`` are the roles ``(single, grad, pair)``, e.g. ``("logp", "grad_logp",
    "logp_and_grad")``: give ``pair``, or ``single`` and/or ``grad``.
    """

    def __init__(self, op: str, names: tuple[str, str, str], single, grad, pair, sample):
        for name, fn in zip((*names, "sample"), (single, grad, pair, sample)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{op}: {name} must be callable, got {type(fn).__name__}")
        if pair is not None and (single is not None or grad is not None):
            raise ValueError(f"{op}: give either {names[2]}, or {names[0]} and/or {names[1]}")
        if pair is None and single is None and grad is None:
            raise ValueError(f"{op}: give at least one of {', '.join(names)}")
        self.names = names
        self.single, self.grad, self.pair, self.sample = single, grad, pair, sample

    def describe(self, method: str) -> str:
        single_name, grad_name, pair_name = self.names
        if self.pair is not None:
            return f"the user's {pair_name} function {_fn_name(self.pair)!r}"
        if method == grad_name and self.grad is None:
            return (
                f"{grad_name} (autograd of the user's {single_name} function "
                f"{_fn_name(self.single)!r})"
            )
        if method != grad_name and self.single is not None:
            return f"the user's {single_name} function {_fn_name(self.single)!r}"
        return f"the user's {grad_name} function {_fn_name(self.grad)!r}"

    def describe_pair(self) -> tuple[str, str]:
        return self.describe(self.names[0]), self.describe(self.names[1])

    def draw(self, n: int, generator: GeneratorLike) -> Tensor:
        if self.sample is None:
            raise NotImplementedError("this target was built without a sample function")
        n = check_int("sample", "n", n)
        return self.sample(n, as_generator("sample", generator, torch.device("cpu")))

    # ``extra`` is ``(t,)`` for diffusion targets, empty otherwise.

    def value(self, x: Tensor, *extra):
        if self.pair is not None:
            return self.pair(x, *extra)[0]
        if self.single is None:
            raise NotImplementedError(
                f"this target was given by {self.names[1]} alone and has no log-density: use a "
                f"sampler that needs only {self.names[1]}, or pass {self.names[0]} too"
            )
        return self.single(x, *extra)

    def gradient(self, x: Tensor, *extra):
        if self.pair is not None:
            return self.pair(x, *extra)[1]
        if self.grad is not None:
            return self.grad(x, *extra)
        return self.both(x, *extra)[1]

    def both(self, x: Tensor, *extra):
        if self.pair is not None:
            return self.pair(x, *extra)
        if self.grad is None:
            fn = self.single
            return _autograd_logp_and_grad(lambda z: fn(z, *extra), x, self.describe(self.names[0]))
        return self.value(x, *extra), self.grad(x, *extra)


class _FromFunctions:
    """Mixin for targets made of user functions (``self._fns``): error naming, sampling."""

    _fns: _UserFunctions

    @property
    def has_logp(self) -> bool:
        return self._fns.single is not None or self._fns.pair is not None

    def _describe(self, method: str) -> str:
        return self._fns.describe(method)

    def _describe_pair(self, method: str) -> tuple[str, str]:
        return self._fns.describe_pair()

    def sample(self, n, generator=None):
        return self._fns.draw(n, generator)


class _FunctionTarget(_FromFunctions, Target):
    """A target made of user functions (see :meth:`Target.from_functions`)."""

    def __init__(self, dim, logp, grad_logp, logp_and_grad, sample):
        super().__init__(dim)
        names = ("logp", "grad_logp", "logp_and_grad")
        op = "Target.from_functions"
        self._fns = _UserFunctions(op, names, logp, grad_logp, logp_and_grad, sample)

    def logp(self, x):
        return self._fns.value(x)

    def grad_logp(self, x):
        return self._fns.gradient(x)

    def logp_and_grad(self, x):
        return self._fns.both(x)


class _FunctionDiffusionTarget(_FromFunctions, DiffusionTarget):
    """A diffusion target made of user functions (see :meth:`DiffusionTarget.from_functions`)."""

    def __init__(self, dim, logp_t, score, logp_and_score, sample):
        super().__init__(dim)
        names = ("logp_t", "score", "logp_and_score")
        op = "DiffusionTarget.from_functions"
        self._fns = _UserFunctions(op, names, logp_t, score, logp_and_score, sample)

    def logp_t(self, x, t):
        return self._fns.value(x, t)

    def score(self, x, t):
        return self._fns.gradient(x, t)

    def logp_and_score(self, x, t):
        return self._fns.both(x, t)


# --------------------------------------------------------------------------------------------
# Validation of what a target returns
# --------------------------------------------------------------------------------------------


def _validate_pair(
    who: tuple[str, str],
    x: Tensor,
    logp: Tensor | None,
    grad: object,
    grad_name: str,
    check_finite: bool,
    *,
    grad_used_everywhere: bool = False,
) -> tuple[Tensor | None, Tensor]:
    """Check a target's outputs for ``x: [C, d]``; returns them with ``grad`` in ``x``'s dtype.
    ``who``: how to name the functions that computed ``logp`` and ``grad`` in errors.

    A non-finite gradient is an error on every chain whose ``logp`` is finite, and on every
    chain when ``logp`` is None or ``grad_used_everywhere`` (gradient-only samplers): there it
    would move the chain to a wrong place. Where ``logp`` is NaN or -inf and the caller is
    MALA-like, the gradient is not checked: the proposal is rejected and its gradient dropped.
    """
    who_logp, who_grad = who
    chains, dim = x.shape
    if logp is not None:
        if not isinstance(logp, Tensor) or not logp.is_floating_point():
            raise TypeError(f"{who_logp} must return logp as a floating torch.Tensor")
        if tuple(logp.shape) != (chains,):
            raise ValueError(
                f"{who_logp} returned logp of shape {tuple(logp.shape)}, expected ({chains},) "
                "(one value per chain)"
            )
        if logp.device != x.device:
            raise ValueError(
                f"{who_logp} returned logp on {logp.device}, expected {x.device} (like x)"
            )
        # One reduction first: only a non-finite sum can hide a +inf.
        if (check_finite and not bool(torch.isfinite(logp.sum()))
                and bool(torch.isposinf(logp).any())):
            raise ValueError(f"{who_logp} returned logp = +inf")
    if not isinstance(grad, Tensor) or not grad.is_floating_point():
        raise TypeError(f"{who_grad} must return {grad_name} as a floating torch.Tensor")
    if tuple(grad.shape) != (chains, dim):
        raise ValueError(
            f"{who_grad} returned {grad_name} of shape {tuple(grad.shape)}, expected {(chains, dim)}"
        )
    if grad.device != x.device:
        raise ValueError(f"{who_grad} returned {grad_name} on {grad.device}, expected {x.device}")
    # Fast path: one reduction. A NaN or inf anywhere makes the sum non-finite; only then (or
    # when finite values overflow the sum, which the full check clears) look chain by chain.
    if check_finite and not bool(torch.isfinite(grad.sum())):
        bad = ~torch.isfinite(grad).all(dim=-1)
        if logp is not None and not grad_used_everywhere:
            bad &= torch.isfinite(logp)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{who_grad} returned a non-finite {grad_name} (NaN or inf) for {int(bad.sum())} of "
                f"{chains} chains, e.g. chain {row}"
            )
    return logp, grad.to(x.dtype)


def _check_target_x(op: str, target: object, x: object) -> Tensor:
    if not isinstance(target, Target):
        raise TypeError(f"{op}: target must be a ponder Target, got {type(target).__name__}")
    check_tensor(op, "x", x, dtype=X_DTYPES, ndim=2)
    if x.shape[1] != target.dim:
        raise ValueError(
            f"{op}: x must have shape [C, {target.dim}] (target.dim), got {tuple(x.shape)}"
        )
    return x


def _call_logp_and_grad(op: str, target: Target, x: Tensor, idx: Tensor | None):
    """``(who, (logp, grad))`` from the full or the minibatch method; ``who`` names it."""
    if idx is None:
        out, who = target.logp_and_grad(x), target._describe_pair("logp_and_grad")
    else:
        if not isinstance(target, FiniteSumTarget):
            raise TypeError(f"{op}: idx needs a FiniteSumTarget, got {type(target).__name__}")
        out = target.logp_and_grad_minibatch(x, idx)
        who = target._describe_pair("logp_and_grad_minibatch")
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"{who[0]} must return a pair (logp, grad_logp)")
    return who, out


def checked_logp_and_grad(
    target: Target, x: Tensor, idx: Tensor | None = None, *, check_finite: bool = True
) -> tuple[Tensor, Tensor]:
    """``target.logp_and_grad(x)`` (or, with ``idx``, the minibatch estimate), validated.

    Parameters
    ----------
    target : Target
        Any target; ``idx`` needs a :class:`FiniteSumTarget`.
    x : Tensor
        ``[C, target.dim]``, float32 or float64.
    idx : Tensor, optional
        ``[B]`` int64 data indices for :meth:`FiniteSumTarget.logp_and_grad_minibatch`.
    check_finite : bool
        Check the gradient for NaN / inf (one device sync); see below.

    Returns
    -------
    (logp, grad) : ``([C], [C, d])``, ``grad`` in ``x``'s dtype.

    Raises
    ------
    ValueError / TypeError
        Naming the function, when it returns the wrong type, shape or device, ``logp = +inf``,
        or a non-finite gradient on a chain whose ``logp`` is finite. A NaN or -inf ``logp`` is
        allowed (MALA rejects such a proposal); its gradient is then not checked.
    """
    op = "checked_logp_and_grad"
    _check_target_x(op, target, x)
    who, (logp, grad) = _call_logp_and_grad(op, target, x, idx)
    return _validate_pair(who, x, logp, grad, "grad_logp", check_finite)


def checked_grad_logp(
    target: Target, x: Tensor, idx: Tensor | None = None, *, check_finite: bool = True
) -> Tensor:
    """``target.grad_logp(x)`` (or the minibatch estimate with ``idx``), validated as in
    :func:`checked_logp_and_grad`; every chain's gradient must be finite. ``[C, d]``."""
    op = "checked_grad_logp"
    _check_target_x(op, target, x)
    if idx is not None:
        who, (logp, grad) = _call_logp_and_grad(op, target, x, idx)
        return _validate_pair(
            who, x, logp, grad, "grad_logp", check_finite, grad_used_everywhere=True
        )[1]
    who = target._describe("grad_logp")
    return _validate_pair((who, who), x, None, target.grad_logp(x), "grad_logp", check_finite)[1]


def checked_logp_and_score(
    target: DiffusionTarget, x: Tensor, t: float, *, check_finite: bool = True
) -> tuple[Tensor, Tensor]:
    """``target.logp_and_score(x, t)``, validated as in :func:`checked_logp_and_grad`."""
    op = "checked_logp_and_score"
    _check_target_x(op, target, x)
    if not isinstance(target, DiffusionTarget):
        raise TypeError(f"{op}: target must be a DiffusionTarget, got {type(target).__name__}")
    t = check_time(op, t)
    out = target.logp_and_score(x, t)
    who = target._describe_pair("logp_and_score")
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"{who[0]} must return a pair (logp_t, score)")
    return _validate_pair(who, x, out[0], out[1], "score", check_finite)


def checked_score(
    target: DiffusionTarget, x: Tensor, t: float, *, check_finite: bool = True
) -> Tensor:
    """``target.score(x, t)``, validated; every chain's score must be finite. ``[C, d]``."""
    op = "checked_score"
    _check_target_x(op, target, x)
    if not isinstance(target, DiffusionTarget):
        raise TypeError(f"{op}: target must be a DiffusionTarget, got {type(target).__name__}")
    t = check_time(op, t)
    who = target._describe("score")
    return _validate_pair((who, who), x, None, target.score(x, t), "score", check_finite)[1]
