"""Target distributions for the samplers, batched over chains.

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
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..validation import GeneratorLike, as_generator, check_int, check_real, check_tensor

__all__ = [
    "TARGETS",
    "BayesianLogisticRegression",
    "CorrelatedGaussian",
    "DiffusionTarget",
    "DoubleWell",
    "FiniteSumTarget",
    "Gaussian",
    "GaussianMixture",
    "Target",
    "checked_grad_logp",
    "checked_logp_and_grad",
    "checked_logp_and_score",
    "checked_score",
    "make_target",
]

X_DTYPES = (torch.float32, torch.float64)
_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _float_tensor(op: str, name: str, value: object) -> Tensor:
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


def _check_time(op: str, t: object) -> float:
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
        t = _check_time(f"{type(self).__name__}.sample_t", t)
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
    t = _check_time(op, t)
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
    t = _check_time(op, t)
    who = target._describe("score")
    return _validate_pair((who, who), x, None, target.score(x, t), "score", check_finite)[1]


# --------------------------------------------------------------------------------------------
# Gaussian family
# --------------------------------------------------------------------------------------------


class GaussianMixture(DiffusionTarget):
    """``p(x) = sum_k w_k N(x; mu_k, Sigma_k)`` in any dimension, normalised.

    Parameters
    ----------
    weights : [K]
        Positive; normalised to sum to 1.
    means : [K, d]
    covs : [K, d, d] or [d, d], optional
        Full covariances (symmetric positive definite; one shared matrix if [d, d]).
    stds : float, [K] or [K, d], optional
        Standard deviations instead: one for all, one per component (isotropic), or per
        component and coordinate (diagonal). Default 1. Give ``covs`` or ``stds``, not both.

    The OU marginals are exact: ``p_t = sum_k w_k N(e^-t mu_k, e^-2t Sigma_k + (1 - e^-2t) I)``.
    Log-densities combine the components with ``logsumexp`` and scores with the softmax
    responsibilities, so far-away points give finite values. The per-``t`` covariance factors
    are computed once in float64 and cached (per ``t``, dtype and device).
    """

    normalized = True

    def __init__(self, weights, means, covs=None, stds=None):
        op = type(self).__name__
        means = _float_tensor(op, "means", means)
        if means.dim() != 2 or 0 in means.shape:
            raise ValueError(f"{op}: means must have shape [K, d], got {tuple(means.shape)}")
        k, d = means.shape
        super().__init__(d)
        weights = _float_tensor(op, "weights", weights).to(means)
        if tuple(weights.shape) != (k,):
            raise ValueError(
                f"{op}: weights must have shape ({k},) (one per mean), got {tuple(weights.shape)}"
            )
        if not bool((weights > 0).all()):
            raise ValueError(f"{op}: weights must be > 0")
        self.means = means.contiguous()
        self.log_weights = torch.log(weights / weights.sum())
        if covs is not None and stds is not None:
            raise ValueError(f"{op}: give covs or stds, not both")
        if covs is None:
            self.covs, self.scale_tril = None, None
            self.stds = self._init_stds(op, 1.0 if stds is None else stds, k, d)
            dtype = torch.promote_types(means.dtype, self.stds.dtype)
        else:
            self.stds = None
            self.covs, self.scale_tril = self._init_covs(op, covs, k, d)
            dtype = torch.promote_types(means.dtype, self.covs.dtype)
        # One dtype for every parameter: the widest one given.
        for name in ("means", "log_weights", "stds", "covs", "scale_tril"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(dtype))
        self._cache: dict = {}

    @staticmethod
    def _init_stds(op: str, stds, k: int, d: int) -> Tensor:
        stds = _float_tensor(op, "stds", stds)
        if stds.dim() == 0:
            stds = stds.expand(k, d)
        elif tuple(stds.shape) == (k,):
            stds = stds[:, None].expand(k, d)
        elif tuple(stds.shape) != (k, d):
            raise ValueError(
                f"{op}: stds must be a number, [{k}] or [{k}, {d}], got {tuple(stds.shape)}"
            )
        if not bool((stds > 0).all()):
            raise ValueError(f"{op}: stds must be > 0")
        return stds.contiguous()

    @staticmethod
    def _init_covs(op: str, covs, k: int, d: int) -> tuple[Tensor, Tensor]:
        covs = _float_tensor(op, "covs", covs)
        if tuple(covs.shape) == (d, d):
            covs = covs.expand(k, d, d)
        if tuple(covs.shape) != (k, d, d):
            raise ValueError(
                f"{op}: covs must have shape [{k}, {d}, {d}] or [{d}, {d}], got {tuple(covs.shape)}"
            )
        scale = covs.abs().amax().clamp_min(1e-300)
        if not torch.allclose(covs, covs.mT, rtol=0.0, atol=1e-8 * float(scale)):
            raise ValueError(f"{op}: covs must be symmetric")
        covs = (0.5 * (covs + covs.mT)).contiguous()
        chol, info = torch.linalg.cholesky_ex(covs.to(torch.float64))
        if bool((info != 0).any()):
            raise ValueError(f"{op}: covs must be positive definite")
        return covs, chol.to(covs.dtype)

    # ---- properties ---------------------------------------------------------------------------

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def weights(self) -> Tensor:
        """``[K]``, summing to 1."""
        return self.log_weights.exp()

    def component_covs(self) -> Tensor:
        """``[K, d, d]`` component covariances (diagonal ones made full)."""
        if self.covs is not None:
            return self.covs
        return torch.diag_embed(self.stds**2)

    @property
    def mean(self) -> Tensor:
        """The mixture's mean ``[d]``."""
        return self.weights @ self.means

    @property
    def covariance(self) -> Tensor:
        """The mixture's covariance ``[d, d]``: ``sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T``."""
        w, mu, m = self.weights, self.means, self.mean
        second = w[:, None, None] * (self.component_covs() + mu[:, :, None] * mu[:, None, :])
        return second.sum(0) - m[:, None] * m[None, :]

    # ---- the OU marginals ---------------------------------------------------------------------

    def _marginal(self, t: float, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(means_t [K, d], var_t [K, d] or scale_tril_t [K, d, d], log_norm_t [K])`` in
        ``like``'s dtype and device; ``log_norm_t = log w_k - (d log 2 pi + log det) / 2``."""
        key = (t, like.dtype, like.device)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        decay = math.exp(-t)
        added = -math.expm1(-2.0 * t)  # 1 - e^-2t without cancellation at small t
        means = decay * self.means.to(torch.float64)
        if self.covs is None:
            scale = decay**2 * self.stds.to(torch.float64) ** 2 + added
            logdet = scale.log().sum(-1)
        else:
            eye = torch.eye(self.dim, dtype=torch.float64, device=self.covs.device)
            scale = torch.linalg.cholesky(decay**2 * self.covs.to(torch.float64) + added * eye)
            logdet = 2.0 * scale.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_norm = self.log_weights.to(torch.float64) - 0.5 * (self.dim * _LOG_2PI + logdet)
        hit = tuple(v.to(device=like.device, dtype=like.dtype) for v in (means, scale, log_norm))
        if len(self._cache) >= 64:
            self._cache.clear()
        self._cache[key] = hit
        return hit

    def _evaluate(self, x: Tensor, t: float, need_score: bool):
        means, scale, log_norm = self._marginal(t, x)
        diff = x.unsqueeze(1) - means  # [C, K, d]
        prec_diff = None
        if self.covs is None:
            prec_diff = diff / scale
            quad = (diff * prec_diff).sum(-1)
        else:
            # Solve for all chains at once: they are the right-hand sides, [K, d, C].
            z = torch.linalg.solve_triangular(scale, diff.permute(1, 2, 0), upper=False)
            quad = (z * z).sum(1).T
            if need_score:
                w = torch.linalg.solve_triangular(scale.mT, z, upper=True)
                prec_diff = w.permute(2, 0, 1)
        log_comp = log_norm - 0.5 * quad  # [C, K]
        logp = torch.logsumexp(log_comp, dim=-1)
        if not need_score:
            return logp, None
        resp = torch.softmax(log_comp, dim=-1)
        return logp, -(resp.unsqueeze(-1) * prec_diff).sum(1)

    def logp_t(self, x: Tensor, t: float) -> Tensor:
        self._check_x("logp_t", x)
        return self._evaluate(x, _check_time(f"{type(self).__name__}.logp_t", t), False)[0]

    def score(self, x: Tensor, t: float) -> Tensor:
        self._check_x("score", x)
        return self._evaluate(x, _check_time(f"{type(self).__name__}.score", t), True)[1]

    def logp_and_score(self, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        self._check_x("logp_and_score", x)
        return self._evaluate(x, _check_time(f"{type(self).__name__}.logp_and_score", t), True)

    def sample(self, n: int, generator: GeneratorLike = None) -> Tensor:
        n = check_int(f"{type(self).__name__}.sample", "n", n)
        dev, dt = self.means.device, self.means.dtype
        gen = as_generator(f"{type(self).__name__}.sample", generator, dev)
        if n == 0:
            return torch.empty(0, self.dim, dtype=dt, device=dev)
        w = self.log_weights.to(torch.float64).exp()
        comp = torch.multinomial(w, n, replacement=True, generator=gen)
        eps = torch.randn(n, self.dim, generator=gen, dtype=dt, device=dev)
        if self.covs is None:
            return self.means[comp] + self.stds[comp] * eps
        return self.means[comp] + (self.scale_tril[comp] @ eps.unsqueeze(-1)).squeeze(-1)

    def to(self, device=None, dtype=None) -> GaussianMixture:
        new = super().to(device=device, dtype=dtype)
        new._cache = {}
        return new

    def __repr__(self) -> str:
        kind = "diagonal" if self.covs is None else "full"
        return f"{type(self).__name__}(dim={self.dim}, n_components={self.n_components}, {kind})"

    @classmethod
    def symmetric(
        cls, dim: int, n_axes: int | None = None, radius: float = 4.0, std: float = 1.0
    ) -> GaussianMixture:
        """Equal-weight modes at ``+-radius * e_j`` for the first ``n_axes`` coordinates
        (default ``min(dim, 4)``: 2 modes in 1-D, a "plus" of 4 in 2-D, 8 in d >= 4), all with
        isotropic ``std``.

        With the defaults, neighbouring modes are ``radius * sqrt(2) = 5.7`` standard deviations
        apart and the density at the saddle between them is about ``2 e^-4`` (4%) of a peak:
        Langevin samplers cross between modes, but slowly, which is the regime where SPS's
        proximal steps and RTK's large reverse steps should pay off. The other ``dim - n_axes`` coordinates are N(0,
        std^2) in every mode.
        """
        op = f"{cls.__name__}.symmetric"
        dim = check_int(op, "dim", dim, minimum=1)
        n_axes = min(dim, 4) if n_axes is None else check_int(op, "n_axes", n_axes, minimum=1)
        if n_axes > dim:
            raise ValueError(f"{op}: n_axes must be <= dim = {dim}, got {n_axes}")
        radius = check_real(op, "radius", radius, positive=True)
        std = check_real(op, "std", std, positive=True)
        means = torch.zeros(2 * n_axes, dim, dtype=torch.float64)
        for j in range(n_axes):
            means[2 * j, j], means[2 * j + 1, j] = radius, -radius
        return cls(torch.ones(2 * n_axes, dtype=torch.float64), means, stds=std)


class Gaussian(GaussianMixture):
    """``N(mean, Sigma)``, normalised: a one-component :class:`GaussianMixture`.

    Parameters
    ----------
    mean : [d]
    cov : [d, d], optional
        Full covariance (factored once by Cholesky).
    std : float or [d], optional
        Isotropic or diagonal standard deviations instead (default 1). Not with ``cov``.
    """

    def __init__(self, mean, cov=None, std=None):
        op = type(self).__name__
        mean = _float_tensor(op, "mean", mean)
        if mean.dim() != 1 or mean.numel() == 0:
            raise ValueError(f"{op}: mean must have shape [d], got {tuple(mean.shape)}")
        d = mean.numel()
        if cov is not None:
            cov = _float_tensor(op, "cov", cov)
            if tuple(cov.shape) != (d, d):
                raise ValueError(f"{op}: cov must have shape [{d}, {d}], got {tuple(cov.shape)}")
            cov = cov[None]
        if std is not None:
            std = _float_tensor(op, "std", std)
            if std.dim() == 1:
                if std.numel() != d:
                    raise ValueError(f"{op}: std must be a number or [{d}], got {tuple(std.shape)}")
                std = std[None]
            elif std.dim() != 0:
                raise ValueError(f"{op}: std must be a number or [{d}], got {tuple(std.shape)}")
        super().__init__(torch.ones(1, dtype=mean.dtype), mean[None], covs=cov, stds=std)


class CorrelatedGaussian(Gaussian):
    """A 2-D Gaussian with standard deviations ``std`` and correlation ``rho`` (|rho| < 1)."""

    def __init__(
        self, rho: float, std: Sequence[float] = (1.0, 1.0), mean: Sequence[float] = (0.0, 0.0)
    ):
        op = type(self).__name__
        rho = check_real(op, "rho", rho)
        if not -1.0 < rho < 1.0:
            raise ValueError(f"{op}: rho must be in (-1, 1), got {rho}")
        s = _float_tensor(op, "std", std)
        if tuple(s.shape) != (2,) or not bool((s > 0).all()):
            raise ValueError(f"{op}: std must be two positive numbers, got {std}")
        s1, s2 = float(s[0]), float(s[1])
        cov = torch.tensor([[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]], dtype=s.dtype)
        super().__init__(mean, cov=cov)
        self.rho = rho


# --------------------------------------------------------------------------------------------
# Bayesian logistic regression
# --------------------------------------------------------------------------------------------


class BayesianLogisticRegression(FiniteSumTarget):
    """Posterior of logistic-regression weights ``w: [d]`` under a ``N(0, prior_std^2 I)`` prior.

    ``logp(w) = sum_i [y_i z_i - softplus(z_i)] - |w|^2 / (2 prior_std^2)`` with
    ``z_i = <x_i, w>``: unnormalised (the evidence is unknown; constants are dropped). As a
    finite sum, ``f_i(w) = -[y_i z_i - softplus(z_i)] + |w|^2 / (2 n prior_std^2)`` (each data
    point carries ``1/n`` of the prior), so a minibatch estimate keeps the prior term exact (see
    :class:`FiniteSumTarget`). No exact sampler.

    Parameters
    ----------
    features : [N, d]
    labels : [N]
        0 / 1 (bool, integer or floating).
    prior_std : float
    """

    def __init__(self, features, labels, prior_std: float = 10.0):
        op = type(self).__name__
        features = _float_tensor(op, "features", features)
        if features.dim() != 2 or 0 in features.shape:
            raise ValueError(f"{op}: features must have shape [N, d], got {tuple(features.shape)}")
        n, d = features.shape
        labels = labels.detach() if isinstance(labels, Tensor) else torch.as_tensor(labels)
        if tuple(labels.shape) != (n,):
            raise ValueError(f"{op}: labels must have shape ({n},), got {tuple(labels.shape)}")
        labels = labels.to(device=features.device, dtype=features.dtype)
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise ValueError(f"{op}: labels must be 0 or 1")
        super().__init__(d, n)
        self.prior_std = check_real(op, "prior_std", prior_std, positive=True)
        self.features = features.contiguous()
        self.labels = labels
        self.true_weights: Tensor | None = None

    @classmethod
    def synthetic(
        cls,
        n: int = 3000,
        d: int = 3,
        true_weights: Sequence[float] | None = (1.0, 2.0, 3.0),
        seed: int = 0,
        prior_std: float = 10.0,
    ) -> BayesianLogisticRegression:
        """``n`` points with features ``N(0, I_d)`` and labels ``Bernoulli(sigmoid(<x, w*>))``.

        ``true_weights`` (``w*``, default ``(1, 2, 3)``; None gives ``(1, ..., d)``) is kept as
        the ``true_weights`` attribute. Deterministic given ``seed``.
        """
        op = f"{cls.__name__}.synthetic"
        n = check_int(op, "n", n, minimum=1)
        d = check_int(op, "d", d, minimum=1)
        if true_weights is None:
            true_weights = [float(j) for j in range(1, d + 1)]
        w = _float_tensor(op, "true_weights", true_weights)
        if tuple(w.shape) != (d,):
            raise ValueError(f"{op}: true_weights must have {d} entries (d), got {tuple(w.shape)}")
        gen = torch.Generator().manual_seed(check_int(op, "seed", seed))
        features = torch.randn(n, d, generator=gen, dtype=torch.float64)
        probs = torch.sigmoid(features @ w.to(torch.float64))
        labels = (torch.rand(n, generator=gen, dtype=torch.float64) < probs).to(torch.float64)
        target = cls(features, labels, prior_std=prior_std)
        target.true_weights = w.to(torch.float64)
        return target

    def _terms(self, x: Tensor, feats: Tensor, labels: Tensor, scale: float, need_grad: bool):
        z = x @ feats.T  # [C, B]
        prior_prec = 1.0 / self.prior_std**2
        loglik = (labels * z - torch.nn.functional.softplus(z)).sum(-1)
        logp = scale * loglik - 0.5 * prior_prec * (x * x).sum(-1)
        if not need_grad:
            return logp, None
        grad = scale * ((labels - torch.sigmoid(z)) @ feats) - prior_prec * x
        return logp, grad

    def logp_and_grad_minibatch(self, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        self._check_x("logp_and_grad_minibatch", x)
        idx = self._check_idx(idx).to(self.features.device)
        feats = self.features[idx].to(x)
        labels = self.labels[idx].to(x)
        return self._terms(x, feats, labels, self.n_data / idx.numel(), True)

    def logp_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_x("logp_and_grad", x)
        return self._terms(x, self.features.to(x), self.labels.to(x), 1.0, True)

    def logp(self, x: Tensor) -> Tensor:
        self._check_x("logp", x)
        return self._terms(x, self.features.to(x), self.labels.to(x), 1.0, False)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, n_data={self.n_data})"


# --------------------------------------------------------------------------------------------
# Double well
# --------------------------------------------------------------------------------------------


class DoubleWell(Target):
    """A non-log-concave target: ``f(x) = a (x_1^2 - 1)^2 + |x_{2:d}|^2 / 2``, normalised.

    Two wells at ``x_1 = +-1`` separated by a barrier of height ``a`` (in units of ``kT``) at
    ``x_1 = 0``; the other coordinates are independent N(0, 1). The default ``a = 2`` puts the
    saddle at ``e^-2`` of the peak density: Langevin chains hop between the wells, slowly.
    ``f`` is not convex for any ``a > 0`` (``f''(0) = -4a``).

    The 1-D normaliser is computed once by the trapezoidal rule (spectrally accurate for this
    smooth, super-exponentially decaying integrand), so ``logp`` is normalised. Exact samples of
    ``x_1`` come from rejection sampling under the envelope ``exp(-a (|x| - 1)^2)`` (a
    two-Gaussian mixture; acceptance rate about 1/2).
    """

    normalized = True

    def __init__(self, dim: int = 2, a: float = 2.0):
        super().__init__(dim)
        self.a = check_real(type(self).__name__, "a", a, positive=True)
        half = math.sqrt(1.0 + math.sqrt(50.0 / self.a)) + 0.5  # a (x^2 - 1)^2 > 50 beyond
        grid = torch.linspace(-half, half, 40001, dtype=torch.float64)
        z1 = float(torch.trapezoid(torch.exp(-self.a * (grid**2 - 1.0) ** 2), grid))
        self.log_normalizer = math.log(z1) + 0.5 * (dim - 1) * _LOG_2PI
        # Carries the dtype and device of samples; moved by .to().
        self._like = torch.empty(0, dtype=torch.float64)

    def _potential_1d(self, x1: Tensor) -> Tensor:
        return self.a * (x1 * x1 - 1.0) ** 2

    def logp(self, x: Tensor) -> Tensor:
        self._check_x("logp", x)
        rest = 0.5 * (x[:, 1:] ** 2).sum(-1)
        return -(self._potential_1d(x[:, 0]) + rest) - self.log_normalizer

    def grad_logp(self, x: Tensor) -> Tensor:
        self._check_x("grad_logp", x)
        grad = -x.clone()
        x1 = x[:, 0]
        grad[:, 0] = -4.0 * self.a * x1 * (x1 * x1 - 1.0)
        return grad

    def logp_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.logp(x), self.grad_logp(x)

    def sample(self, n: int, generator: GeneratorLike = None) -> Tensor:
        n = check_int(f"{type(self).__name__}.sample", "n", n)
        dev, dt = self._like.device, self._like.dtype
        gen = as_generator(f"{type(self).__name__}.sample", generator, dev)
        # exp(-a (x^2-1)^2) <= exp(-a (|x|-1)^2) = sqrt(pi/a) N(x; sign(x), 1/(2a))
        #                   <= M q(x) with q = (N(1, s^2) + N(-1, s^2)) / 2 and M = 2 sqrt(pi/a).
        s = math.sqrt(0.5 / self.a)
        log_m = math.log(2.0 * math.sqrt(math.pi / self.a))
        kept, have = [], 0
        while have < n:
            m = max(2 * (n - have), 64)
            coin = torch.rand(m, generator=gen, dtype=torch.float64, device=dev) < 0.5
            sign = 2.0 * coin.to(torch.float64) - 1.0
            prop = sign + s * torch.randn(m, generator=gen, dtype=torch.float64, device=dev)
            var2 = 2.0 * s * s
            log_q = torch.logaddexp(-((prop - 1.0) ** 2) / var2, -((prop + 1.0) ** 2) / var2)
            log_q = log_q + math.log(0.5) - 0.5 * math.log(math.pi * var2)
            u = torch.rand(m, generator=gen, dtype=torch.float64, device=dev)
            ok = torch.log(u) + log_m + log_q < -self._potential_1d(prop)
            kept.append(prop[ok])
            have += int(ok.sum())
        x1 = torch.cat(kept)[:n] if kept else torch.empty(0, dtype=torch.float64, device=dev)
        rest = torch.randn(n, self.dim - 1, generator=gen, dtype=torch.float64, device=dev)
        return torch.cat([x1[:, None], rest], dim=1).to(dt)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, a={self.a})"


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def _make_gaussian(dim: int, *, mean=None, cov=None, std=None) -> Target:
    mean = torch.zeros(dim, dtype=torch.float64) if mean is None else mean
    return Gaussian(mean, cov=cov, std=std)


def _make_correlated_gaussian(dim: int = 2, *, rho: float = 0.9, std=(1.0, 1.0)) -> Target:
    if dim != 2:
        raise ValueError(f"correlated-gaussian is 2-D; got dim={dim}")
    return CorrelatedGaussian(rho, std=std)


def _make_mixture(
    dim: int, *, n_axes: int | None = None, radius: float = 4.0, std: float = 1.0
) -> Target:
    return GaussianMixture.symmetric(dim, n_axes=n_axes, radius=radius, std=std)


def _make_logistic(
    dim: int = 3, *, n: int = 3000, true_weights=None, seed: int = 0, prior_std: float = 10.0
) -> Target:
    return BayesianLogisticRegression.synthetic(
        n=n, d=dim, true_weights=true_weights, seed=seed, prior_std=prior_std
    )


def _make_double_well(dim: int, *, a: float = 2.0) -> Target:
    return DoubleWell(dim, a=a)


#: Target factories by name: ``TARGETS[name](dim, **kwargs) -> Target``.
TARGETS: dict[str, Callable[..., Target]] = {
    "gaussian": _make_gaussian,
    "correlated-gaussian": _make_correlated_gaussian,
    "mixture": _make_mixture,
    "logistic": _make_logistic,
    "double-well": _make_double_well,
}


def make_target(name: str, dim: int = 2, **kwargs) -> Target:
    """A target by name, with defaults:

    - ``"gaussian"``: N(0, I_dim) (``mean``, ``cov``, ``std`` as for :class:`Gaussian`).
    - ``"correlated-gaussian"``: 2-D, ``rho = 0.9``, unit standard deviations (dim must be 2).
    - ``"mixture"``: :meth:`GaussianMixture.symmetric` (modes at ``+-4 e_j``, j < min(dim, 4),
      unit std; ``n_axes``, ``radius``, ``std``).
    - ``"logistic"``: :meth:`BayesianLogisticRegression.synthetic` with ``d = dim``, 3000 points
      and true weights ``(1, ..., dim)`` (so ``(1, 2, 3)`` for dim = 3; ``n``, ``true_weights``,
      ``seed``, ``prior_std``).
    - ``"double-well"``: :class:`DoubleWell` with ``a = 2`` (``a``).
    """
    if name not in TARGETS:
        raise ValueError(f"make_target: unknown target {name!r}; known: {', '.join(TARGETS)}")
    dim = check_int("make_target", "dim", dim, minimum=1)
    try:
        return TARGETS[name](dim, **kwargs)
    except TypeError as err:
        raise TypeError(f"make_target({name!r}): {err}") from err
