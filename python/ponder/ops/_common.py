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


# Outputs from this size on are advised onto huge pages (empty_output). Smaller ones come from
# the allocator's reused heap and are already faulted in; a 2 MiB page needs 4 MiB to hold one.
HUGE_PAGE_MIN_BYTES = 4 << 20


def empty_output(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A fresh contiguous output tensor. On the CPU, a large one (>= ``HUGE_PAGE_MIN_BYTES``) is
    advised onto 2 MiB transparent huge pages before anything writes it: glibc gives such a
    tensor a new mapping on every call, and faulting 40 MB in at 4 KiB a page (10,000 faults,
    each clearing its page) took longer than a Langevin step's own memory traffic on the
    benchmark machines (docs/benchmarks.md). Values are unaffected; where Linux refuses
    (THP disabled, another OS) nothing changes."""
    out = torch.empty(shape, dtype=dtype, device=device)
    nbytes = out.numel() * out.element_size()
    if out.device.type == "cpu" and nbytes >= HUGE_PAGE_MIN_BYTES:
        module, _ = _backend._cpu_module()
        if module is not None and hasattr(module, "advise_huge_pages"):
            module.advise_huge_pages(out.data_ptr(), nbytes)
    return out


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    """A torch.Generator for the reference backend's random numbers."""
    return torch.Generator(device=device).manual_seed(seed)


def call_op(op: Callable[..., Any], impl: Callable[..., Any], *args: Any) -> Any:
    """Call a registered ponder op.

    Eager calls on plain tensors go straight to ``impl`` (the op's body): the dispatcher costs
    about 15 us per call, which matters for per-step sampler loops on small batches. Under
    ``torch.compile``, tracing, or tensor subclasses (fake tensors), the registered op ``op`` runs,
    so those see a custom op with its fake; so does a call that autograd records (an input
    requires grad), so that the op's registered backward is used, the same on every backend.
    """
    if torch.compiler.is_compiling() or needs_grad(*args) or any(
        isinstance(a, torch.Tensor) and type(a) is not torch.Tensor for a in args
    ):
        return op(*args)
    return impl(*args)


def needs_grad(*args: Any) -> bool:
    """Whether autograd will record a call on ``args``: grad mode is on and a tensor among them
    requires grad (an ``nn.Parameter`` included)."""
    return torch.is_grad_enabled() and any(
        isinstance(a, torch.Tensor) and a.requires_grad for a in args
    )


def refuse_grad(op: str, why: str, **tensors: torch.Tensor | None) -> None:
    """Raise TypeError, naming the argument, if a call of ``op`` (which has no gradient: ``why``)
    would be recorded by autograd; every backend refuses alike, before any kernel runs."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise TypeError(
                f"{op}: {name} requires grad, but {op} has no gradient ({why}); pass "
                f"{name}.detach() or call it under torch.no_grad()"
            )


def register_reference_backward(custom_op: Any, reference: Callable[..., Any]) -> None:
    """Give ``custom_op`` the backward of ``reference``, a plain-torch function with the op's
    signature and outputs (its torch backend): the backward recomputes the reference under
    autograd from the saved inputs and differentiates it, so every backend has the same exact
    gradient, at the cost of one reference forward. For ops whose references are cheap next to
    what they serve (attention over one decode step, a channel score, a gather)."""

    def setup_context(ctx, inputs, output):
        ctx.is_tensor = [isinstance(a, torch.Tensor) for a in inputs]
        ctx.scalars = [None if isinstance(a, torch.Tensor) else a for a in inputs]
        ctx.save_for_backward(*[a for a in inputs if isinstance(a, torch.Tensor)])

    def backward(ctx, *grads):
        saved = iter(ctx.saved_tensors)
        args = [next(saved) if t else s for t, s in zip(ctx.is_tensor, ctx.scalars)]
        wanted = [i for i, a in enumerate(args)
                  if isinstance(a, torch.Tensor) and ctx.needs_input_grad[i]]
        with torch.enable_grad():
            for i in wanted:
                args[i] = args[i].detach().requires_grad_()
            outs = reference(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        result: list[Any] = [None] * len(args)
        if pairs and wanted:
            found = torch.autograd.grad([o for o, _ in pairs], [args[i] for i in wanted],
                                        [g for _, g in pairs], allow_unused=True)
            for i, g in zip(wanted, found):
                result[i] = g
        return tuple(result)

    custom_op.register_autograd(backward, setup_context=setup_context)
