"""Finding and choosing the kernel backends: ``cpu`` (ponder._C), ``cuda`` (ponder._cuda),
``triton`` (ponder.triton_kernels) and ``torch`` (the plain-torch reference).

The default backend follows the tensors' device (CPU -> ``cpu``; CUDA -> ``cuda``, else ``triton``).
``PONDER_BACKEND=<name>`` or an op's ``backend=`` argument forces one; a forced backend that is not
available here is an error that says why and how to get it, never a silent fallback.
"""

from __future__ import annotations

import functools
import importlib
import os
from dataclasses import dataclass
from types import ModuleType

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


def default_backend(device: torch.device) -> str:
    """The backend used for tensors on ``device`` when none is forced."""
    if device.type == "cpu":
        return "cpu"
    if device.type == "cuda":
        for name in ("cuda", "triton"):
            if _cached_status(name).available:
                return name
        raise BackendUnavailableError(
            "no GPU backend is available for CUDA tensors: "
            f"cuda: {_cached_status('cuda').reason}; triton: {_cached_status('triton').reason}. "
            "Pass backend='torch' to run the plain-torch reference."
        )
    raise BackendUnavailableError(
        f"ponder has no backend for {device.type} tensors; backend='torch' runs the reference"
    )


def resolve_backend(op: str, device: torch.device, backend: str | None) -> str:
    """Pick the backend for one call: ``backend`` argument > ``PONDER_BACKEND`` > device default."""
    name = backend if backend is not None else (os.environ.get("PONDER_BACKEND") or None)
    if name is None:
        return default_backend(device)
    if name not in BACKENDS:
        source = "backend" if backend is not None else "PONDER_BACKEND"
        raise ValueError(f"{op}: {source}={name!r} is not a backend; choose one of {BACKENDS}")
    status = _cached_status(name)
    if not status.available:
        raise BackendUnavailableError(f"{op}: backend {name!r} is not available: {status.reason}")
    if device.type not in status.devices:
        raise ValueError(
            f"{op}: backend {name!r} runs on {' or '.join(status.devices)} tensors here, "
            f"but the inputs are on {device}"
        )
    return name


def clear_cache() -> None:
    """Forget cached backend facts (after changing TRITON_INTERPRET in tests, say)."""
    for fn in (_cpu_module, _cuda_module, _triton_module):
        fn.cache_clear()
    _STATUS.clear()
