"""Argument checks and seed handling shared by every layer (it sits beside ``_backend``, below
``ops``).

Each check takes the caller's name (``context``: an op, a class, a function) and the argument's
name, and raises a TypeError (wrong kind of value) or ValueError (right kind, bad value) whose
message names both and says what was expected: ``"ula_step: step_size must be > 0, got 0.0"``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

__all__ = [
    "MAX_SEED",
    "GeneratorLike",
    "as_generator",
    "check_int",
    "check_probability",
    "check_real",
    "check_tensor",
    "resolve_seed",
]

MAX_SEED = 2**63 - 1
GeneratorLike = torch.Generator | int | None


def check_tensor(
    context: str,
    name: str,
    t: object,
    *,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
    shape: Sequence[int] | None = None,
    ndim: int | None = None,
) -> torch.Tensor:
    """``t`` itself if it is a tensor with the given dtype(s), device, shape and dimension count."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{context}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if t.dtype not in allowed:
            want = " or ".join(str(d).removeprefix("torch.") for d in allowed)
            raise TypeError(f"{context}: {name} must have dtype {want}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{context}: {name} is on {t.device}, expected {device} (like x)")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(
            f"{context}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}"
        )
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{context}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    return t


def check_int(
    context: str,
    name: str,
    value: object,
    minimum: int | None = 0,
    maximum: int | None = None,
) -> int:
    """``value`` as an int: an integer (not a bool, not a float) in ``[minimum, maximum]``
    (None: unbounded on that side)."""
    if minimum is not None and maximum is not None:
        want = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        want = f"an integer >= {minimum}"
    elif maximum is not None:
        want = f"an integer <= {maximum}"
    else:
        want = "an integer"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{context}: {name} must be {want}, got {type(value).__name__}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{context}: {name} must be {want}, got {value}")
    return int(value)


def check_real(
    context: str, name: str, value: object, *, positive: bool = False, nonnegative: bool = False
) -> float:
    """``value`` as a float: a finite Python/numpy real number (not a tensor, not a bool),
    optionally > 0 (``positive``) or >= 0 (``nonnegative``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{context}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{context}: {name} must be finite, got {value}")
    if positive and value <= 0.0:
        raise ValueError(f"{context}: {name} must be > 0, got {value}")
    if nonnegative and value < 0.0:
        raise ValueError(f"{context}: {name} must be >= 0, got {value}")
    return value


def check_probability(
    context: str, name: str, value: object, *, zero: bool = True, one: bool = True
) -> float:
    """``value`` as a float in ``[0, 1]``; ``zero=False`` / ``one=False`` exclude that end."""
    value = check_real(context, name, value)
    low_ok = value >= 0.0 if zero else value > 0.0
    high_ok = value <= 1.0 if one else value < 1.0
    if not (low_ok and high_ok):
        interval = ("[" if zero else "(") + "0, 1" + ("]" if one else ")")
        raise ValueError(f"{context}: {name} must be in {interval}, got {value}")
    return value


def as_generator(context: str, generator: object, device: torch.device) -> torch.Generator:
    """The ``torch.Generator`` that a ``generator=`` argument means, everywhere in ponder.

    None is torch's default generator of ``device``'s type (so ``torch.manual_seed`` reproduces
    a run); an int seeds a new generator on ``device``; a ``torch.Generator`` is used as is.
    """
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None:
        if device.type == "cuda":
            index = torch.cuda.current_device() if device.index is None else device.index
            return torch.cuda.default_generators[index]
        return torch.default_generator
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        return torch.Generator(device=device).manual_seed(int(generator))
    raise TypeError(
        f"{context}: generator must be None, an int seed or a torch.Generator, "
        f"got {type(generator).__name__}"
    )


def resolve_seed(context: str, generator: object) -> int:
    """A 63-bit seed for a kernel's counter-based generator.

    ``generator`` may be an int in ``[0, 2**63)`` (used as is), a ``torch.Generator`` (a seed is
    drawn from it, so consecutive calls differ and re-seeding it reproduces them) or None (drawn
    from torch's default CPU generator: see :func:`as_generator`).
    """
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        seed = int(generator)
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(
                f"{context}: an integer generator (seed) must be in [0, 2**63), got {seed}"
            )
        return seed
    gen = as_generator(context, generator, torch.device("cpu"))
    return int(
        torch.empty((), dtype=torch.int64, device=gen.device).random_(generator=gen).item()
    )
