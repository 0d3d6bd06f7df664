"""Benchmark of the fused LM-head ops (ponder.ops.lm_head) against the eager full-logits path.

The workload of issue 14: N = 2048 tokens, H = 1536, V = 151936 (Qwen2.5-1.5B's head), float32
on the CPU. Each op runs forward + backward (topk_logprobs: forward only, it has no gradient):

  eager          what the original OREO / FIRST code does: ``logits = hidden @ W.T`` ([N, V]),
                 ``log_softmax``, gather (token log-probs), ``(p * (logp - logq)).sum`` with the
                 reference's full log-softmax too (KL), ``topk`` of the log-softmax (teacher),
                 gather the teacher's ids from the full logits and the k-way KL (distillation,
                 without and with the other bucket), then ``.backward()``;
  ponder-cpu     the op on the C++ chunk kernels (default block 1024 x 4096);
  ponder-torch   the same chunked algorithm with the chunk kernels as torch ops.

Each (op, implementation) runs in a fresh Python process, so that memory freed by one run and
kept by the allocator cannot hide another's peak. In that process: inputs are built, one warm-up
call at a small size pays the one-off costs (OpenMP threads, dispatch caches), then one timed
forward + backward at the full size. Peak extra memory: Linux's peak resident set (VmHWM, reset by
writing 5 to /proc/self/clear_refs just before the call) minus the resident set before it, minus
the bytes of the gradients the call returns (grad hidden + grad weight: 0.95 GB here, the same
for every implementation, so "extra" is what the computation itself needs).

  token_logprobs_sum, kl_to_reference_sum: the fused scalar losses (gradient computed in the
                 forward); their eager rows are token_logprobs's and kl_to_reference's.

Run:  python bench/test_bench_lm_head.py [ops...]    (the table; tens of minutes on 2 cores)
      LM_HEAD_BENCH_N=256 python bench/test_bench_lm_head.py   (a quicker, smaller run)
      LM_HEAD_BENCH_IMPLS=eager,ponder-cpu ...        (a subset of the implementations)
      LM_HEAD_BENCH_ROUNDS=2 ...                       (interleaved rounds: fastest time each)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

N = int(os.environ.get("LM_HEAD_BENCH_N", "2048"))
HIDDEN, VOCAB, K = 1536, 151936, 5
OPS = ("token_logprobs", "token_logprobs_sum", "kl_to_reference", "kl_to_reference_sum",
       "topk_logprobs", "topk_distill_loss", "topk_distill_loss_other")
# The fused scalar losses compute exactly what their per-token op's eager row computes (the
# eager rows already sum the per-token values): the table reuses that row when both run.
SAME_EAGER = {"token_logprobs_sum": "token_logprobs", "kl_to_reference_sum": "kl_to_reference"}
IMPLS = tuple(os.environ.get("LM_HEAD_BENCH_IMPLS", "eager,ponder-cpu,ponder-torch").split(","))
GROUP = f"lm_head: N={N} H={HIDDEN} V={VOCAB}, fp32, forward + backward"


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _inputs(n: int, vocab: int, width: int):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(n, width, generator=gen)
    weight = torch.randn(vocab, width, generator=gen) / width**0.5
    ref_weight = weight + 0.01 * torch.randn(vocab, width, generator=gen) / width**0.5
    targets = torch.randint(0, vocab, (n,), generator=gen)
    # A teacher top-k: K distinct ids and their log-probabilities (mass 0.8), any values do.
    ids = torch.stack([torch.randperm(vocab, generator=gen)[:K] for _ in range(min(n, 1))]
                      ).expand(n, K).contiguous()
    lps = torch.log(torch.full((n, K), 0.8 / K))
    return hidden, weight, ref_weight, targets, ids, lps


def _eager(op: str, hidden, weight, ref_weight, targets, ids, lps):
    """The full-logits way, as the original OREO / FIRST code computes these quantities."""
    op = SAME_EAGER.get(op, op)
    logits = hidden @ weight.T  # [N, V]
    if op == "token_logprobs":
        return logits.log_softmax(-1).gather(1, targets.unsqueeze(1)).sum()
    if op == "kl_to_reference":
        with torch.no_grad():
            logq = (hidden @ ref_weight.T).log_softmax(-1)
        logp = logits.log_softmax(-1)
        return (logp.exp() * (logp - logq)).sum()
    if op == "topk_logprobs":
        vals, top = logits.log_softmax(-1).topk(K, dim=-1)
        return top, vals, vals.exp().sum(-1)
    p = torch.log_softmax(lps / 0.5, -1)
    if op == "topk_distill_loss":
        logq = logits.gather(1, ids).log_softmax(-1)
        return (p.exp() * (p - logq)).sum()
    # other bucket: the student's full log-softmax, k ids + 1 - their mass.
    from ponder.ops.lm_head import _teacher_log_buckets, log1mexp

    p = _teacher_log_buckets(lps, 0.5, True)
    logq_ids = logits.log_softmax(-1).gather(1, ids)
    logq = torch.cat([logq_ids, log1mexp(torch.logsumexp(logq_ids, -1, keepdim=True))], -1)
    return (p.exp() * (p - logq)).sum()


def _ponder(op: str, backend: str, hidden, weight, ref_weight, targets, ids, lps):
    from ponder.ops import lm_head as L

    if op == "token_logprobs":
        return L.token_logprobs(hidden, weight, targets, backend=backend).sum()
    if op == "token_logprobs_sum":
        return L.token_logprobs_sum(hidden, weight, targets, backend=backend)
    if op == "kl_to_reference_sum":
        return L.kl_to_reference_sum(hidden, weight, hidden.detach(), ref_weight,
                                     backend=backend)
    if op == "kl_to_reference":
        return L.kl_to_reference(hidden, weight, hidden.detach(), ref_weight,
                                 backend=backend).sum()
    if op == "topk_logprobs":
        return L.topk_logprobs(hidden, weight, K, backend=backend)
    other = op == "topk_distill_loss_other"
    return L.topk_distill_loss(hidden, weight, ids, lps, 0.5, other, backend=backend)


def _run(op: str, impl: str, hidden, weight, ref_weight, targets, ids, lps):
    grad = op != "topk_logprobs"
    h = hidden.detach().requires_grad_(grad)
    w = weight.detach().requires_grad_(grad)
    if impl == "eager":
        out = _eager(op, h, w, ref_weight, targets, ids, lps)
    else:
        out = _ponder(op, impl.removeprefix("ponder-"), h, w, ref_weight, targets, ids, lps)
    if grad:
        out.backward()
        return out.detach(), h.grad, w.grad
    return out


def worker(op: str, impl: str, n: int) -> dict:
    """One measurement in this (fresh) process; returns what the table needs."""
    # One-off costs at a small size: dispatch caches, and the OpenMP thread pools (large enough
    # that the C++ kernels go parallel: their pool is not torch's).
    _run(op, impl, *_inputs(64, 4096, 64))
    inputs = _inputs(n, VOCAB, HIDDEN)
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
        f.write("5")
    before = _status_kib("VmHWM")
    t0 = time.perf_counter()
    out = _run(op, impl, *inputs)
    seconds = time.perf_counter() - t0
    peak = _status_kib("VmHWM")
    grads = 0 if op == "topk_logprobs" else (n * HIDDEN + VOCAB * HIDDEN) * 4
    del out
    return {"op": op, "impl": impl, "n": n, "hidden": HIDDEN, "vocab": VOCAB, "seconds": seconds,
            "peak_bytes": (peak - before) * 1024,
            "peak_extra_bytes": (peak - before) * 1024 - grads,
            "threads": torch.get_num_threads()}


def _measure_in_subprocess(op: str, impl: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", op, impl, str(n)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op", OPS)
def test_lm_head(benchmark, op, impl):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc to measure peak memory")
    result: dict = {}

    def once() -> None:
        result.update(_measure_in_subprocess(op, impl, N))

    benchmark.group = GROUP
    # Minutes per call at the full size on 2 cores: one round; the in-process time of the
    # forward + backward (without the process start and input creation) is extra_info["seconds"].
    benchmark.pedantic(once, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(result, kind="lm_head", device="cpu",
                                timer="time.perf_counter around forward + backward, 1 round")


def _table(results: list[dict]) -> str:
    lines = ["| op | implementation | time (fwd + bwd) | vs eager | peak extra memory | "
             "fraction of eager's |", "|---|---|---|---|---|---|"]
    eager = {r["op"]: r for r in results if r["impl"] == "eager"}
    for r in results:
        e = eager.get(r["op"]) or eager.get(SAME_EAGER.get(r["op"], ""))
        speed = f"{e['seconds'] / r['seconds']:.2f}x" if e else "n/a"
        frac = (f"{r['peak_extra_bytes'] / e['peak_extra_bytes']:.1%}"
                if e and e["peak_extra_bytes"] > 0 else "n/a")
        lines.append(f"| {r['op']} | {r['impl']} | {r['seconds']:.2f} s | {speed} | "
                     f"{r['peak_extra_bytes'] / 2**20:,.0f} MiB | {frac} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        sys.exit(0)
    ops = [a for a in sys.argv[1:] if a in OPS] or list(OPS)
    # Rounds interleave the implementations (eager next to ponder), so that a change of the
    # machine's load hits both; each row keeps its fastest round and its largest peak.
    rounds = int(os.environ.get("LM_HEAD_BENCH_ROUNDS", "1"))
    best: dict[tuple[str, str], dict] = {}
    for _ in range(rounds):
        for op in ops:
            for impl in IMPLS:
                if impl == "eager" and SAME_EAGER.get(op) in ops:
                    continue  # the per-token op's eager row is this one's too
                r = _measure_in_subprocess(op, impl, N)
                print(json.dumps(r), file=sys.stderr, flush=True)
                key = (op, impl)
                if key in best:
                    r = {**r, "seconds": min(r["seconds"], best[key]["seconds"]),
                         "peak_extra_bytes": max(r["peak_extra_bytes"],
                                                 best[key]["peak_extra_bytes"])}
                best[key] = r
    print(f"N = {N}, H = {HIDDEN}, V = {VOCAB}, float32, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {rounds} round(s): fastest time, largest peak")
    print(_table(list(best.values())))
