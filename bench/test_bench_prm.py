"""Benchmark of PRM step scoring (ponder.ops.prm.score_steps) against the full-logits path.

The workload of the PRM target (docs/benchmarks.md): L = 2048 positions, hidden H = 1536,
vocabulary V = 151936, 20 steps per sequence, float32, batch B = 1 (the largest for which the
full-logits path stays within ~4 GB on this machine: its [B, L, V] logits and their softmax are
2 x 1.24 GB per row, next to the 0.93 GB lm_head).

Implementations (``extra_info["impl"]``):
  full-logits    what a PRM does without ponder: lm_head over all positions (F.linear), softmax
                 over the vocabulary, gather the two label tokens' probabilities at the step
                 positions, score = p+ / (p+ + p-) (equal to score_steps: tests/ops/test_prm.py);
  ponder-cpu     score_steps on the C++ backend, from the 2 label rows of lm_head;
  ponder-torch   score_steps' plain-torch reference backend (gather rows + matmul).

Peak extra memory (``extra_info["peak_extra_bytes"]``): Linux's peak resident set size (VmHWM in
/proc/self/status) after one call, minus VmHWM read right after resetting it (by writing 5 to
/proc/self/clear_refs) just before the call. ponder's ops are measured after one warm-up call, so
that one-off costs such as OpenMP thread stacks are not counted. tracemalloc does not see torch's
allocations and torch keeps no allocator statistics for CPU tensors; RSS sees every page the call
touches, at 4 KiB granularity.

Run:  python bench/test_bench_prm.py   (runs this file under pytest-benchmark, prints the table)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest
import torch
from ponder.ops import prm

BATCH, LENGTH, HIDDEN, VOCAB, STEPS = 1, 2048, 1536, 151936, 20
POS_TOKEN, NEG_TOKEN = 10, 20
CPU = torch.device("cpu")
GROUP = "prm: L=2048 H=1536 V=151936 20 steps, fp32"


@pytest.fixture(scope="module")
def workload():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(BATCH, LENGTH, HIDDEN, generator=gen)
    lm_head = torch.randn(VOCAB, HIDDEN, generator=gen) / HIDDEN**0.5
    # 20 steps spread over each sequence, like tags after each reasoning step.
    rows = [sorted(torch.randperm(LENGTH, generator=gen)[:STEPS].tolist()) for _ in range(BATCH)]
    step_index = prm.pad_step_index(rows)
    return hidden, lm_head, step_index


def full_logits_scores(hidden, lm_head, step_index):
    """The PRM step scores the usual way: all logits, full softmax, then gather."""
    logits = torch.nn.functional.linear(hidden, lm_head)  # [B, L, V]
    probs = torch.softmax(logits, dim=-1)  # [B, L, V]
    del logits
    b_idx = torch.arange(step_index.shape[0]).unsqueeze(1).expand_as(step_index)
    picked = probs[b_idx, step_index.clamp(min=0)][..., [POS_TOKEN, NEG_TOKEN]]  # [B, S, 2]
    scores = picked[..., 0] / (picked[..., 0] + picked[..., 1])
    return scores.where(step_index >= 0, torch.nan)


@pytest.mark.parametrize("impl", ["full-logits", "ponder-cpu", "ponder-torch"])
def test_prm_score_steps(benchmark, measure, peak_extra_bytes, workload, impl):
    hidden, lm_head, step_index = workload
    head = lm_head[[POS_TOKEN, NEG_TOKEN]].contiguous()
    if impl == "full-logits":
        def fn():
            return full_logits_scores(hidden, lm_head, step_index)
    else:
        backend = impl.removeprefix("ponder-")

        def fn():
            return prm.score_steps(hidden, step_index, head, backend=backend)

    if impl != "full-logits":
        fn()  # one-off costs (OpenMP thread stacks, dispatch caches) are not the op's memory
    extra = peak_extra_bytes(fn)
    info = {"kind": "prm", "op": "score_steps", "impl": impl, "batch": BATCH, "length": LENGTH,
                "hidden": HIDDEN, "vocab": VOCAB, "steps": STEPS, "dtype": "float32",
                "peak_extra_bytes": extra}
    if impl == "full-logits":
        # ~1 TFLOP per call on 2 cores: a few rounds, no pytest-benchmark calibration.
        benchmark.group = GROUP
        benchmark.extra_info.update(info, device="cpu", threads=torch.get_num_threads(),
                                    timer="pytest-benchmark wall clock (3 rounds)")
        benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)
    else:
        measure(fn, device=CPU, group=GROUP, **info)


BIG_BATCH = 64  # best-of-64 candidates scored in one call
COPY_BYTES = 256 * 2**20


@pytest.mark.parametrize("impl", ["ponder-cpu", "ponder-torch"])
def test_prm_score_steps_best_of_64(measure, impl):
    """Throughput at a best-of-64 batch in bfloat16 (the full-logits path would need 64 x 2.5 GB
    here): bytes = the step rows read + the outputs written, against a tensor copy's bandwidth
    measured in the same run (test_copy_bandwidth)."""
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(BIG_BATCH, LENGTH, HIDDEN, generator=gen, dtype=torch.bfloat16)
    head = (torch.randn(2, HIDDEN, generator=gen) / HIDDEN**0.5).to(torch.bfloat16)
    rows = [sorted(torch.randperm(LENGTH, generator=gen)[:STEPS].tolist())
            for _ in range(BIG_BATCH)]
    step_index = prm.pad_step_index(rows)
    backend = impl.removeprefix("ponder-")
    moved = BIG_BATCH * STEPS * (HIDDEN * 2 + 8 + 4) + BIG_BATCH * (4 * 4 + 8)

    def fn():
        return prm.score_steps(hidden, step_index, head, backend=backend)

    measure(fn, device=CPU, group=f"prm best-of-{BIG_BATCH}, bf16", kind="prm_batch",
            op="score_steps", impl=impl, batch=BIG_BATCH, length=LENGTH, hidden=HIDDEN,
            steps=STEPS, dtype="bfloat16", bytes=moved)


def test_copy_bandwidth(measure):
    src = torch.ones(COPY_BYTES // 4)
    dst = torch.empty_like(src)
    measure(lambda: dst.copy_(src), device=CPU, group="copy", kind="copy", impl="torch-copy",
            bytes=2 * COPY_BYTES)


def _table(json_path: str) -> str:
    with open(json_path, encoding="utf-8") as f:
        data = json.load(f)
    rows = {b["extra_info"]["impl"]: b for b in data["benchmarks"]
            if b["extra_info"]["kind"] == "prm"}
    full = rows.get("full-logits")
    lines = [
        ("| implementation | time (min) | speed-up vs full-logits | peak extra memory | "
        "fraction of full-logits' extra memory |"),
        "|---|---|---|---|---|",
    ]
    for impl, b in rows.items():
        t = b["stats"]["min"]
        mem = b["extra_info"]["peak_extra_bytes"]
        speed = full["stats"]["min"] / t if full else float("nan")
        full_mem = full["extra_info"]["peak_extra_bytes"] if full else None
        frac = f"{mem / full_mem:.2e}" if full_mem and mem is not None else "n/a"
        mem_s = "n/a" if mem is None else f"{mem / 2**10:,.0f} KiB"
        lines.append(f"| {impl} | {t * 1e3:.3f} ms | {speed:,.0f}x | {mem_s} | {frac} |")
    copy = [b for b in data["benchmarks"] if b["extra_info"]["kind"] == "copy"]
    copy_bw = copy[0]["extra_info"]["bytes"] / copy[0]["stats"]["min"] if copy else None
    lines += ["", f"Best-of-{BIG_BATCH} batch, bfloat16 (bytes = step rows read + outputs):", "",
              "| implementation | time (min) | GB/s | fraction of copy bandwidth |",
              "|---|---|---|---|"]
    for b in data["benchmarks"]:
        if b["extra_info"]["kind"] != "prm_batch":
            continue
        t = b["stats"]["min"]
        bw = b["extra_info"]["bytes"] / t
        frac = f"{bw / copy_bw:.1%}" if copy_bw else "n/a"
        lines.append(f"| {b['extra_info']['impl']} | {t * 1e3:.3f} ms | {bw / 1e9:.2f} | {frac} |")
    if copy_bw:
        lines.append(f"| copy ({COPY_BYTES // 2**20} MiB fp32, read + write) | "
                     f"{copy[0]['stats']['min'] * 1e3:.2f} ms | {copy_bw / 1e9:.2f} | 100% |")
    m = data["machine_info"]
    lines.append("")
    lines.append(f"{m.get('cpu_model')}, {m.get('cores')} cores, torch threads "
                 f"{m.get('torch_threads')}, torch {m.get('torch_version')}; other processes' CPU "
                 f"share during the run: {m.get('others_cpu_share')}")
    return "\n".join(lines)


if __name__ == "__main__":
    out = os.path.join(tempfile.mkdtemp(), "prm.json")
    rc = subprocess.call([sys.executable, "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider",
                          "--benchmark-only", f"--benchmark-json={out}", *sys.argv[1:]])
    if rc == 0:
        print(_table(out))
    sys.exit(rc)
