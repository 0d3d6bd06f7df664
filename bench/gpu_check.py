"""One prepared GPU check (issue 23): build, test and benchmark ponder on an NVIDIA GPU, offline.

    python bench/gpu_check.py OUT_DIR            # or: bash bench/gpu_check.sh OUT_DIR
    python bench/gpu_check.py OUT_DIR --dry-run  # no GPU: check the script itself on the CPU

On a machine with an NVIDIA GPU, CUDA (nvcc), torch, Triton and pybind11 but no network, it

1. builds the extension from this checkout: ``pip install --no-build-isolation --no-deps .``
   (scikit-build-core must be installed), falling back to a plain CMake build copied into
   ``python/ponder`` (then the tests and benchmarks import the checkout);
2. runs ``pytest -m gpu`` (the CUDA and Triton kernels against their references, bf16
   included), going on past failures, and lists every failure;
3. times the GPU benchmarks of issue 23's targets against the copy bandwidth measured in the
   same run: ThinK pruned decode attention (and torch SDPA on the dense cache), accept_tokens,
   the Langevin ULA step and PRM scoring (and lm_head + softmax), on both GPU backends;
4. writes ``OUT_DIR/gpu_check.md`` and ``OUT_DIR/gpu_check.json`` (plus the build and test
   logs) and prints a short table last.

Designed to finish in under 8 minutes on an H100/H200 (each stage has its own time limit; a stage
that runs out is reported, the next one still runs). ``--dry-run`` runs the same code on the CPU
with tiny shapes, the ``cpu`` backend and no build (the test stage only collects the gpu tests),
so the script's own logic can be checked anywhere; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Seconds per stage: build + tests + benchmarks stay under 8 minutes together (460 s at most).
BUILD_LIMIT = 120
TEST_LIMIT = 240
BENCH_LIMIT = 100

TARGETS = {
    "think": "pruned decode >= 80% of copy bandwidth on the bytes read, >= 1.2x faster than SDPA",
    "accept_tokens": ">= 50% of copy bandwidth on reading the logits once",
    "langevin": ">= 80% of copy bandwidth",
    "prm": ">= 100x faster than lm_head + softmax",
}


def run(cmd: list[str], log: Path, limit: float, env: dict | None = None) -> tuple[int, float]:
    """Run ``cmd`` with its output in ``log``; (exit status, seconds). 124 when over the limit."""
    start = time.monotonic()
    with log.open("w") as out:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=limit, env=env, check=False)
            status = proc.returncode
        except subprocess.TimeoutExpired:
            out.write(f"\n[gpu_check] stopped after {limit:.0f} s\n")
            status = 124
        except OSError as exc:
            out.write(f"\n[gpu_check] could not run {cmd[0]}: {exc}\n")
            status = 127
    return status, time.monotonic() - start


def environment() -> dict:
    """Device, driver, CUDA, torch and Triton versions (what a bug report needs)."""
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "host": platform.node()}
    try:
        q = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                           capture_output=True, text=True, timeout=10, check=False)
        env["commit"] = q.stdout.strip() or None
    except OSError:
        env["commit"] = None
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["device"] = props.name
        env["sm"] = f"{props.major}.{props.minor}"
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
    else:
        env["device"] = "none (CPU only)"
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30, check=False)
        env["driver"] = q.stdout.strip().splitlines()[0] if q.stdout.strip() else None
    if shutil.which("nvcc"):
        q = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30, check=False)
        env["nvcc"] = q.stdout.strip().splitlines()[-1] if q.stdout else None
    return env


# --------------------------------------------------------------------------------------------
# 1. Build
# --------------------------------------------------------------------------------------------


def build(out: Path) -> dict:
    """pip install of the checkout; CMake into build/gpu_check and a copy into python/ponder if
    pip fails. Returns what happened and which PYTHONPATH the later stages need."""
    env = dict(os.environ)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 4))  # make is serial
    status, secs = run([sys.executable, "-m", "pip", "install", "--no-build-isolation",
                        "--no-deps", "-v", "."], out / "build_pip.log", BUILD_LIMIT, env)
    if status == 0:
        return {"method": "pip install", "status": 0, "seconds": round(secs, 1),
                "pythonpath": None}
    import pybind11

    bdir = ROOT / "build" / "gpu_check"
    left = max(30.0, BUILD_LIMIT - secs)
    cfg = ["cmake", "-S", ".", "-B", str(bdir), "-DCMAKE_BUILD_TYPE=Release",
           f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
           "-DPONDER_CUDA=ON"]
    if shutil.which("ninja"):
        cfg += ["-G", "Ninja"]
    s1, t1 = run(cfg, out / "build_cmake_configure.log", left)
    s2, t2 = (s1, 0.0)
    if s1 == 0:
        s2, t2 = run(["cmake", "--build", str(bdir), "-j", str(os.cpu_count() or 4)],
                     out / "build_cmake.log", max(30.0, left - t1))
    if s2 == 0:
        for so in list(bdir.glob("_C*.so")) + list(bdir.glob("_cuda*.so")):
            shutil.copy2(so, ROOT / "python" / "ponder" / so.name)
        link = ROOT / "python" / "ponder" / "triton_kernels"
        if not link.exists():
            link.symlink_to(Path("..") / ".." / "triton_kernels")
    return {"method": "cmake (pip install failed: see build_pip.log)", "status": s2,
            "seconds": round(secs + t1 + t2, 1), "pythonpath": str(ROOT / "python")}


# --------------------------------------------------------------------------------------------
# 2. Tests
# --------------------------------------------------------------------------------------------

_RESULT = re.compile(r"^(tests/\S+::\S+(?:\[.*\])?) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


def tests(out: Path, pythonpath: str | None, dry_run: bool) -> dict:
    """``pytest -m gpu`` over tests/, verbose, parsed line by line (so a run stopped by the time
    limit still reports what it ran)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-p", "no:cacheprovider",
           "-o", "console_output_style=classic", "tests/"]
    if dry_run:
        cmd.insert(-1, "--collect-only")
    status, secs = run(cmd, out / "pytest_gpu.log", TEST_LIMIT, env)
    counts: dict[str, int] = {}
    failures = []
    text = (out / "pytest_gpu.log").read_text(errors="replace")
    for line in text.splitlines():
        m = _RESULT.match(line.strip())
        if m:
            counts[m.group(2)] = counts.get(m.group(2), 0) + 1
            if m.group(2) in ("FAILED", "ERROR"):
                failures.append(m.group(1))
    if dry_run:
        counts["collected"] = sum(1 for ln in text.splitlines() if "<Function " in ln)
    return {"status": status, "seconds": round(secs, 1), "counts": counts,
            "failures": failures, "timed_out": status == 124}


# --------------------------------------------------------------------------------------------
# 3. Benchmarks
# --------------------------------------------------------------------------------------------


def timer(device) -> Callable[[Callable[[], object], int], float]:
    """Median seconds of one call: CUDA events on a GPU, with the L2 cache flushed before each
    call (a 16K-token cache is about the size of an H100's L2), perf_counter on the CPU."""
    import torch

    flush = torch.empty(256 << 20, dtype=torch.uint8, device=device) if device.type == "cuda" \
        else None

    def time_it(fn: Callable[[], object], reps: int = 20) -> float:
        for _ in range(3):
            fn()
        samples = []
        for _ in range(reps):
            if device.type == "cuda":
                flush.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                    enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    return time_it


def copy_bandwidth(device, time_it, nbytes: int) -> float:
    """Bytes per second of a device copy, counting the read and the write."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * nbytes / time_it(lambda: dst.copy_(src))


def _row(family: str, name: str, backend: str, secs: float, nbytes: int | None, copy_bw: float,
         **extra) -> dict:
    row = {"family": family, "name": name, "backend": backend, "us": round(secs * 1e6, 2)}
    if nbytes is not None:
        row["bytes"] = nbytes
        row["GBps"] = round(nbytes / secs / 1e9, 1)
        row["of_copy"] = round(nbytes / secs / copy_bw, 3)
    row.update(extra)
    return row


def bench_think(device, time_it, copy_bw, backends, small) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from ponder.ops import think as T

    batch, hq, hkv, dim = 1, 32, 8, 128
    length, recent = (2048, 64) if small else (16384, 128)
    kept = T.kept_channels(dim, 0.4)  # 77
    dtype = torch.float32 if small else torch.bfloat16
    gen = torch.Generator(device=device).manual_seed(0)
    lp = length - recent
    q = torch.randn(batch, hq, 1, dim, device=device, generator=gen).to(dtype)
    kp = torch.randn(batch, hkv, lp, kept, device=device, generator=gen).to(dtype)
    kr = torch.randn(batch, hkv, recent, dim, device=device, generator=gen).to(dtype)
    v = torch.randn(batch, hkv, length, dim, device=device, generator=gen).to(dtype)
    idx = torch.stack([torch.randperm(dim, device=device, generator=gen)[:kept].sort().values
                       for _ in range(batch * hkv)]).view(batch, hkv, kept)
    size = torch.finfo(dtype).bits // 8
    nbytes = (kp.numel() + kr.numel() + v.numel() + q.numel()) * size
    scale = dim ** -0.5
    rows = []
    sdpa_secs = None
    if device.type == "cuda":
        k_dense = torch.randn(batch, hkv, length, dim, device=device, dtype=dtype)
        sdpa_secs = time_it(lambda: F.scaled_dot_product_attention(q, k_dense, v,
                                                                   enable_gqa=True))
        dense_bytes = (2 * k_dense.numel() + q.numel()) * size
        rows.append(_row("think", "sdpa dense cache", "torch", sdpa_secs, dense_bytes, copy_bw))
    for b in backends:
        secs = time_it(lambda b=b: T.pruned_decode_attention_prechecked(
            q, kp, idx, kr, v, scale=scale, starts=None, backend=b))
        full = time_it(lambda b=b: T.pruned_decode_attention(q, kp, idx, kr, v, backend=b))
        extra = {"public_op_us": round(full * 1e6, 2)}
        if sdpa_secs is not None:
            extra["speedup_vs_sdpa"] = round(sdpa_secs / secs, 2)
        row = _row("think", f"pruned decode L={length} lambda=0.4 {str(dtype)[6:]}", b, secs,
                   nbytes, copy_bw, **extra)
        row["verdict"] = _verdict(row.get("of_copy", 0) >= 0.8
                                  and row.get("speedup_vs_sdpa", 0) >= 1.2, device)
        rows.append(row)
    return rows


def bench_accept(device, time_it, copy_bw, backends, small) -> list[dict]:
    import torch
    from ponder.ops import speculative as S

    batch, k, vocab = (4, 8, 4096) if small else (32, 8, 128256)
    gen = torch.Generator(device=device).manual_seed(0)
    target = 2 * torch.randn(batch, k + 1, vocab, device=device, generator=gen)
    draft = target[:, :k] + 0.7 * torch.randn(batch, k, vocab, device=device, generator=gen)
    tokens = torch.multinomial(torch.softmax(draft.reshape(-1, vocab), -1), 1,
                               generator=gen).reshape(batch, k)
    nbytes = (target.numel() + draft.numel()) * 4
    rows = []
    for b in backends:
        secs = time_it(lambda b=b: S.accept_tokens(tokens, target, draft, 1.0, generator=7,
                                                   backend=b))
        row = _row("accept_tokens", f"B={batch} K={k} V={vocab} fp32", b, secs, nbytes, copy_bw)
        row["verdict"] = _verdict(row["of_copy"] >= 0.5, device)
        rows.append(row)
    return rows


def bench_langevin(device, time_it, copy_bw, backends, small) -> list[dict]:
    import torch
    from ponder.ops import langevin as L

    n = 1_000_000 if small else 100_000_000
    x = torch.randn(n, device=device)
    g = torch.randn(n, device=device)
    nbytes = 3 * n * 4  # x and grad read, out written
    rows = []
    for b in backends:
        secs = time_it(lambda b=b: L.ula_step(x, g, 1e-3, generator=5, backend=b), reps=10)
        row = _row("langevin", f"ula_step n={n:.0e} fp32", b, secs, nbytes, copy_bw)
        row["verdict"] = _verdict(row["of_copy"] >= 0.8, device)
        rows.append(row)
    return rows


def bench_prm(device, time_it, copy_bw, backends, small) -> list[dict]:
    import torch
    from ponder.ops import prm

    batch, length, width, vocab, steps = (1, 256, 64, 1000, 8) if small else (4, 2048, 1536,
                                                                               151936, 32)
    dtype = torch.float32 if small else torch.bfloat16
    gen = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(batch, length, width, device=device, generator=gen).to(dtype)
    lm_head = (torch.randn(vocab, width, device=device, generator=gen) / width ** 0.5).to(dtype)
    pos = torch.linspace(10, length - 1, steps, device=device).long()
    step_index = pos.expand(batch, steps).contiguous()
    head = lm_head[[0, 1]].float()
    base = time_it(lambda: torch.softmax((hidden @ lm_head.T).float(), -1)[..., [0, 1]], reps=5)
    rows = [_row("prm", f"lm_head + softmax B={batch} L={length} H={width} V={vocab}", "torch",
                 base, None, copy_bw)]
    for b in backends:
        secs = time_it(lambda b=b: prm.score_steps(hidden, step_index, head, backend=b))
        row = _row("prm", f"score_steps B={batch} L={length} S={steps}", b, secs, None, copy_bw,
                   speedup_vs_lm_head=round(base / secs, 1))
        row["verdict"] = _verdict(row["speedup_vs_lm_head"] >= 100, device)
        rows.append(row)
    return rows


def _verdict(ok: bool, device) -> str:
    if device.type != "cuda":
        return "dry run"
    return "meets target" if ok else "misses target"


def benchmarks(dry_run: bool) -> dict:
    import ponder
    import torch

    device = torch.device("cpu" if dry_run else "cuda")
    time_it = timer(device)
    status = ponder.available_backends()
    if dry_run:
        backends = ["cpu"]
    else:
        backends = [b for b in ("cuda", "triton")
                    if status[b].available and "cuda" in status[b].devices]
    copy_bw = copy_bandwidth(device, time_it, (64 << 20) if dry_run else (1 << 30))
    result = {"device": str(device), "backends": backends,
              "copy_GBps": round(copy_bw / 1e9, 1), "rows": [], "errors": {}}
    for family, fn in [("think", bench_think), ("accept_tokens", bench_accept),
                       ("langevin", bench_langevin), ("prm", bench_prm)]:
        start = time.monotonic()
        try:
            result["rows"] += fn(device, time_it, copy_bw, backends, dry_run)
        except Exception as exc:  # noqa: BLE001 - one family's failure must not hide the others
            result["errors"][family] = f"{type(exc).__name__}: {exc}"[:2000]
        result.setdefault("seconds", {})[family] = round(time.monotonic() - start, 1)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def bench_stage(out: Path, pythonpath: str | None, dry_run: bool) -> dict:
    """The benchmarks in a child process (the freshly built ponder, a clean CUDA context)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    result_file = out / "bench_raw.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), str(out), "--bench-child"]
    if dry_run:
        cmd.append("--dry-run")
    status, secs = run(cmd, out / "bench.log", BENCH_LIMIT, env)
    if result_file.exists():
        result = json.loads(result_file.read_text())
    else:
        result = {"rows": [], "errors": {"all": f"the benchmark process ended with status "
                                                 f"{status}: see bench.log"}}
    result["status"], result["wall_seconds"] = status, round(secs, 1)
    return result


# --------------------------------------------------------------------------------------------
# 4. Report
# --------------------------------------------------------------------------------------------


def report(out: Path, summary: dict) -> str:
    env, b, t, bench = summary["environment"], summary["build"], summary["tests"], summary["bench"]
    lines = [f"# GPU check ({summary['date']}{', DRY RUN: numbers mean nothing' if summary['dry_run'] else ''})",
             "", "| | |", "|---|---|"]
    for key in ("device", "sm", "memory_gib", "driver", "nvcc", "torch", "torch_cuda", "triton",
                "python", "commit"):
        lines.append(f"| {key} | {env.get(key)} |")
    lines += ["", f"Build: {b.get('method')}, status {b.get('status')}, {b.get('seconds')} s.",
              "", (f"Tests (`pytest -m gpu`): {t.get('counts')}, status {t.get('status')}, "
                   f"{t.get('seconds')} s"
                   f"{' (stopped by the time limit)' if t.get('timed_out') else ''}.")]
    for name in t.get("failures", []):
        lines.append(f"- FAILED {name}")
    lines += ["", (f"Benchmarks on {bench.get('device')}: copy bandwidth "
                   f"{bench.get('copy_GBps')} GB/s (read + write), measured in the same run. "
                   "Times are medians of CUDA-event timings with the L2 cache flushed before "
                   "each call; think uses the prechecked entry point (the public op's time is in "
                   "the JSON), the others the public op (its argument checks included)."), "",
              "| family | case | backend | us | GB/s | of copy | vs baseline | verdict |",
              "|---|---|---|---:|---:|---:|---:|---|"]
    for r in bench.get("rows", []):
        vs = r.get("speedup_vs_sdpa", r.get("speedup_vs_lm_head", ""))
        lines.append(f"| {r['family']} | {r['name']} | {r['backend']} | {r['us']} | "
                     f"{r.get('GBps', '')} | {r.get('of_copy', '')} | {vs} | "
                     f"{r.get('verdict', '')} |")
    for fam, err in bench.get("errors", {}).items():
        lines.append(f"\nBenchmark error ({fam}): `{err}`")
    lines += ["", "Targets (issue 23):"] + [f"- {k}: {v}" for k, v in TARGETS.items()]
    text = "\n".join(lines) + "\n"
    (out / "gpu_check.md").write_text(text)
    return text


def short_table(summary: dict) -> str:
    t, bench = summary["tests"], summary["bench"]
    rows = [f"build: {summary['build'].get('method')} -> status {summary['build'].get('status')}",
            f"tests: {t.get('counts')}{' TIMED OUT' if t.get('timed_out') else ''}",
            f"copy bandwidth: {bench.get('copy_GBps')} GB/s"]
    for r in bench.get("rows", []):
        vs = r.get("speedup_vs_sdpa", r.get("speedup_vs_lm_head"))
        rows.append(f"{r['family']:<14} {r['backend']:<7} {r['us']:>10} us  "
                    f"of_copy={r.get('of_copy', '-')!s:<6} vs={vs!s:<6} {r.get('verdict', '')}")
    for fam, err in bench.get("errors", {}).items():
        rows.append(f"{fam}: ERROR {err[:120]}")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the report, the JSON and the logs")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU: no build, collect the gpu tests, benchmark tiny shapes on "
                             "the CPU backend (checks the script, not ponder)")
    parser.add_argument("--no-build", action="store_true", help="use ponder as installed")
    parser.add_argument("--bench-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.bench_child:
        (args.out / "bench_raw.json").write_text(json.dumps(benchmarks(args.dry_run), indent=1))
        return 0
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; use --dry-run to check the script on the CPU",
              file=sys.stderr)
        return 2
    start = time.monotonic()
    summary: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "dry_run": args.dry_run, "environment": environment()}
    if args.dry_run or args.no_build:
        summary["build"] = {"method": "none (dry run)" if args.dry_run else "none (--no-build)",
                            "status": 0, "pythonpath": str(ROOT / "python")}
        if args.no_build and not args.dry_run:
            summary["build"]["pythonpath"] = None
    else:
        summary["build"] = build(args.out)
    pythonpath = summary["build"].get("pythonpath")
    summary["tests"] = tests(args.out, pythonpath, args.dry_run)
    summary["bench"] = bench_stage(args.out, pythonpath, args.dry_run)
    summary["seconds"] = round(time.monotonic() - start, 1)
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    report(args.out, summary)
    print(f"gpu_check: {summary['seconds']} s; report in {args.out / 'gpu_check.md'}")
    print(short_table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
