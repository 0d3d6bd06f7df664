"""The rows of issue 22's table, timed in one process against the copy bandwidth of the same run.

    PONDER_CPU_ISA=avx2 python bench/isa_rows.py [--reps 7] [--only think,langevin,accept]

Each rep times every kernel once, interleaved, each call preceded by the 1 GiB copy probe of
bench/test_bench_think.py (a 512 MiB fp32 ``dst.copy_(src)``) so every call starts with its data
out of the caches; a rep's figure for a kernel is its time in that rep, and the table gives the
median over reps (and the minimum). "% of copy" is the kernel's bytes (as the pytest-benchmark
suites count them) over its median time, divided by the median copy bandwidth of the same run.
The baselines (SDPA for ThinK, eager torch for the others) are timed the same way. Also rows
with ``noise=`` given (the explicit-noise path: the same arithmetic minus the generator, plus one
more input read) and a plain-torch memory floor (``torch.add(x, g, alpha=h, out=o)``, the same
bytes as ula_step with no math) to separate memory from arithmetic.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))

from conftest import cpu_model  # noqa: E402
from ponder.ops import langevin, speculative, think  # noqa: E402

COPY_BYTES = 512 * 2**20


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def run(fns: dict, copy, reps: int, timed=None) -> dict:
    """``{row: [ms per rep]}`` and ``"copy"``: each call preceded by the copy probe (so the data
    starts out of the caches); one warm-up rep dropped. ``timed(fn) -> ms`` (wall by default)."""
    timed = timed or _timed
    times = {name: [] for name in [*fns, "copy"]}
    for rep in range(reps + 1):
        for name, fn in fns.items():
            c = timed(copy)
            t = timed(fn)
            if rep >= 1:
                times["copy"].append(c)
                times[name].append(t)
    return times


def think_fns(fns, nbytes):
    from test_bench_think import make_cache, ponder_bytes

    for size, length, dtype in (("32K", 32768, torch.float32), ("4K", 4096, torch.float32),
                                ("32K", 32768, torch.bfloat16)):
        q, k, v, kp, idx, kr = make_cache(length, dtype, 0.4)
        tag = f"think L={size} {str(dtype)[6:]} lam 0.4"
        fns[tag] = (lambda q=q, kp=kp, idx=idx, kr=kr, v=v:
                    think.pruned_decode_attention(q, kp, idx, kr, v, backend="cpu"))
        nbytes[tag] = ponder_bytes(q, kp, kr, v)
        fns[tag + " | SDPA"] = (lambda q=q, k=k, v=v:
                                F.scaled_dot_product_attention(q, k, v, enable_gqa=True))


def langevin_fns(fns, nbytes):
    n = 10**7
    gen = torch.Generator().manual_seed(0)
    x, g, v = (torch.randn(10**5, 100, generator=gen) for _ in range(3))
    noise2 = torch.randn(2, 10**5, 100, generator=gen)
    out = torch.empty_like(x)
    h, gamma = 0.01, 1.0
    kw = {"generator": 1234, "backend": "cpu"}
    fns["ula_step 1e7"] = lambda: langevin.ula_step(x, g, h, **kw)
    fns["mala_propose 1e7"] = lambda: langevin.mala_propose(x, g, h, **kw)
    fns["uld_step 1e7"] = lambda: langevin.uld_step(x, v, g, h, gamma, **kw)
    fns["ula_step 1e7 noise="] = lambda: langevin.ula_step(x, g, h, noise=noise2[0], backend="cpu")
    fns["floor: torch.add 1e7"] = lambda: torch.add(x, g, alpha=h, out=out)
    fns["ula_step 1e7 | eager"] = lambda: x + h * g + (2 * h) ** 0.5 * torch.randn_like(x)
    for name, (ins, outs) in {"ula_step 1e7": (2, 1), "mala_propose 1e7": (2, 1),
                              "uld_step 1e7": (3, 2), "floor: torch.add 1e7": (2, 1)}.items():
        nbytes[name] = (ins + outs) * n * 4
    nbytes["ula_step 1e7 noise="] = 4 * n * 4


def accept_fns(fns, nbytes):
    from test_bench_speculative import B, K, V, TEMPERATURE, _bytes_read, eager_accept

    gen = torch.Generator().manual_seed(0)
    target = 3.0 * torch.randn(B, K + 1, V, generator=gen)
    draft = target[:, :K] + 0.5 * torch.randn(B, K, V, generator=gen)
    probs = torch.softmax(draft.reshape(-1, V) / TEMPERATURE, -1)
    tokens = torch.multinomial(probs, 1, generator=gen).reshape(B, K)
    del probs
    _, n = speculative.accept_tokens(tokens, target, draft, TEMPERATURE, generator=1234,
                                     backend="cpu")
    fns["accept_tokens B32 K8 V128256"] = lambda: speculative.accept_tokens(
        tokens, target, draft, TEMPERATURE, generator=1234, backend="cpu")
    nbytes["accept_tokens B32 K8 V128256"] = _bytes_read(n)
    fns["accept_tokens B32 K8 V128256 | eager"] = lambda: eager_accept(tokens, target, draft,
                                                                       TEMPERATURE)


def collect(only: str) -> tuple[dict, dict]:
    """The rows named in ``only`` (comma-separated: think, langevin, accept): ``(fns, nbytes)``."""
    fns, nbytes = {}, {}
    parts = only.split(",")
    for part, add in (("think", think_fns), ("langevin", langevin_fns), ("accept", accept_fns)):
        if part in parts:
            add(fns, nbytes)
    return fns, nbytes


def print_rows(fns: dict, times: dict, nbytes: dict, copy_gbs: float, unit: str = "ms") -> None:
    """The markdown table: median and min time, the ratio to a row's `` | baseline``, GB/s and
    the share of the copy bandwidth."""
    print(f"| row | median {unit} | min {unit} | vs baseline | GB/s | % of copy |")
    print("|---|---|---|---|---|---|")
    for name in fns:
        if " | " in name:
            continue
        med, mn = statistics.median(times[name]), min(times[name])
        base = [b for b in fns if b.startswith(name + " | ")]
        ratio = ""
        if base:
            ratio = f"{statistics.median(times[base[0]]) / med:.2f}x {base[0].split(' | ')[1]}"
        gbs = nbytes.get(name, 0) / med / 1e6
        print(f"| {name} | {med:.2f} | {mn:.2f} | {ratio} | {gbs:.1f} | "
              f"{100 * gbs / copy_gbs:.0f}% |")
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--only", default="think,langevin,accept")
    args = ap.parse_args()
    fns, nbytes = collect(args.only)
    src = torch.ones(COPY_BYTES // 4)
    dst = torch.zeros_like(src)
    load0 = os.getloadavg()[0]
    times = run(fns, lambda: dst.copy_(src), args.reps)
    copy_gbs = 2 * COPY_BYTES / statistics.median(times["copy"]) / 1e6
    from ponder import _C

    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{cpu_model()}; ISA {_C.active_isa()}; "
          f"torch threads {torch.get_num_threads()}; {stamp}; "
          f"load {load0:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"copy {copy_gbs:.1f} GB/s (median of {len(times['copy'])})")
    print_rows(fns, times, nbytes, copy_gbs)


if __name__ == "__main__":
    main()
