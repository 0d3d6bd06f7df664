"""What every op family shares to launch a kernel: choosing the backend, calling a native
launcher, the registered-op shortcut, dtypes. Argument checks live in :mod:`ponder.validation`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .. import _backend

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


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


def buffer_args(tensors: Sequence[torch.Tensor | None]) -> list[int]:
    """The launcher arguments for ``tensors``: two integers per buffer, its address and its
    element count (``0, 0`` for None). A strided view (a slice of a preallocated cache, read in
    place) counts the elements from its first to the end of its storage, which its strides may
    reach. A plain loop: this runs on every native call, for every buffer."""
    args: list[int] = []
    for t in tensors:
        if t is None:
            args += (0, 0)
        elif t.is_contiguous():
            args += (t.data_ptr(), t.numel())
        else:
            extent = t.untyped_storage().nbytes() // t.element_size() - t.storage_offset()
            args += (t.data_ptr(), extent)
    return args


def launch_native(
    backend: str,
    kernel: Callable[..., None],
    tensors: Sequence[torch.Tensor | None],
    *scalars: object,
) -> None:
    """Call ``kernel``, a C++ launcher of backend ``cpu`` or ``cuda`` (from a KernelTable).

    ``tensors`` are the buffers (None for an optional one): each is passed as two integers, its
    address and its element count (``0, 0`` for None), which the launcher checks against the
    sizes and strides it will use. ``scalars`` follow in the launcher's order and end with the
    seed. The CPU launcher also gets torch's thread count; the CUDA launcher gets the device index
    and torch's current stream.
    """
    buffers = buffer_args(tensors)
    if backend == "cpu":
        kernel(*buffers, *scalars, torch.get_num_threads())
        return
    device = next(t.device for t in tensors if t is not None)
    stream = torch.cuda.current_stream(device).cuda_stream
    kernel(*buffers, *scalars, device.index, stream)


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
