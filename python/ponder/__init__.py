"""ponder: fast kernels and thin method layers for LLM reasoning and Langevin-family sampling.

    import ponder
    ponder.available_backends()          # which kernels run here, and why not
    from ponder.ops import langevin      # fused sampler steps
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import ops
from ._backend import BackendStatus, BackendUnavailableError, available_backends

__all__ = [
    "BackendStatus",
    "BackendUnavailableError",
    "__version__",
    "available_backends",
    "info",
    "ops",
]


def info() -> str:
    """A report of versions and backends, for bug reports (also ``python -m ponder``)."""
    import platform

    import torch

    lines = [
        f"ponder {__version__}",
        f"python {platform.python_version()} ({platform.machine()}, {platform.system()})",
        f"torch {torch.__version__} (threads: {torch.get_num_threads()}, "
        f"CUDA available: {torch.cuda.is_available()})",
        "backends:",
    ]
    for name, status in available_backends().items():
        state = "available" if status.available else "unavailable"
        extra = f" [{status.detail}]" if status.detail else ""
        where = f" on {', '.join(status.devices)}" if status.available else ""
        lines.append(f"  {name:<7} {state}{where}{extra}")
        if not status.available:
            lines.append(f"          why: {status.reason}")
    return "\n".join(lines)
