"""What every sampler shares: state, the run loop (thinning, burn-in, progress bar), input
conversion, and evaluation counting."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..validation import check_int


def as_tensor(x: Any, name: str = "x0") -> Tensor:
    """A torch tensor from a tensor or any DLPack array (numpy, CuPy, JAX), zero-copy where the
    producer allows it. Integer input becomes float32."""
    if isinstance(x, Tensor):
        t = x
    elif hasattr(x, "__dlpack__"):
        t = torch.from_dlpack(x)
    else:
        t = torch.as_tensor(x)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.dim() != 2:
        raise ValueError(f"{name} must be [chains, dim], got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has non-finite values")
    return t


@dataclasses.dataclass
class State:
    """A batch of chains. ``x: [C, d]``; ``logp: [C]`` and ``grad: [C, d]`` cached at ``x`` where
    the sampler uses them; ``v: [C, d]`` velocities (ULD)."""

    x: Tensor
    logp: Tensor | None = None
    grad: Tensor | None = None
    v: Tensor | None = None
    step: int = 0
    grad_calls: int = 0  # gradient (or score) oracle calls, each for all chains
    data_grads: int = 0  # per-datum gradient evaluations per chain (finite sums); else = calls
    accepted: Tensor | None = None  # [C] running count of accepted proposals (MALA-type)
    proposals: int = 0


@dataclasses.dataclass
class Trace:
    """The result of :meth:`Sampler.run`: ``samples: [T, C, d]`` (kept after burn-in and
    thinning), the final state, and statistics."""

    samples: Tensor
    state: State
    stats: dict[str, float]


class Sampler:
    """Base class: subclasses implement :meth:`init` and :meth:`step`."""

    name = "sampler"

    def init(self, x0: Any) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def step(self, state: State) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(
        self,
        x0: Any,
        n_steps: int,
        *,
        burn_in: int = 0,
        thin: int = 1,
        progress: bool = False,
        callback: Callable[[State], None] | None = None,
    ) -> Trace:
        """Run ``n_steps`` steps from ``x0: [C, d]`` (tensor or DLPack array).

        Keeps every ``thin``-th state after ``burn_in`` steps in ``Trace.samples: [T, C, d]``;
        ``progress`` shows a tqdm bar; ``callback(state)`` runs after every step.
        """
        n_steps = check_int(self.name, "n_steps", n_steps, minimum=0)
        thin = check_int(self.name, "thin", thin, minimum=1)
        burn_in = check_int(self.name, "burn_in", burn_in, minimum=0)
        state = self.init(x0)
        kept = []
        start = time.perf_counter()
        for i in tqdm(range(n_steps), desc=self.name, disable=not progress):
            state = self.step(state)
            if callback is not None:
                callback(state)
            if i >= burn_in and (i - burn_in) % thin == thin - 1:
                kept.append(state.x)
        elapsed = time.perf_counter() - start
        x = state.x
        samples = torch.stack(kept) if kept else x.new_empty((0, *x.shape))
        return Trace(samples, state, self.stats(state, elapsed))

    def stats(self, state: State, elapsed: float) -> dict[str, float]:
        out = {
            "steps": float(state.step),
            "grad_calls": float(state.grad_calls),
            "data_grads": float(state.data_grads),
            "seconds": elapsed,
        }
        if state.accepted is not None and state.proposals:
            out["acceptance"] = float(state.accepted.double().mean()) / state.proposals
        return out
