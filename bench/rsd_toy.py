"""End-to-end RSD on the toy world: accuracy and estimated FLOPs at several delta, next to
draft-only and target-only runs (greedy, toy test problems).

    python bench/rsd_toy.py --n 300 --prm oracle            # the rule-based step checker
    python bench/rsd_toy.py --n 300 --prm-dir <folder>      # a trained toy PRM (<folder>/prm)

Prints a markdown table and writes ``--out`` (JSON) and, with matplotlib, a PNG of accuracy vs
FLOPs. FLOPs: 2 x params per generated token per model, the PRM charged 2 x its parameters per
scored token (the oracle is charged as a target-sized PRM; the "no PRM" column drops that).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
from ponder.decoding import num_parameters, rsd_generate
from ponder.toy import SPECS, ToyOracleScorer, load_toy_model, verify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--prm", choices=["oracle", "toy"], default="oracle")
    parser.add_argument("--prm-dir", default=None, help="weights folder holding prm/ (toy PRM)")
    parser.add_argument("--delta", type=float, nargs="+", default=[0.3, 0.5, 0.7, 0.8, 0.9])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default="bench/spec_rsd.json")
    parser.add_argument("--png", default="bench/spec_rsd.png")
    args = parser.parse_args()

    draft, tok = load_toy_model("draft")
    target, _ = load_toy_model("target")
    problems = SPECS["target"].splits().test[: args.n]
    if args.prm == "toy" or args.prm_dir:
        from ponder.toy import load_toy_prm

        prm = load_toy_prm(weights_dir=args.prm_dir)
        prm_name, prm_params = "toy PRM", num_parameters(prm.model)
        deltas = args.delta
    else:
        prm = ToyOracleScorer(problems)
        prm_name, prm_params = "oracle step checker", num_parameters(target)
        deltas = [0.5]  # scores are 0 or 1: every delta in (0, 1] is the same run
    runs = [("draft-only", -math.inf), ("target-only", math.inf)] + [
        (f"RSD delta={d:g}", d) for d in deltas
    ]
    rows = []
    for label, delta in runs:
        res = rsd_generate(draft, target, prm, problems, tokenizer=tok, delta=delta,
                           max_new_tokens=args.max_new_tokens, verifier=verify,
                           prm_parameters=prm_params)
        rows.append({"run": label, "delta": delta, **res.stats})
        print(label, {k: round(v, 4) if isinstance(v, float) else v
                      for k, v in res.stats.items()}, flush=True)
    base = next(r for r in rows if r["run"] == "target-only")["flops"]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "prm": prm_name,
            "problems": len(problems), "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1, default=str)
    print(f"\n{len(problems)} toy test problems, greedy, PRM: {prm_name}\n")
    print("| run | accuracy | draft steps | target steps | acceptance | draft tokens | discarded "
          "| target tokens | GFLOPs | vs target-only | vs target-only, no PRM | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        acc = r["acceptance_rate"]
        print(f"| {r['run']} | {r['accuracy']:.3f} | {r['draft_steps']} | {r['target_steps']} | "
              f"{'-' if math.isnan(acc) else f'{acc:.2f}'} | {r['draft_tokens']} | "
              f"{r['discarded_draft_tokens']} | {r['target_tokens']} | {r['flops'] / 1e9:.2f} | "
              f"{r['flops'] / base:.2f} | {(r['flops'] - r['flops_prm']) / base:.2f} | "
              f"{r['wall_s']:.1f} |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["flops"] / base, r["accuracy"], label=r["run"])
        ax.scatter((r["flops"] - r["flops_prm"]) / base, r["accuracy"], marker="x", color="gray")
    ax.set_xlabel("estimated FLOPs / target-only (x: without the PRM)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"RSD on the toy world ({len(problems)} problems, PRM: {prm_name})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)


if __name__ == "__main__":
    main()
