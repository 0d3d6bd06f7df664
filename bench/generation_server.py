"""Throughput of an ER-PRM collection through the server backend against the in-process one.

    python bench/generation_server.py                     # 12 solutions, n=4, 32 new tokens
    python bench/generation_server.py --solutions 24 --concurrency 1 4 16 --repeats 2

The same collection (``ponder.rewards.collect.collect_rollouts`` on toy problems, the toy draft
model as policy, temperature 1) runs once in-process (``TransformersGenerator``) and through
``OpenAIGenerator`` against ``transformers serve`` on 127.0.0.1 with the same model, at each
concurrency. Both sides get one CPU thread (``torch.set_num_threads(1)`` here, ``OMP_NUM_THREADS=1``
for the server), which suits a model this small and keeps a shared machine from oversubscribing.
The figure is about overheads (HTTP, JSON, one request per completion, the server's per-request
work): ``transformers serve`` generates one request at a time, so concurrency overlaps only the
transport with the generation; real speed comes from a batching server (vLLM, SGLang) on a GPU.

Prints a markdown table (the best of ``--repeats`` runs per row) and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from ponder.generation import TransformersGenerator
from ponder.openai_generation import OpenAIGenerator, transformers_server
from ponder.rewards.collect import collect_rollouts
from ponder.toy import ToyVerifier, load_toy_model, make_problems
from ponder.toy.models import default_weights_dir

# transformers serve samples only when asked through its own field (see docs/generation.md)
SAMPLE = {"generation_config": json.dumps({"do_sample": True, "top_k": 0})}


def run(records, gen, options) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        stats = collect_rollouts(records, gen, ToyVerifier(), Path(tmp) / "er.jsonl", **options)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "prefixes": stats.prefixes_sampled,
            "completions": stats.completions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--solutions", type=int, default=12)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default="bench/results/generation_server.json")
    args = parser.parse_args()

    torch.set_num_threads(1)
    problems = make_problems(args.solutions, seed=24, min_steps=2, max_steps=3)
    records = [{"question": p.question, "solution": p.target} for p in problems]
    options = {"n": args.n, "max_new_tokens": args.max_new_tokens, "temperature": 1.0,
               "seed": 0, "progress": False}
    model, tok = load_toy_model("draft")
    rows = []

    def record(name: str, results: list[dict], requests: int | None = None) -> None:
        best = min(results, key=lambda r: r["seconds"])
        rows.append({"backend": name, **best, "requests": requests,
                     "prefixes_per_s": best["prefixes"] / best["seconds"],
                     "completions_per_s": best["completions"] / best["seconds"]})
        print(f"{name}: {best['seconds']:.2f} s", flush=True)

    local = TransformersGenerator(model, tok, batch_size=64)
    record("in-process (TransformersGenerator)",
           [run(records, local, options) for _ in range(args.repeats)])
    with transformers_server(str(default_weights_dir() / "draft"), threads=1) as url:
        for c in args.concurrency:
            with OpenAIGenerator(url, concurrency=c, send_stop=False, extra_body=SAMPLE) as gen:
                run(records[:1], gen, options)  # warm-up: the server's first request
                sent = gen.requests_sent
                results = [run(records, gen, options) for _ in range(args.repeats)]
                record(f"server, concurrency {c}", results,
                       (gen.requests_sent - sent) // args.repeats)

    base = rows[0]["prefixes_per_s"]
    load = os.getloadavg()
    print(f"\n{len(records)} toy solutions, {rows[0]['prefixes']} prefixes x n={args.n} "
          f"completions of <= {args.max_new_tokens} tokens, temperature 1; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{load[0]:.1f} at the end; best of {args.repeats}\n")
    print("| backend | seconds | prefixes/s | completions/s | HTTP requests | vs in-process |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backend']} | {r['seconds']:.2f} | {r['prefixes_per_s']:.2f} | "
              f"{r['completions_per_s']:.1f} | {r['requests'] if r['requests'] else '-'} | "
              f"{r['prefixes_per_s'] / base:.2f}x |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "load_average": load,
                                          "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
