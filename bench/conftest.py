"""Shared machinery of the pytest-benchmark suites in bench/ (run them with `python bench/run.py`).

Every benchmark records what it measured in ``benchmark.extra_info`` (kind, op, implementation,
shapes, dtype, bytes moved per call, thread count, device), so bench/run.py builds its tables from
the JSON alone and never parses test names.

CPU timings are pytest-benchmark's wall clock, after two warm-up calls. CUDA timings are
``triton.testing.do_bench`` (CUDA events, L2 flushed before each call, median), stored as
``extra_info["device_time_s"]``; the pytest-benchmark entry of a CUDA test times the same call with
a synchronize, for the record only.
"""

from __future__ import annotations

import gc
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import ponder
import pytest
import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to platform.processor())."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_isa() -> str:
    """The instruction set of ponder's CPU kernels in this process: the build the dispatcher
    picked (``_C.active_isa()``: default, avx2, avx512, avx512bf16) and whether PONDER_CPU_ISA
    capped it, e.g. "avx2 (PONDER_CPU_ISA=avx2)" or "avx512bf16 (the widest this CPU runs)"."""
    try:
        isa = ponder._backend.cpu_module().active_isa()
    except ponder.BackendUnavailableError:  # no _C built: the tables say so, the suite runs on
        return "unavailable (ponder._C not built)"
    cap = os.environ.get("PONDER_CPU_ISA")
    return f"{isa} (PONDER_CPU_ISA={cap})" if cap else f"{isa} (the widest this CPU runs)"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cache_sizes() -> str:
    """Data/unified cache sizes per level, from sysfs (e.g. "L2 2048K, L3 491520K")."""
    root = "/sys/devices/system/cpu/cpu0/cache"
    sizes = []
    try:
        for entry in sorted(os.listdir(root)):
            if not entry.startswith("index"):
                continue

            def read(name: str, entry: str = entry) -> str:
                with open(os.path.join(root, entry, name), encoding="utf-8") as f:
                    return f.read().strip()

            if read("type") != "Instruction":
                sizes.append(f"L{read('level')} {read('size')}")
    except OSError:
        return "unknown"
    return ", ".join(sizes)


def gpu_name() -> str | None:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


class CpuShare:
    """The share of the machine's CPU time that *other* processes used between start and
    ``others()``: (all busy time from /proc/stat - this process's CPU time) / (wall x cores).
    On a shared machine this says whether a timing was disturbed. None where /proc is missing."""

    def __init__(self) -> None:
        self._start = self._snapshot()

    @staticmethod
    def _snapshot() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="utf-8") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        own = os.times()
        return time.perf_counter(), busy, own.user + own.system

    def others(self) -> float | None:
        end = self._snapshot()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall, busy, own = (e - s for e, s in zip(end, self._start))
        return round(max(0.0, busy - own) / (wall * (os.cpu_count() or 1)), 3)


_START = pytest.StashKey[tuple]()
IDLE_BELOW = 0.05  # other processes' CPU share under which the machine counts as idle
# Seconds this session may still spend waiting for an idle CPU (bench/run.py --wait-idle).
_WAIT_BUDGET = float(os.environ.get("PONDER_BENCH_WAIT_IDLE") or 0.0)
_wait_left = [_WAIT_BUDGET]


def wait_for_idle_cpu() -> None:
    """Wait until other processes leave the CPU idle, out of the session's waiting budget: on a
    2-core machine one busy process slows torch's OpenMP threads many times over."""
    while _wait_left[0] > 0:
        share = CpuShare()
        time.sleep(0.5)
        others = share.others()
        _wait_left[0] -= 0.5
        if others is None or others <= IDLE_BELOW:
            return


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def pytest_sessionstart(session: pytest.Session) -> None:
    # Other processes on a shared machine distort timings: the load average says how busy it was.
    session.config.stash[_START] = (time.perf_counter(), _loadavg(), CpuShare())


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """Facts bench/run.py prints above its tables (the JSON's ``machine_info``)."""
    start, load_start, share = config.stash.get(_START, (None, None, None))
    machine_info["suite_seconds"] = None if start is None else round(time.perf_counter() - start, 1)
    machine_info["others_cpu_share"] = None if share is None else share.others()
    machine_info["waited_for_idle_s"] = round(_WAIT_BUDGET - max(_wait_left[0], 0.0), 1)
    machine_info["loadavg_start"] = load_start
    machine_info["loadavg_end"] = _loadavg()
    machine_info["cpu_model"] = cpu_model()
    machine_info["cpu_isa"] = cpu_isa()
    machine_info["cores"] = usable_cores()
    machine_info["caches"] = cache_sizes()
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["torch_version"] = torch.__version__
    machine_info["ponder_version"] = ponder.__version__
    machine_info["ponder_backends"] = {
        name: status.available for name, status in ponder.available_backends().items()
    }
    machine_info["gpu"] = gpu_name()


def _device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = cpu_model()
    return info


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _peak_extra_bytes(fn: Callable[[], object]) -> int | None:
    """Peak RSS during one call of ``fn`` minus RSS before it (None where /proc is missing).

    Linux's peak resident set size (VmHWM) is reset to the current RSS by writing 5 to
    /proc/self/clear_refs; the baseline is VmHWM read right after the reset (the same counter as
    the peak). 4 KiB granularity; it sees every page torch touches, which tracemalloc does not.
    """
    try:
        gc.collect()
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
        before = _status_kib("VmHWM")
    except OSError:
        return None
    out = fn()
    peak = _status_kib("VmHWM")
    del out
    return (peak - before) * 1024


@pytest.fixture
def peak_extra_bytes() -> Callable[[Callable[[], object]], int | None]:
    """``peak_extra_bytes(fn)``: the extra resident memory one call of ``fn`` needs, in bytes."""
    return _peak_extra_bytes


@pytest.fixture
def measure(benchmark) -> Callable[..., None]:
    """``measure(fn, device=..., group=..., **extra_info)`` times ``fn()`` and records the facts.

    ``extra_info`` should say at least ``kind`` and ``impl``; ``bytes`` (per call) where a
    bandwidth makes sense.
    """

    def run(fn: Callable[[], object], *, device: torch.device, group: str, **extra: Any) -> None:
        benchmark.group = group
        benchmark.extra_info.update(_device_info(device))
        benchmark.extra_info.update(extra)
        wait_for_idle_cpu()
        share = CpuShare()
        if device.type == "cuda":
            from triton.testing import do_bench

            ms = do_bench(fn, warmup=25, rep=200, return_mode="median")
            benchmark.extra_info["device_time_s"] = ms * 1e-3
            benchmark.extra_info["timer"] = "triton.testing.do_bench (median, L2 flushed)"

            def synced() -> None:
                fn()
                torch.cuda.synchronize(device)

            benchmark.pedantic(synced, rounds=20, warmup_rounds=2)
        else:
            # Warm up: the first calls pay one-off costs (op dispatch caches, thread pools).
            fn()
            fn()
            benchmark.extra_info["timer"] = "pytest-benchmark wall clock"
            benchmark(fn)
        benchmark.extra_info["others_cpu_share"] = share.others()

    return run
