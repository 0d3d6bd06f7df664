"""Finding and choosing the kernel backends: ``cpu`` (ponder._C), ``cuda`` (ponder._cuda),
``triton`` (ponder.triton_kernels) and ``torch`` (the plain-torch reference).

Each op family declares a :class:`KernelTable` (which backends have a kernel for which op), and
every op picks its backend with :func:`resolve`: the default follows the tensors' device (CPU ->
``cpu``; CUDA -> ``cuda``, else ``triton``, among the backends with a kernel for the op).
``PONDER_BACKEND=<name>`` or an op's ``backend=`` argument forces one; a forced backend that has no
kernel or is not available here is an error that says why and which backend can run the input,
never a silent fallback.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch

BACKENDS = ("cpu", "cuda", "triton", "torch")

# dtype codes understood by the C++ launchers (csrc/include/ponder/common.h: enum DType).
DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that is not built or cannot run here."""


@dataclass(frozen=True)
class BackendStatus:
    """Whether a backend can run here. ``reason`` says why not (empty when available)."""

    name: str
    available: bool
    reason: str
    devices: tuple[str, ...]  # device types the backend runs on here
    detail: str = ""  # versions and build facts, for bug reports


def triton_interpreted() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def _cpu_module() -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module("ponder._C"), ""
    except ImportError as exc:
        return None, (
            f"ponder._C failed to import ({exc}); the compiled extension is missing or broken: "
            "reinstall ponder with `pip install .` from a source checkout"
        )


@functools.cache
def _cuda_module() -> tuple[ModuleType | None, str]:
    try:
        return importlib.import_module("ponder._cuda"), ""
    except ImportError as exc:
        return None, (
            f"ponder._cuda is not built ({exc}): reinstall ponder on a machine where nvcc is on "
            "PATH (the build compiles it whenever it finds a CUDA compiler)"
        )


@functools.cache
def _triton_module() -> tuple[ModuleType | None, str]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return None, "Triton is not installed: pip install 'ponder[triton]'"
    try:
        return importlib.import_module("ponder.triton_kernels"), ""
    except ImportError as exc:  # pragma: no cover - a broken install
        return None, f"ponder.triton_kernels failed to import ({exc})"


def cpu_module() -> ModuleType:
    mod, reason = _cpu_module()
    if mod is None:
        raise BackendUnavailableError(f"backend 'cpu' is not available: {reason}")
    return mod


def cuda_module() -> ModuleType:
    mod, reason = _cuda_module()
    if mod is None:
        raise BackendUnavailableError(f"backend 'cuda' is not available: {reason}")
    return mod


def triton_kernels(family: str) -> ModuleType:
    """The Triton kernels of one op family, e.g. ``triton_kernels("langevin")``."""
    mod, reason = _triton_module()
    if mod is None:
        raise BackendUnavailableError(f"backend 'triton' is not available: {reason}")
    return importlib.import_module(f"ponder.triton_kernels.{family}")


def _status_cpu() -> BackendStatus:
    mod, reason = _cpu_module()
    if mod is None:
        return BackendStatus("cpu", False, reason, ())
    detail = f"OpenMP {'on' if mod.openmp else 'off'}, instruction set {mod.active_isa()}"
    return BackendStatus("cpu", True, "", ("cpu",), detail)


def _status_cuda() -> BackendStatus:
    mod, reason = _cuda_module()
    if mod is None:
        return BackendStatus("cuda", False, reason, ())
    if not torch.cuda.is_available():
        return BackendStatus(
            "cuda", False, "ponder._cuda is built, but torch sees no CUDA device", (), "built"
        )
    count = mod.device_count()
    if count == 0:
        return BackendStatus(
            "cuda", False, "ponder._cuda is built, but its CUDA runtime finds no device "
            "(driver too old for the CUDA version ponder was built with?)", (), "built",
        )
    return BackendStatus("cuda", True, "", ("cuda",), f"{count} device(s)")


def _status_triton() -> BackendStatus:
    mod, reason = _triton_module()
    if mod is None:
        return BackendStatus("triton", False, reason, ())
    import triton

    detail = f"triton {triton.__version__}"
    if triton_interpreted():
        return BackendStatus(
            "triton", True, "", ("cpu",), detail + ", interpreter (TRITON_INTERPRET=1; no bf16)"
        )
    if torch.cuda.is_available():
        return BackendStatus("triton", True, "", ("cuda",), detail)
    return BackendStatus(
        "triton", False,
        "Triton needs a CUDA GPU, or TRITON_INTERPRET=1 (set before importing ponder) to run "
        "its kernels in the CPU interpreter (slow; meant for tests)", (), detail,
    )


def available_backends() -> dict[str, BackendStatus]:
    """Which backends are built and usable here, and why one is not.

    Returns:
        ``{name: BackendStatus}`` for ``cpu``, ``cuda``, ``triton`` and ``torch``; each status has
        ``available``, ``reason`` (why not), ``devices`` (device types it runs on) and ``detail``.
    """
    return {
        "cpu": _status_cpu(),
        "cuda": _status_cuda(),
        "triton": _status_triton(),
        "torch": BackendStatus("torch", True, "", ("cpu", "cuda"), f"torch {torch.__version__}"),
    }


# A plain dict rather than functools.cache: torch.compile traces through dict lookups, while it
# warns about (and breaks the graph at) lru_cache-wrapped calls.
_STATUS: dict[str, BackendStatus] = {}


@torch.compiler.disable
def _load_status() -> None:
    _STATUS.update(available_backends())


def _cached_status(name: str) -> BackendStatus:
    if not _STATUS:
        _load_status()  # once per process: imports and device queries, never traced
    return _STATUS[name]


@dataclass(frozen=True)
class KernelTable:
    """Which backends have a kernel for which op of one family, and the kernel's name there.

    ``ops[op][backend]`` is the attribute that runs ``op`` in the backend's module: ``ponder._C``
    for ``cpu``, ``ponder._cuda`` for ``cuda``, ``ponder.triton_kernels.<family>`` for ``triton``.
    The ``torch`` reference runs every op and is not listed.

    ``cuda_default[op]`` names the backend tried first on CUDA tensors when none is forced (by
    default ``cuda``, then ``triton``): where both have a kernel, the faster one on the GPU
    benchmark (bench/gpu_check.py), recorded next to the table with its figure.
    """

    family: str
    ops: Mapping[str, Mapping[str, str]]
    cuda_default: Mapping[str, str] = field(default_factory=dict)

    def backends(self, op: str) -> tuple[str, ...]:
        """The backends with a kernel for ``op``, ``torch`` last."""
        return (*self.ops[op], "torch")

    def kernel(self, op: str, backend: str) -> Callable[..., Any]:
        """The function that runs ``op`` on ``backend`` (``cpu``, ``cuda`` or ``triton``)."""
        name = self.ops[op][backend]
        if backend == "cpu":
            return getattr(cpu_module(), name)
        if backend == "cuda":
            return getattr(cuda_module(), name)
        return getattr(triton_kernels(self.family), name)


# Names in errors: "has no CUDA C++ kernel".
_KERNEL_KIND = {"cpu": "CPU C++", "cuda": "CUDA C++", "triton": "Triton"}
# The default order on each device type: the first one that has a kernel and runs here wins.
_PREFERENCE = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}


def _why_not(kernels: KernelTable, op: str, name: str, device: torch.device) -> str:
    """Why backend ``name`` cannot run ``op`` on ``device`` tensors here ("" when it can)."""
    if name not in kernels.backends(op):
        return f"ponder.ops.{kernels.family} has no {_KERNEL_KIND[name]} kernel"
    status = _cached_status(name)
    if not status.available:
        return status.reason
    if device.type not in status.devices:
        return f"runs on {' or '.join(status.devices)} tensors here, not {device.type}"
    return ""


def _candidates(kernels: KernelTable, op: str, device: torch.device) -> str:
    """Every backend with what it says about this input, for error messages."""
    lines = []
    for name in BACKENDS:
        reason = _why_not(kernels, op, name, device)
        lines.append(f"{name}: {reason or 'can run it'}")
    return "; ".join(lines)


def resolve(
    op: str, device: torch.device, backend: str | None, kernels: KernelTable
) -> str:
    """The backend that runs ``op`` of the family ``kernels`` on ``device`` tensors.

    ``backend`` (the op's argument) beats ``PONDER_BACKEND``, which beats the device's default: on
    CPU ``cpu``; on CUDA ``kernels.cuda_default[op]`` where the table names one, else ``cuda``,
    else ``triton``, among the backends with a kernel for ``op``.
    The result always has a kernel and runs here.

    Raises:
        ValueError: the name is not a backend, or the backend runs on other devices here.
        BackendUnavailableError: the backend has no kernel for ``op`` or is not built / usable
            here, or no backend runs ``device`` tensors by default; the message says why and
            what each backend says about this input.
    """
    forced = backend if backend is not None else (os.environ.get("PONDER_BACKEND") or None)
    if forced is None:
        order = _PREFERENCE.get(device.type, ())
        first = kernels.cuda_default.get(op) if device.type == "cuda" else None
        if first is not None:
            order = (first, *(name for name in order if name != first))
        for name in order:
            if not _why_not(kernels, op, name, device):
                return name
        if device.type not in _PREFERENCE:
            raise BackendUnavailableError(
                f"{op}: ponder has no backend for {device.type} tensors; backend='torch' runs "
                "the reference"
            )
        raise BackendUnavailableError(
            f"{op}: no backend runs {device.type} tensors here by default "
            f"({_candidates(kernels, op, device)}). Pass backend='torch' to run the reference."
        )
    if forced not in BACKENDS:
        source = "backend" if backend is not None else "PONDER_BACKEND"
        raise ValueError(f"{op}: {source}={forced!r} is not a backend; choose one of {BACKENDS}")
    if forced not in kernels.backends(op):
        raise BackendUnavailableError(
            f"{op}: ponder.ops.{kernels.family} has no {_KERNEL_KIND[forced]} kernel for this op; "
            f"{_suggestion(kernels, op, device)} ({_candidates(kernels, op, device)})"
        )
    status = _cached_status(forced)
    if not status.available:
        raise BackendUnavailableError(
            f"{op}: backend {forced!r} is not available: {status.reason}"
        )
    if device.type not in status.devices:
        raise ValueError(
            f"{op}: backend {forced!r} runs on {' or '.join(status.devices)} tensors here, "
            f"but the inputs are on {device}"
        )
    return forced


def _suggestion(kernels: KernelTable, op: str, device: torch.device) -> str:
    """Which backend to ask for instead: the first (in BACKENDS order) that runs this input."""
    usable = [name for name in BACKENDS if not _why_not(kernels, op, name, device)]
    return f"use backend={usable[0]!r}" if usable else f"nothing runs {device.type} tensors here"


def clear_cache() -> None:
    """Forget cached backend facts (after changing TRITON_INTERPRET in tests, say)."""
    for fn in (_cpu_module, _cuda_module, _triton_module):
        fn.cache_clear()
    _STATUS.clear()
