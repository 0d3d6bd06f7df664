"""The CPU kernels are compiled three times on x86-64 (baseline, AVX2+FMA, AVX-512) and the
widest copy the CPU has is picked at run time. The narrower copies would never run on a CI
machine with AVX-512, so they are exercised here on purpose, in subprocesses with
PONDER_CPU_ISA=default / avx2, against the same inputs as the widest copy."""

import os
import subprocess
import sys

import ponder
import pytest
import torch

_SCRIPT = r"""
import sys, torch
import ponder._C as C
from ponder.ops import langevin as L
torch.manual_seed(0)
x, g, y, v = (torch.randn(5, 1031) for _ in range(4))
noise = torch.randn(5, 1031)
outs = {
    "isa": C.active_isa(),
    "ula_noise": L.ula_step(x, g, 0.1, noise=noise, backend="cpu"),
    "ula_rng": L.ula_step(x, g, 0.1, generator=123, backend="cpu"),
    "uld_rng": torch.stack(L.uld_step(x, v, g, 0.1, 2.0, generator=7, backend="cpu")),
    "prox_rng": L.proximal_step(x, y, g, 0.05, 0.5, generator=9, backend="cpu"),
}
torch.save(outs, sys.argv[1])
"""


def _run(tmp_path, isa: str | None) -> dict:
    env = dict(os.environ)
    env.pop("PONDER_CPU_ISA", None)
    if isa is not None:
        env["PONDER_CPU_ISA"] = isa
    path = tmp_path / f"{isa}.pt"
    subprocess.run([sys.executable, "-c", _SCRIPT, str(path)], check=True, env=env)
    return torch.load(path)


def test_active_isa_is_reported():
    assert ponder._backend.cpu_module().active_isa() in ("default", "avx2", "avx512")
    assert "OpenMP" in ponder.available_backends()["cpu"].detail


@pytest.mark.parametrize("cap", ["default", "avx2"])
def test_narrower_isa_agrees_with_widest(tmp_path, cap):
    widest = _run(tmp_path, None)
    narrow = _run(tmp_path, cap)
    if narrow["isa"] != cap or widest["isa"] == cap:
        pytest.skip(f"this CPU runs {widest['isa']}: nothing narrower to compare as {cap}")
    baseline = narrow
    # Same math and the same Philox stream; only FMA contraction differs, so float32 results
    # agree to a few ulps (the normals' log/sincos polynomials are evaluated in float32).
    for key in ("ula_noise", "ula_rng", "uld_rng", "prox_rng"):
        torch.testing.assert_close(baseline[key], widest[key], rtol=1e-5, atol=1e-5)
