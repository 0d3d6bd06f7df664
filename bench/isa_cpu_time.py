"""The rows of bench/isa_rows.py timed by the CPU time of one thread instead of the wall clock.

    PONDER_CPU_ISA=avx2 python bench/isa_cpu_time.py [--reps 5] [--only think,langevin,accept]

On a machine shared with other jobs the wall clock mostly measures the queue for a core (at a
load average of 10 on 2 cores a process runs about a fifth of the time). The CPU time of the
calling thread, with torch and the kernels on one thread (torch.set_num_threads(1)), counts
only the cycles this process ran, stalls on memory included: a kernel's own cost, comparable
across builds and runs on a loaded machine. Each call is preceded by the 1 GiB copy probe (so
the data starts out of the caches); "% of copy" is the kernel's bytes over its CPU time against
the copy probe's bytes over its CPU time in the same run (one thread each). Medians and minima
over reps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))

from conftest import cpu_model
from isa_rows import COPY_BYTES, collect, print_rows, run


def _cpu_ms(fn) -> float:
    t0 = time.thread_time()
    fn()
    return (time.thread_time() - t0) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default="think,langevin,accept")
    args = ap.parse_args()
    torch.set_num_threads(1)
    fns, nbytes = collect(args.only)
    src = torch.ones(COPY_BYTES // 4)
    dst = torch.zeros_like(src)
    load0 = os.getloadavg()[0]
    times = run(fns, lambda: dst.copy_(src), args.reps, timed=_cpu_ms)
    copy_gbs = 2 * COPY_BYTES / statistics.median(times["copy"]) / 1e6
    from ponder import _C

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{cpu_model()}; ISA {_C.active_isa()}; 1 thread, CPU time; {stamp}; "
          f"load {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"copy {copy_gbs:.1f} GB/s per CPU second (median of {len(times['copy'])})")
    print_rows(fns, times, nbytes, copy_gbs, unit="CPU ms")


if __name__ == "__main__":
    main()
