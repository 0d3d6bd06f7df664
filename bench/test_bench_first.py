"""Benchmark of one FIRST step's loss (forward + backward) against eager full-vocabulary KD.

Issue 16's workload: N = 2048 response tokens, H = 1536, V = 151936 (Qwen2.5-1.5B's head), float32
on the CPU. Inputs: the student's last hidden states ``[N, H]`` and head ``[V, H]`` (the part of
the step that depends on the vocabulary; the transformer body is the same in every row):

  eager-kd       the usual distillation loss: the teacher's logits materialised from its hidden
                 states and head (``[N, V]``, no gradient) and log-softmaxed, the student's
                 ``[N, V]`` logits and log-softmax, ``sum p_t (log p_t - log p_s)``, backward;
  first          ``ponder.ops.lm_head.topk_distill_loss`` on the stored teacher top-5 (c = 0.5):
                 k dot products per token, no vocabulary pass;
  first-other    the same with the other bucket (one pass over the vocabulary, forward and
                 backward, in chunks: the fused scalar loss, blocks of 110 token rows at
                 V = 151936);
  first-other-512  the same in blocks of 512 token rows (``chunk_tokens=512``: fewer passes over
                 the head, a larger logits block). Not in the default rows
                 (``FIRST_BENCH_IMPLS=eager-kd,first,first-other,first-other-512``).

Measured as bench/test_bench_lm_head.py does (a fresh process per row, one warm-up call at a tiny
size, one timed call; peak extra memory = the VmHWM rise minus the gradients returned).

Run:  python bench/test_bench_first.py         (FIRST_BENCH_N=256 for a smaller run)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_bench_lm_head import _status_kib  # noqa: E402  (the same VmHWM reader)

N = int(os.environ.get("FIRST_BENCH_N", "2048"))
HIDDEN, VOCAB, K = 1536, int(os.environ.get("FIRST_BENCH_V", "151936")), 5
ALL_IMPLS = ("eager-kd", "first", "first-other", "first-other-512")
IMPLS = tuple(os.environ.get("FIRST_BENCH_IMPLS", "eager-kd,first,first-other").split(","))
if any(i not in ALL_IMPLS for i in IMPLS):
    raise ValueError(f"FIRST_BENCH_IMPLS: choose from {ALL_IMPLS}, got {IMPLS}")
GROUP = f"first: N={N} H={HIDDEN} V={VOCAB}, fp32, forward + backward"


def _inputs(n: int, vocab: int, width: int):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, width, generator=gen)
    weight = torch.randn(vocab, width, generator=gen) / width**0.5
    t_hidden = torch.randn(n, width, generator=gen)
    t_weight = weight + 0.1 * torch.randn(vocab, width, generator=gen) / width**0.5
    # The stored top-5 (any distinct ids and log-probabilities with mass 0.9 will do).
    ids = torch.stack([torch.randperm(vocab, generator=gen)[:K] for _ in range(n)])
    lps = torch.log(torch.full((n, K), 0.9 / K))
    return hidden, weight, t_hidden, t_weight, ids, lps


def _run(impl: str, hidden, weight, t_hidden, t_weight, ids, lps):
    h = hidden.detach().requires_grad_(True)
    w = weight.detach().requires_grad_(True)
    if impl == "eager-kd":
        with torch.no_grad():
            t_logp = (t_hidden @ t_weight.T).log_softmax(-1)
        s_logp = (h @ w.T).log_softmax(-1)
        loss = (t_logp.exp() * (t_logp - s_logp)).sum()
    else:
        from ponder.ops.lm_head import topk_distill_loss

        chunk = 512 if impl == "first-other-512" else None
        loss = topk_distill_loss(h, w, ids, lps, 0.5, impl.startswith("first-other"),
                                 chunk_tokens=chunk)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def worker(impl: str, n: int) -> dict:
    _run(impl, *_inputs(64, 4096, 64))
    inputs = _inputs(n, VOCAB, HIDDEN)
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")
    before = _status_kib("VmHWM")
    t0 = time.perf_counter()
    out = _run(impl, *inputs)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    grads = (n * HIDDEN + VOCAB * HIDDEN) * 4
    del out
    return {"impl": impl, "n": n, "hidden": HIDDEN, "vocab": VOCAB, "seconds": seconds,
            "peak_extra_bytes": (peak - before) * 1024 - grads,
            "threads": torch.get_num_threads()}


def _measure(impl: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", impl, str(n)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", IMPLS)
def test_first_step(benchmark, impl):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc to measure peak memory")
    result: dict = {}
    benchmark.group = GROUP
    benchmark.pedantic(lambda: result.update(_measure(impl, N)), rounds=1, iterations=1,
                       warmup_rounds=0)
    benchmark.extra_info.update(result, kind="first", device="cpu",
                                timer="time.perf_counter around forward + backward, 1 round")


def _table(rows: list[dict]) -> str:
    eager = next((r for r in rows if r["impl"] == "eager-kd"), None)
    if eager is None:  # no baseline row in this run: times and memory only
        eager = {"seconds": float("nan"), "peak_extra_bytes": float("nan")}
    lines = ["| implementation | time (fwd + bwd) | vs eager KD | peak extra memory | "
             "fraction of eager's |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['seconds']:.2f} s | "
                     f"{eager['seconds'] / r['seconds']:.2f}x | "
                     f"{r['peak_extra_bytes'] / 2**20:,.0f} MiB | "
                     f"{r['peak_extra_bytes'] / eager['peak_extra_bytes']:.1%} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], int(sys.argv[3]))))
        sys.exit(0)
    rows = []
    for impl in IMPLS:
        rows.append(_measure(impl, N))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"N = {N}, H = {HIDDEN}, V = {VOCAB}, float32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    print(_table(rows))
