"""ponder._backend.resolve over every op family: the default choice always has a kernel.

A GPU machine is faked (``_cuda`` and Triton reported available for CUDA tensors), so these run
on any CPU-only machine.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import ponder
import pytest
import torch
from ponder import _backend, kv
from ponder.ops import langevin, lm_head, prm, speculative, think
from transformers import LlamaConfig, LlamaForCausalLM

FAMILIES = {
    "langevin": langevin, "lm_head": lm_head, "prm": prm, "speculative": speculative,
    "think": think,
}
ROOT = Path(__file__).resolve().parents[1]
GPU = torch.device("cuda")


def _public_ops(module) -> list[str]:
    """The public functions of an ops module that choose a backend (take ``backend=``). An op's
    helpers, ``<op>_backend`` (its choice) and ``<op>_prechecked`` (its fast path without the
    argument checks), go through the op's own table entry and are checked with it."""
    helper = ("_backend", "_prechecked")
    return [
        name for name in module.__all__
        if inspect.isfunction(getattr(module, name))
        and not (name.endswith(helper) and name.rsplit("_", 1)[0] in module.KERNELS.ops)
        and "backend" in inspect.signature(getattr(module, name)).parameters
    ]


def _kernel_names(backend: str, family: str) -> set[str]:
    """What a backend's module exports: the module itself where it imports here, else its
    source (the binding file, or the Triton file), so the check runs without a GPU build."""
    module = {"cpu": "ponder._C", "cuda": "ponder._cuda"}.get(
        backend, f"ponder.triton_kernels.{family}"
    )
    try:
        return set(dir(importlib.import_module(module)))
    except ImportError:
        pass
    if backend in ("cpu", "cuda"):
        # The binding file's own m.def lines and the X-macro list it expands (cuda/ops.h,
        # cpu/ops.inc: "X(ula_step) X(uld_step) ...").
        text = "".join(p.read_text() for p in [ROOT / "csrc" / f"bind_{backend}.cpp",
                                                *(ROOT / "csrc" / backend).glob("ops.*")])
        return set(re.findall(r'm\.def\("(\w+)"', text)) | set(re.findall(r"\bX\((\w+)\)", text))
    tree = ast.parse((ROOT / "triton_kernels" / f"{family}.py").read_text())
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
              if isinstance(t, ast.Name)}
    return names


@pytest.fixture
def fake_gpu(monkeypatch):
    """Report ``cuda`` and ``triton`` as available on CUDA devices."""
    _backend._cached_status("cpu")  # load the real statuses first, then overwrite two
    for name in ("cuda", "triton"):
        monkeypatch.setitem(
            _backend._STATUS, name, _backend.BackendStatus(name, True, "", ("cuda",), "faked")
        )
    monkeypatch.delenv("PONDER_BACKEND", raising=False)


def _all_ops():
    return [(family, op) for family, module in FAMILIES.items() for op in _public_ops(module)]


def test_every_public_op_is_in_its_family_table():
    assert len(_all_ops()) >= 10
    for family, op in _all_ops():
        assert op in FAMILIES[family].KERNELS.ops, f"{family}.{op} has no KernelTable entry"
        assert FAMILIES[family].KERNELS.family == family


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_table_matches_the_backend_modules(family):
    """Every kernel a table names exists in its backend's module: the table is what the ops
    call (``KernelTable.kernel``)."""
    for op, kernels in FAMILIES[family].KERNELS.ops.items():
        for backend, name in kernels.items():
            assert backend in ("cpu", "cuda", "triton"), (family, op, backend)
            assert name in _kernel_names(backend, family), f"{family}.{op}: {backend} lacks {name}"


@pytest.mark.parametrize("family, op", _all_ops())
def test_default_on_a_gpu_has_a_kernel(family, op, fake_gpu):
    """On a CUDA tensor with _cuda built, each op picks a backend that really has its kernel
    (``score_steps`` used to pick 'cuda', which has no ``prm_steps``)."""
    kernels = FAMILIES[family].KERNELS
    name = _backend.resolve(op, GPU, None, kernels)
    assert name in ("cuda", "triton")
    assert kernels.ops[op][name] in _kernel_names(name, family)
    if "cuda" in kernels.ops[op]:
        # The hand-written kernel first, unless the table names another default for CUDA.
        assert name == kernels.cuda_default.get(op, "cuda")


def test_prm_on_a_gpu_defaults_to_triton(fake_gpu):
    for op in ("score_steps", "step_logits"):
        assert _backend.resolve(op, GPU, None, prm.KERNELS) == "triton"


@pytest.mark.parametrize("family, op", _all_ops())
def test_forced_cuda_without_kernel_names_the_alternative(family, op, fake_gpu):
    kernels = FAMILIES[family].KERNELS
    if "cuda" in kernels.ops[op]:
        assert _backend.resolve(op, GPU, "cuda", kernels) == "cuda"
        return
    with pytest.raises(ponder.BackendUnavailableError) as info:
        _backend.resolve(op, GPU, "cuda", kernels)
    msg = str(info.value)
    assert f"{op}: ponder.ops.{family} has no CUDA C++ kernel" in msg
    assert "use backend='triton'" in msg
    assert "triton: can run it" in msg  # every candidate with what it says


def test_no_gpu_backend_lists_each_reason(monkeypatch):
    """On CUDA tensors with neither GPU backend usable, the error gives every backend's reason."""
    _backend._cached_status("cpu")
    monkeypatch.setitem(_backend._STATUS, "cuda",
                        _backend.BackendStatus("cuda", False, "no nvcc at build", ()))
    monkeypatch.setitem(_backend._STATUS, "triton",
                        _backend.BackendStatus("triton", False, "Triton is not installed", ()))
    monkeypatch.delenv("PONDER_BACKEND", raising=False)
    with pytest.raises(ponder.BackendUnavailableError) as info:
        _backend.resolve("score_steps", GPU, None, prm.KERNELS)
    msg = str(info.value)
    assert "cuda: no nvcc at build" in msg
    assert "triton: Triton is not installed" in msg
    assert "backend='torch'" in msg


def _tiny_llama():
    config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    return LlamaForCausalLM(config)


def test_apply_think_rejects_an_unusable_backend_at_once(monkeypatch):
    """A backend that cannot run here is refused by apply_think, not at the first generate."""
    _backend._cached_status("cpu")
    monkeypatch.setitem(_backend._STATUS, "cuda",
                        _backend.BackendStatus("cuda", False, "no nvcc at build", ()))
    model = _tiny_llama()
    with pytest.raises(ponder.BackendUnavailableError, match="no nvcc at build"):
        kv.apply_think(model, backend="cuda")
    assert kv.think_settings(model) is None  # nothing was patched


def test_apply_think_accepts_a_backend_with_kernels():
    model = kv.apply_think(_tiny_llama(), backend="torch")
    assert kv.think_settings(model).backend == "torch"
    kv.remove_think(model)
