"""The CPU kernels are compiled three times on x86-64 (baseline, AVX2+FMA, AVX-512; the ThinK
kernels a fourth time with AVX512-BF16) and the widest copy the CPU has is picked at run time.
The narrower copies would never run on a CI machine with AVX-512, so they are exercised here on
purpose, in subprocesses with PONDER_CPU_ISA=default / avx2 / avx512, against the same inputs as
the widest copy."""

import filecmp
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    assert ponder._backend.cpu_module().active_isa() in ("default", "avx2", "avx512",
                                                         "avx512bf16")
    assert "OpenMP" in ponder.available_backends()["cpu"].detail


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
def test_narrower_isa_agrees_with_widest(tmp_path, cap):
    widest = _run(tmp_path, None)
    narrow = _run(tmp_path, cap)
    if narrow["isa"] != cap or widest["isa"] == cap:
        pytest.skip(f"this CPU runs {widest['isa']}: nothing narrower to compare as {cap}")
    baseline = narrow
    # Same math and the same Philox stream (cpu/normals.h on AVX2 / AVX-512, the scalar one in
    # the baseline build: the same words); only FMA contraction differs, so float32 results
    # agree to a few ulps (the normals' log/sincos polynomials are evaluated in float32).
    for key in ("ula_noise", "ula_rng", "uld_rng", "prox_rng"):
        torch.testing.assert_close(baseline[key], widest[key], rtol=1e-5, atol=1e-5)


def _thp_mode() -> str | None:
    """The bracketed transparent-huge-page mode ("always", "madvise", "never"), None off Linux."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="utf-8") as f:
            return f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return None


def test_huge_page_advice_covers_only_whole_pages():
    C = ponder._backend.cpu_module()
    # Nothing to advise: empty, and a buffer smaller than one 2 MiB page.
    assert C.advise_huge_pages(1 << 21, 0) is False
    small = torch.empty(1000)
    assert C.advise_huge_pages(small.data_ptr(), 4000) is False
    # Hostile calls refuse quietly: negative sizes, unmapped ranges, a range past the top.
    assert C.advise_huge_pages(small.data_ptr(), -1) is False
    assert C.advise_huge_pages(1 << 21, 1 << 22) is False  # nothing is mapped that low
    assert C.advise_huge_pages(2**64 - (1 << 21), 1 << 30) is False
    if _thp_mode() in (None, "never"):
        pytest.skip("no transparent huge pages on this machine")
    big = torch.empty(3 << 20)  # 12 MiB: at least five whole 2 MiB pages inside
    assert C.advise_huge_pages(big.data_ptr(), big.numel() * 4) is True


def test_large_outputs_are_fresh_and_exact():
    # empty_output changes only how pages are backed: a large Langevin step equals the small
    # formula element for element, and the output does not alias any input.
    from ponder.ops import _common
    from ponder.ops import langevin as L

    n = _common.HUGE_PAGE_MIN_BYTES // 4 + 12345  # float32 elements: above the threshold
    gen = torch.Generator().manual_seed(0)
    x, g, noise = (torch.randn(n, generator=gen) for _ in range(3))
    out = L.ula_step(x, g, 0.1, noise=noise, backend="cpu")
    assert out.is_contiguous() and out.shape == x.shape
    assert out.data_ptr() not in (x.data_ptr(), g.data_ptr(), noise.data_ptr())
    ref = L.ula_step(x[:1000], g[:1000], 0.1, noise=noise[:1000], backend="cpu")
    assert torch.equal(out[:1000], ref)
    tail = slice(n - 1000, n)
    expect = L.ula_step(x[tail], g[tail], 0.1, noise=noise[tail], backend="cpu")
    assert torch.equal(out[tail], expect)


_PHILOX_SCRIPT = r"""
import sys, torch
import ponder._C as C
from ponder.ops import langevin as L
from ponder.ops import speculative as S
zeros = torch.zeros(70_001)
gen = torch.Generator().manual_seed(0)
target = 3.0 * torch.randn(3, 3, 3001, generator=gen)
tokens = torch.randint(0, 3001, (3, 2), generator=gen)
outs = {"isa": C.active_isa(),
        # ula_step at x = grad = 0, h = 0.5 returns the normals themselves.
        "normals": L.ula_step(zeros, zeros, 0.5, generator=2**40 + 17, backend="cpu"),
        "race": [S.accept_tokens(tokens, target, target[:, :2] + 1.0, 1.0, generator=s,
                                 backend="cpu") for s in range(20)]}
torch.save(outs, sys.argv[1])
"""


def test_vector_philox_draws_the_scalar_stream(tmp_path):
    """The AVX2 / AVX-512 copies compute Philox with their own vector multiplies (cpu/philox.h
    for the race, cpu/normals.h with its transposed stores for the normals: 70,001 elements
    cover whole vectors, chunk ends and a scalar tail); the baseline copy uses the scalar
    philox4x32_10 of ponder/random.h. The words must be the
    same: the accept_tokens race (which uses them through a log only) picks the same tokens,
    and the normals agree to the few ulps that FMA contraction moves them."""
    def run(isa):
        path = tmp_path / f"philox_{isa}.pt"
        env = dict(os.environ, PONDER_CPU_ISA=isa)
        subprocess.run([sys.executable, "-c", _PHILOX_SCRIPT, str(path)], check=True, env=env)
        return torch.load(path)

    base = run("default")
    if base["isa"] != "default":
        pytest.skip("no baseline build here")
    for isa in ("avx2", "avx512"):
        wide = run(isa)
        if wide["isa"] != isa:
            continue
        torch.testing.assert_close(wide["normals"], base["normals"], rtol=1e-5, atol=1e-5)
        for (t1, n1), (t2, n2) in zip(wide["race"], base["race"], strict=True):
            assert torch.equal(n1, n2) and torch.equal(t1, t2), isa


# --------------------------------------------------------------------------------------------
# Symbols: no two copies may share one (csrc/cpu/check_isa_symbols.py; CMakeLists.txt runs it
# after every link, these tests run it on the checker itself and on the objects of this build).
# --------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _symbol_checker():
    path = ROOT / "csrc" / "cpu" / "check_isa_symbols.py"
    spec = importlib.util.spec_from_file_location("check_isa_symbols", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_symbol_check_refuses_a_shared_symbol():
    check = _symbol_checker()
    own = {"default": {"ponder::isa_default::check_buffer(char const*)", "std::a::~a()"},
           "avx2": {"ponder::isa_avx2::check_buffer(char const*)", "std::a::~a()"},
           "avx512": {"ponder::cpu::isa_avx512::ula_step(int)", "std::a::~a()"}}
    assert check.clashes(own) == []
    # A header function outside the copies' namespaces: one name, so one copy for all.
    shared = {isa: names | {"void ponder::lm_head::forward_row<float>(float const*)"}
              for isa, names in own.items()}
    [problem] = check.clashes(shared)
    assert problem.startswith("void ponder::lm_head::forward_row<float>(float const*): defined "
                              "by the copies avx2, avx512, default")
    # Two copies are enough; one copy defining it in several of its objects is fine.
    two = dict(own, avx2=own["avx2"] | {"ponder::f()"}, avx512=own["avx512"] | {"ponder::f()"})
    assert len(check.clashes(two)) == 1
    assert check.clashes(dict(own, avx2=own["avx2"] | {"ponder::f()"})) == []
    # A library template only a wide copy defines could be the one the linker keeps.
    wide_only = dict(own, avx512=own["avx512"] | {"std::vector<float>::_M_default_append(u)"})
    [problem] = check.clashes(wide_only)
    assert "not by the baseline one" in problem
    assert check.isa_of("b/CMakeFiles/ponder_cpu_avx512bf16.dir/csrc/cpu/think.cpp.o") == \
        "avx512bf16"
    assert check.isa_of("b/CMakeFiles/_C.dir/csrc/bind_cpu.cpp.o") is None


def test_isa_copies_share_no_symbol():
    """The objects ponder._C was linked from (a build directory under build/ whose module is
    byte for byte the one imported: CI's `pip install .` and the development builds put them
    there) define no symbol of ours in two instruction-set copies."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("no nm on this machine")
    loaded = ponder._backend.cpu_module().__file__
    builds = [module.parent for module in ROOT.glob("build/*/_C*")
              if filecmp.cmp(module, loaded, shallow=False)]
    objects = [str(o) for build in builds
               for o in build.glob("CMakeFiles/ponder_cpu_*.dir/**/*.o")]
    if not objects:
        pytest.skip(f"no build directory under {ROOT / 'build'} holds the objects of {loaded}")
    assert _symbol_checker().check_objects(objects, nm) == []
