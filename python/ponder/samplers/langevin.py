"""Baseline samplers: ULA / SGLD, MALA and underdamped Langevin (ULD), each step one fused kernel
from :mod:`ponder.ops.langevin` plus the user's log-density / gradient."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..ops import langevin as ops
from ..validation import as_generator, check_int, check_real
from ._core import Sampler, State, as_tensor
from .protocol import FiniteSumTarget, Target, checked_grad_logp, checked_logp_and_grad


def check_target(owner: str, target: Any) -> Target:
    if not isinstance(target, Target):
        raise TypeError(
            f"{owner}: target must be a ponder.samplers.Target (wrap your functions with "
            f"Target.from_functions), got {type(target).__name__}"
        )
    return target


def check_batch_size(owner: str, target: Target, batch_size: int | None) -> int | None:
    if batch_size is None:
        return None
    if not isinstance(target, FiniteSumTarget):
        raise ValueError(f"{owner}: batch_size needs a FiniteSumTarget, got {type(target).__name__}")
    return check_int(owner, "batch_size", batch_size, 1, target.n_data)


class _GradientOracle:
    """Evaluates (logp, grad) on the full target or on a minibatch, and counts the calls."""

    def __init__(self, owner: str, target: Target, batch_size: int | None,
                 generator: torch.Generator):
        self.owner, self.target, self.batch_size, self.generator = (
            owner, target, batch_size, generator)

    def draw_batch(self, device: torch.device) -> Tensor | None:
        if self.batch_size is None:
            return None
        n = self.target.n_data  # type: ignore[attr-defined]
        idx = torch.randperm(n, generator=self.generator, device=self.generator.device)
        return idx[: self.batch_size].to(device)

    def _count(self, state: State, batch: Tensor | None) -> None:
        state.grad_calls += 1
        if batch is None:
            state.data_grads += getattr(self.target, "n_data", 1)
        else:
            state.data_grads += int(batch.numel())

    def __call__(self, x: Tensor, state: State, batch: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
        """(logp, grad) for MALA-type samplers: a NaN logp is allowed (the proposal is
        rejected), so its gradient is not checked."""
        self._count(state, batch)
        # Validated: a wrong shape or a non-finite gradient is a ValueError naming the function.
        return checked_logp_and_grad(self.target, x, batch)

    def grad(self, x: Tensor, state: State, batch: Tensor | None = None) -> Tensor:
        """The gradient alone, for gradient-only samplers (ULA/SGLD, ULD, SPS-SGLD): works for
        gradient-only targets, and every chain's gradient must be finite."""
        self._count(state, batch)
        return checked_grad_logp(self.target, x, batch)


class _LangevinBase(Sampler):
    def __init__(self, target: Target, step_size: float, *, batch_size: int | None = None,
                 generator: torch.Generator | int | None = None, backend: str | None = None,
                 step_name: str = "step_size"):
        self.target = check_target(self.name, target)
        self.step_size = check_real(self.name, step_name, step_size, positive=True)
        self.batch_size = check_batch_size(self.name, target, batch_size)
        self._generator_arg = generator
        self.backend = backend

    def _start(self, x0: Any) -> Tensor:
        x = as_tensor(x0)
        if x.shape[1] != self.target.dim:
            raise ValueError(
                f"{self.name}: x0 has dim {x.shape[1]}, the target has dim {self.target.dim}"
            )
        # A CPU generator: seeds and minibatch indices are cheap to draw there on any device.
        self.generator = as_generator(self.name, self._generator_arg, torch.device("cpu"))
        self.oracle = _GradientOracle(self.name, self.target, self.batch_size, self.generator)
        return x


class ULA(_LangevinBase):
    """Unadjusted Langevin: ``x <- x + h grad_logp(x) + sqrt(2 h T) xi``; SGLD when
    ``batch_size`` is given (a fresh minibatch without replacement every step, the gradient
    scaled to be unbiased).

    Args:
        target: a :class:`~ponder.samplers.Target` (a FiniteSumTarget for SGLD).
        step_size: ``h > 0``. temperature: ``T >= 0``.
        batch_size: minibatch size for SGLD, or None for the full gradient.
        generator: int seed or torch.Generator (a CPU one) for reproducible runs; None draws
            from torch's default generator (``torch.manual_seed`` reproduces the run).
        backend: kernel backend (default by device), as in :mod:`ponder.ops.langevin`.
    """

    name = "ula"

    def __init__(self, target: Target, step_size: float, *, temperature: float = 1.0,
                 batch_size: int | None = None, generator: torch.Generator | int | None = None,
                 backend: str | None = None):
        super().__init__(target, step_size, batch_size=batch_size, generator=generator,
                         backend=backend)
        self.temperature = check_real(self.name, "temperature", temperature, nonnegative=True)

    def init(self, x0: Any) -> State:
        return State(x=self._start(x0))

    def step(self, state: State) -> State:
        grad = self.oracle.grad(state.x, state, self.oracle.draw_batch(state.x.device))
        state.x = ops.ula_step(state.x, grad, self.step_size, temperature=self.temperature,
                               generator=self.generator, backend=self.backend)
        state.step += 1
        return state


class MALA(_LangevinBase):
    """Metropolis-adjusted Langevin: a Langevin proposal and a Metropolis-Hastings test, with the
    log-density and gradient cached between steps (one gradient call per step).

    Args: as :class:`ULA` (no temperature; ``batch_size`` is not allowed: MH needs the exact
    log-density).
    """

    name = "mala"

    def __init__(self, target: Target, step_size: float, *,
                 generator: torch.Generator | int | None = None, backend: str | None = None):
        super().__init__(target, step_size, generator=generator, backend=backend)

    def init(self, x0: Any) -> State:
        x = self._start(x0)
        state = State(x=x, accepted=torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        state.logp, state.grad = self.oracle(x, state)
        bad = ~torch.isfinite(state.logp)
        if bool(bad.any()):
            raise ValueError(
                f"{self.name}: the target's log-density is not finite at x0 for "
                f"{int(bad.sum())} chains (e.g. chain {int(bad.nonzero()[0, 0])}); MALA could "
                "never move them: start inside the support"
            )
        return state

    def step(self, state: State) -> State:
        h = self.step_size
        x_prop = ops.mala_propose(state.x, state.grad, h, generator=self.generator,
                                  backend=self.backend)
        logp_prop, grad_prop = self.oracle(x_prop, state)
        state.x, state.logp, state.grad, accepted = ops.mala_accept(
            state.x, state.logp, state.grad, x_prop, logp_prop, grad_prop, h,
            generator=self.generator, backend=self.backend,
        )
        state.accepted += accepted
        state.proposals += 1
        state.step += 1
        return state


class ULD(_LangevinBase):
    """Underdamped Langevin with the exact OU integrator (gradient frozen over a step), unit mass;
    velocities start from N(0, I). Biased at O(h) like ULA; one gradient call per step.

    Args: as :class:`ULA`, plus ``friction``: ``gamma > 0``.
    """

    name = "uld"

    def __init__(self, target: Target, step_size: float, friction: float = 1.0, *,
                 batch_size: int | None = None, generator: torch.Generator | int | None = None,
                 backend: str | None = None):
        super().__init__(target, step_size, batch_size=batch_size, generator=generator,
                         backend=backend)
        self.friction = check_real(self.name, "friction", friction, positive=True)
        ops.check_uld_range(self.name, self.step_size, self.friction)

    def init(self, x0: Any) -> State:
        x = self._start(x0)
        v = torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)
        state = State(x=x, v=v)
        state.grad = self.oracle.grad(x, state, self.oracle.draw_batch(x.device))
        return state

    def step(self, state: State) -> State:
        state.x, state.v = ops.uld_step(state.x, state.v, state.grad, self.step_size,
                                        self.friction, generator=self.generator,
                                        backend=self.backend)
        state.grad = self.oracle.grad(state.x, state, self.oracle.draw_batch(state.x.device))
        state.step += 1
        return state
