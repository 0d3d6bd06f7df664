"""Shared test setup.

Triton kernels can only run on the CPU in Triton's interpreter, and ``TRITON_INTERPRET`` is read
when Triton (and so ponder's Triton backend) is first imported: set it here, before anything
imports ponder, so that the ``triton`` backend is exercised on machines without a GPU.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import ponder
import pytest

# Backends that run on CPU tensors here: cpu (ponder._C), torch (the reference) and, when Triton
# is installed, triton (in the interpreter). Computed once, at collection.
CPU_BACKENDS = tuple(
    name for name, status in ponder.available_backends().items()
    if status.available and "cpu" in status.devices
)


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request) -> str:
    """Each backend that can run on CPU tensors here, in turn."""
    return request.param


@pytest.fixture
def restore_threads():
    """Put torch's intra-op thread count back after a test that changes it."""
    threads = torch.get_num_threads()
    yield threads
    torch.set_num_threads(threads)


@pytest.fixture(params=("cuda", "triton"))
def gpu_backend(request) -> str:
    """Each GPU backend (the CUDA C++ kernels, then Triton) on a CUDA device, in turn; skipped
    without a GPU or where that backend is not built. For tests marked ``gpu``."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    status = ponder.available_backends()[request.param]
    if not (status.available and "cuda" in status.devices):
        pytest.skip(f"backend {request.param!r} is not available: {status.reason}")
    return request.param
