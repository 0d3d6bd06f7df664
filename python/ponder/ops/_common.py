"""What every op family shares: argument validation, seeds, and launching a native kernel."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import _backend

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
MAX_SEED = 2**63 - 1


def check_tensor(
    op: str,
    name: str,
    t: object,
    *,
    dtype: torch.dtype | Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
    shape: Sequence[int] | None = None,
    ndim: int | None = None,
) -> torch.Tensor:
    """Raise TypeError / ValueError naming ``op`` and ``name`` unless ``t`` is as expected."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if dtype is not None:
        allowed = (dtype,) if isinstance(dtype, torch.dtype) else tuple(dtype)
        if t.dtype not in allowed:
            want = " or ".join(str(d).removeprefix("torch.") for d in allowed)
            raise TypeError(f"{op}: {name} must have dtype {want}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: {name} is on {t.device}, expected {device} (like x)")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    return t


def check_real(
    op: str, name: str, value: object, *, positive: bool = False, nonnegative: bool = False
) -> float:
    """A finite Python/numpy real number (not a tensor, not a bool), optionally > 0 or >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{op}: {name} must be finite, got {value}")
    if positive and value <= 0.0:
        raise ValueError(f"{op}: {name} must be > 0, got {value}")
    if nonnegative and value < 0.0:
        raise ValueError(f"{op}: {name} must be >= 0, got {value}")
    return value


def resolve_seed(op: str, generator: object, device: torch.device) -> int:
    """A 63-bit seed for a kernel's counter-based generator.

    ``generator`` may be an int (used as is), a ``torch.Generator`` (a seed is drawn from it, so
    consecutive calls differ and re-seeding it reproduces them) or None (drawn from torch's
    default generator, so ``torch.manual_seed`` makes runs reproducible).
    """
    if generator is None:
        return int(torch.empty((), dtype=torch.int64).random_().item())
    if isinstance(generator, torch.Generator):
        return int(
            torch.empty((), dtype=torch.int64, device=generator.device)
            .random_(generator=generator)
            .item()
        )
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        seed = int(generator)
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"{op}: an integer generator (seed) must be in [0, 2**63), got {seed}")
        return seed
    raise TypeError(
        f"{op}: generator must be None, an int seed or a torch.Generator, "
        f"got {type(generator).__name__}"
    )


def check_backend_dtype(op: str, backend: str, dtype: torch.dtype) -> None:
    """Say plainly when a backend cannot run a dtype, and which can."""
    if backend == "triton" and dtype == torch.bfloat16 and _backend.triton_interpreted():
        raise TypeError(
            f"{op}: the Triton interpreter (TRITON_INTERPRET=1) has no bfloat16; "
            "use backend='cpu' or 'torch', or run Triton on a GPU"
        )


def choose_backend(
    op: str, kernels: _backend.KernelTable, t: torch.Tensor, backend: str | None
) -> str:
    """The backend for one call of ``op`` on inputs like ``t`` (its device and dtype): see
    :func:`ponder._backend.resolve`; also refuses a dtype the chosen backend cannot run."""
    name = _backend.resolve(op, t.device, backend, kernels)
    check_backend_dtype(op, name, t.dtype)
    return name


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in: float64 for float64 storage, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def launch_native(
    backend: str,
    kernel: Callable[..., None],
    tensors: Sequence[torch.Tensor | None],
    *scalars: object,
) -> None:
    """Call ``kernel``, a C++ launcher of backend ``cpu`` or ``cuda`` (from a KernelTable).

    ``tensors`` are contiguous buffers (None for an optional one: a null pointer); ``scalars``
    follow in the launcher's order and end with the seed. The CPU launcher also gets torch's
    thread count; the CUDA launcher gets the device index and torch's current stream.
    """
    ptrs = [0 if t is None else t.data_ptr() for t in tensors]
    if backend == "cpu":
        kernel(*ptrs, *scalars, torch.get_num_threads())
        return
    device = next(t.device for t in tensors if t is not None)
    stream = torch.cuda.current_stream(device).cuda_stream
    kernel(*ptrs, *scalars, device.index, stream)


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch.Generator for the reference backend's random numbers."""
    return torch.Generator(device=device).manual_seed(seed)


def call_op(op: Callable[..., Any], impl: Callable[..., Any], *args: Any) -> Any:
    """Call a registered ponder op.

    Eager calls on plain tensors go straight to ``impl`` (the op's body): the dispatcher costs
    about 15 us per call, which matters for per-step sampler loops on small batches. Under
    ``torch.compile``, tracing, or tensor subclasses (fake tensors), the registered op ``op`` runs,
    so those see a custom op with its fake.
    """
    if torch.compiler.is_compiling() or any(
        isinstance(a, torch.Tensor) and type(a) is not torch.Tensor for a in args
    ):
        return op(*args)
    return impl(*args)
