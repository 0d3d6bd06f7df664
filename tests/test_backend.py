"""ponder._backend: finding, reporting and choosing the kernel backends."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import ponder
import pytest
import torch
from ponder import _backend
from ponder.ops import langevin as L

BACKEND_NAMES = {"cpu", "cuda", "triton", "torch"}


def test_available_backends_fields():
    status = ponder.available_backends()
    assert set(status) == BACKEND_NAMES
    for name, st in status.items():
        assert isinstance(st, ponder.BackendStatus)
        assert st.name == name
        assert isinstance(st.available, bool)
        assert isinstance(st.reason, str) and isinstance(st.detail, str)
        assert isinstance(st.devices, tuple)
        # a reason exactly when unavailable; devices exactly when available
        assert (st.reason == "") == st.available, (name, st)
        assert bool(st.devices) == st.available, (name, st)
        assert set(st.devices) <= {"cpu", "cuda"}
    # The compiled CPU module and the reference always run on CPU tensors.
    assert status["cpu"].available and status["cpu"].devices == ("cpu",)
    assert status["torch"].available and "cpu" in status["torch"].devices


def test_triton_backend_status_follows_interpreter():
    st = ponder.available_backends()["triton"]
    try:
        import triton  # noqa: F401
    except ImportError:
        assert not st.available and "pip install" in st.reason
        return
    if _backend.triton_interpreted():  # conftest sets it when there is no GPU
        assert st.available and st.devices == ("cpu",)
    elif torch.cuda.is_available():
        assert st.available and st.devices == ("cuda",)


def test_cuda_backend_unavailable_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    st = ponder.available_backends()["cuda"]
    assert not st.available
    assert st.reason  # says why: not built, or built but no device


def test_info_lists_every_backend():
    text = ponder.info()
    for name, st in ponder.available_backends().items():
        state = "available" if st.available else "unavailable"
        assert any(line.split()[:2] == [name, state] for line in text.splitlines()), text
        if not st.available:
            assert st.reason in text


def test_python_m_ponder_prints_each_backend():
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "ponder"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"ponder {ponder.__version__}")
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ")
              and not line.strip().startswith("why:")}
    assert listed == BACKEND_NAMES, out
    assert f"torch {torch.__version__}" in out


def test_python_m_ponder_with_arguments_runs_the_command_line():
    """``python -m ponder COMMAND`` is ``ponder COMMAND``: its help, and its error exit."""
    run = [sys.executable, "-m", "ponder"]
    proc = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "demo" in proc.stdout and not proc.stdout.startswith("ponder ")
    proc = subprocess.run([*run, "no-such-command"], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 2 and "no-such-command" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only report")
def test_python_m_ponder_without_interpreter_explains_triton():
    """Without TRITON_INTERPRET and without a GPU, Triton is reported unavailable with the way
    to get it."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "ponder"], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    i = next(i for i, line in enumerate(lines) if line.split()[:1] == ["triton"])
    assert lines[i].split()[1] == "unavailable"
    assert "TRITON_INTERPRET=1" in lines[i + 1]


# Which backend ran is visible on the generator path: the same seed gives different numbers on
# cpu (ponder's Philox), torch (torch.randn) and triton (tl.randn).
def _draw(**kw):
    x = torch.zeros(4, 64)
    return L.ula_step(x, x, 0.5, generator=123, **kw)


def _resolve(backend):
    return _backend.resolve("ula_step", torch.device("cpu"), backend, L.KERNELS)


def test_seed_streams_differ_between_backends():
    """The premise of the checks below: each backend's stream is its own."""
    assert not torch.equal(_draw(backend="cpu"), _draw(backend="torch"))


@pytest.mark.parametrize("name", ["cpu", "torch"])
def test_env_forces_backend(name, monkeypatch):
    monkeypatch.setenv("PONDER_BACKEND", name)
    assert _resolve(None) == name
    assert torch.equal(_draw(), _draw(backend=name))
    monkeypatch.delenv("PONDER_BACKEND")
    assert _resolve(None) == "cpu"


def test_empty_env_means_default(monkeypatch):
    monkeypatch.setenv("PONDER_BACKEND", "")
    assert _resolve(None) == "cpu"


@pytest.mark.parametrize("name", ["cpu", "torch"])
def test_argument_forces_backend(name):
    assert _resolve(name) == name
    other = "torch" if name == "cpu" else "cpu"
    assert torch.equal(_draw(backend=name), _draw(backend=name))
    assert not torch.equal(_draw(backend=name), _draw(backend=other))


def test_argument_beats_env(monkeypatch):
    monkeypatch.setenv("PONDER_BACKEND", "torch")
    assert torch.equal(_draw(backend="cpu"), _draw(backend="cpu"))
    assert _resolve("cpu") == "cpu"
    monkeypatch.setenv("PONDER_BACKEND", "no-such-backend")
    _draw(backend="cpu")  # the bad environment value is not even looked at


def test_unknown_backend_argument():
    with pytest.raises(ValueError, match=r"ula_step: backend='nope' is not a backend"):
        _draw(backend="nope")


def test_unknown_backend_env(monkeypatch):
    monkeypatch.setenv("PONDER_BACKEND", "nope")
    with pytest.raises(ValueError, match=r"PONDER_BACKEND='nope' is not a backend"):
        _draw()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the cuda backend is available here")
@pytest.mark.parametrize("via", ["argument", "env"])
def test_unavailable_backend_says_why(via, monkeypatch):
    reason = ponder.available_backends()["cuda"].reason
    assert reason
    kwargs = {}
    if via == "env":
        monkeypatch.setenv("PONDER_BACKEND", "cuda")
    else:
        kwargs["backend"] = "cuda"
    with pytest.raises(ponder.BackendUnavailableError, match="backend 'cuda' is not available") \
            as info:
        _draw(**kwargs)
    assert reason in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_backend_on_wrong_device_is_value_error():
    x = torch.zeros(4, 8, device="meta")
    with pytest.raises(ValueError, match=r"backend 'cpu' runs on cpu tensors here, but the "
                                         r"inputs are on meta"):
        L.ula_step(x, x, 0.1, noise=x, backend="cpu")


def test_no_default_backend_for_meta_tensors():
    x = torch.zeros(4, 8, device="meta")
    with pytest.raises(ponder.BackendUnavailableError, match="no backend for meta tensors"):
        L.ula_step(x, x, 0.1, noise=x)


def test_default_backend_follows_device():
    assert _resolve(None) == "cpu"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no CUDA compiler: _cuda is not built")
def test_cuda_module_is_built_and_imports_without_gpu():
    """The build compiles ponder._cuda whenever nvcc is found, and importing it must work on a
    machine without a GPU (the CUDA runtime reports no device instead of failing)."""
    import ponder._cuda as cuda_module

    count = cuda_module.device_count()
    assert isinstance(count, int)
    assert count == torch.cuda.device_count()  # both ask the same driver
    if not torch.cuda.is_available():
        assert ponder.available_backends()["cuda"].detail == "built"
