"""MathHay harness measurements on the offline benchmark (the numbers are the harness's, not a
model's):

1. haystack build time per 128K-token haystack (regex tokenizer; and the toy character
   tokenizer, a transformers fast tokenizer);
2. quality-control throughput: solves per second through the sandbox;
3. an end-to-end evaluation of the shipped toy model (``toy-target``, greedy) at 1K-8K token
   budgets (toy tokenizer), first / middle / last.

    flock /work/heavy.lock nice -n 5 python bench/mathhay_e2e.py --out bench/mathhay.json

Prints a Markdown summary; ``--out`` keeps every number as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--budget", type=int, default=131072)
    ap.add_argument("--eval-budgets", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--qc-tasks-per-type", type=int, default=4)
    ap.add_argument("--eval-placements", nargs="+", default=["first", "middle", "last"])
    ap.add_argument("--eval-task-types", nargs="+", default=None,
                    help="a subset of the seven task types for the toy evaluation (default all)")
    ap.add_argument("--parts", default="haystack,qc,eval",
                    help="comma-separated subset of haystack, qc, eval")
    args = ap.parse_args()
    parts = set(args.parts.split(","))

    import torch

    from ponder.generation import TransformersGenerator
    from ponder.mathhay import (build_haystack, evaluate, generate_benchmark, generate_documents,
                                quality_control)
    from ponder.toy import load_toy_model
    from ponder.toy.tokenizer import make_tokenizer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    report: dict = {"machine": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "load_before": os.getloadavg()}

    # 1. haystacks at the full budget.
    bench = generate_benchmark(tasks_per_type=1, n_documents=40, seed=0)
    taken = {d["company"] for d in bench["documents"]}
    docs = bench["documents"] + generate_documents(260, seed=0, start=40, taken=taken)
    for name, tok, budget in (("regex", None, args.budget),
                              ("toy (characters)", make_tokenizer(), args.budget)):
        if "haystack" not in parts:
            break
        times, tokens = [], []
        pool = docs
        for task in bench["tasks"]:
            for placement in ("first", "middle", "last"):
                start = time.perf_counter()
                h = build_haystack(task, pool, budget=budget, placement=placement, tokenizer=tok)
                times.append(time.perf_counter() - start)
                tokens.append(h["n_tokens"])
        report[f"haystack {name}"] = {"budget": budget, "n": len(times),
                                      "min_s": min(times), "median_s": statistics.median(times),
                                      "max_s": max(times), "min_tokens": min(tokens)}

    # 2. quality control through the sandbox.
    qc_bench = generate_benchmark(tasks_per_type=args.qc_tasks_per_type, n_documents=60, seed=1)
    start = time.perf_counter()
    reports = quality_control(qc_bench["tasks"], qc_bench["documents"]) if "qc" in parts else []
    seconds = time.perf_counter() - start
    report["qc"] = None if not reports else {
                    "tasks": len(reports), "consistent": sum(r["consistent"] for r in reports),
                    "seconds": seconds, "solves_per_s": len(reports) / seconds,
                    "median_call_s": statistics.median(r["sandbox_seconds"] for r in reports)}

    # 3. the toy model end to end (short documents: the toy model reads characters).
    small = generate_benchmark(tasks_per_type=1, n_documents=40, seed=0, metrics_per_document=1,
                               filler_sentences=2)
    if args.eval_task_types:
        small["tasks"] = [t for t in small["tasks"] if t["task_type"] in args.eval_task_types]
    model, tok = load_toy_model("target")
    gen = TransformersGenerator(model, tok, batch_size=1)
    rows = {}
    for budget in args.eval_budgets if "eval" in parts else []:
        start = time.perf_counter()
        recs = evaluate(small, gen, budgets=[budget], placements=args.eval_placements,
                        tokenizer=tok, max_new_tokens=32, batch_size=1, model_name="toy-target")
        seconds = time.perf_counter() - start
        answered = [r for r in recs if r["correct"] is not None]
        rows[budget] = {"prompts": len(answered), "skipped": len(recs) - len(answered),
                        "seconds": seconds,
                        "s_per_prompt": seconds / max(1, len(answered)),
                        "mean_prompt_tokens": statistics.mean(r["n_tokens"] for r in answered)
                        if answered else None,
                        "accuracy": sum(r["correct"] for r in answered) / max(1, len(answered))}
    report["toy eval"] = rows
    report["load_after"] = os.getloadavg()

    print(f"machine: {report['machine']}, {report['cpus']} CPUs, torch threads "
          f"{report['threads']}, load average before/after {report['load_before'][0]:.1f} / "
          f"{report['load_after'][0]:.1f}\n")
    print("| haystack tokenizer | budget | haystacks | min s | median s | max s |")
    print("|---|---|---|---|---|---|")
    for key in ("haystack regex", "haystack toy (characters)"):
        r = report.get(key)
        if r is None:
            continue
        print(f"| {key.removeprefix('haystack ')} | {r['budget']} | {r['n']} | {r['min_s']:.2f} | "
              f"{r['median_s']:.2f} | {r['max_s']:.2f} |")
    q = report["qc"] or {"consistent": 0, "tasks": 0, "seconds": 0.0, "solves_per_s": 0.0,
                         "median_call_s": 0.0}
    print(f"\nquality control: {q['consistent']}/{q['tasks']} consistent, {q['seconds']:.1f} s, "
          f"{q['solves_per_s']:.1f} solves/s (median call {q['median_call_s'] * 1000:.0f} ms)\n")
    print("| toy eval budget | prompts | skipped | mean prompt tokens | s / prompt | accuracy |")
    print("|---|---|---|---|---|---|")
    for budget, r in rows.items():
        mean = f"{r['mean_prompt_tokens']:.0f}" if r["mean_prompt_tokens"] else "-"
        print(f"| {budget} | {r['prompts']} | {r['skipped']} | {mean} | "
              f"{r['s_per_prompt']:.2f} | {100 * r['accuracy']:.0f}% |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
