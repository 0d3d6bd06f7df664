"""RSD's accuracy against FLOPs on the toy world, with the step-checking toy PRMs, against
random acceptance at the same target-call rate, token-level speculative decoding, draft-only
and target-only (greedy, toy test problems).

    python bench/rsd_curve.py --n 300 [--prm target=DIR draft=DIR:free] [--out DIR]

FLOPs: 2 x parameters per generated token per model (the draft's discarded tokens included),
plus 2 x the PRM's parameters (its frozen LM and head) per scored draft token; a PRM marked
``:free`` (one on the draft) scores each step from the draft's own generation pass
(``rsd_generate(prm_from_draft=True)``) and costs only its head (``draft_pass_flops``).
``--offset`` starts at that test problem (a second, held-out slice to check a delta chosen on
the first). ``--delta`` takes one list for every PRM, or ``NAME=d1,d2,...`` per PRM. Random acceptance
(``omega="constant"``, probability = the RSD run's measured acceptance rate) pays no PRM.
Token-level speculative decoding (k = 4, lossless, so its accuracy is the target's): the target
reads k + 1 tokens and the draft writes k per row and round. Writes ``DIR/rsd_curve.json``,
``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from ponder.decoding import num_parameters, rsd_generate, speculative_generate
from ponder.toy import SPECS, load_toy_model, verify


class Free:
    """A scorer that is never used for the decision (``omega="constant"``)."""

    def score(self, questions, steps):
        return [[0.5] * len(s) for s in steps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--prm", nargs="+", default=["target=shipped"],
                        help="NAME=FOLDER of a step-check PRM ('shipped': load_toy_prm())")
    parser.add_argument("--delta", nargs="+", default=["0.1", "0.3", "0.5", "0.7", "0.9"])
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--no-speculative", action="store_true",
                        help="skip token-level speculative decoding (one problem at a time)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", default="/tmp/rsd-curve")
    parser.add_argument("--replot", metavar="JSON",
                        help="only redraw the PNG of a run's rsd_curve.json (next to it)")
    args = parser.parse_args()
    if args.replot:
        data = json.loads(Path(args.replot).read_text())
        base = next(r for r in data["rows"] if r["run"] == "target-only")
        plot(data["rows"], base, data["meta"]["problems"], Path(args.replot).with_suffix(".png"))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    draft, tok = load_toy_model("draft")
    target, _ = load_toy_model("target")
    problems = SPECS["target"].splits().test[args.offset:args.offset + args.n]
    per_prm = dict(d.split("=", 1) for d in args.delta if "=" in d)
    common = [float(d) for d in args.delta if "=" not in d]
    kw = {"tokenizer": tok, "max_new_tokens": args.max_new_tokens, "verifier": verify,
          "generator": 0}
    rows = []

    def add(run, kind, res, **extra):
        st = res.stats
        rows.append({"run": run, "kind": kind, **extra,
                     **{k: st[k] for k in ("accuracy", "flops", "flops_prm", "acceptance_rate",
                                           "draft_steps", "target_steps", "wall_s")}})
        print(rows[-1], flush=True)

    add("draft-only", "draft-only", rsd_generate(draft, target, None, problems, delta=-math.inf,
                                                 **kw))
    add("target-only", "target-only", rsd_generate(draft, target, None, problems,
                                                   delta=math.inf, **kw))
    # token-level speculative decoding, one problem at a time (batched, every row would wait
    # for the batch's shortest accepted run each round)
    t0 = time.perf_counter()
    proposed, accepted, right = 0, 0, 0
    for p in ([] if args.no_speculative else problems):
        ids = tok(p.prompt, return_tensors="pt")["input_ids"]
        spec = speculative_generate(draft, target, ids, k=4, max_new_tokens=args.max_new_tokens,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        text = tok.decode(spec.sequences[0, ids.shape[1]:], skip_special_tokens=True)
        right += bool(verify(p, text))
        proposed += spec.stats["proposed"]
        accepted += spec.stats["accepted"]
    if proposed:
        rows.append({"run": "token-level speculative, k=4", "kind": "speculative",
                     "accuracy": right / len(problems),
                     "flops": 2.0 * num_parameters(target) * proposed * 5 / 4
                     + 2.0 * num_parameters(draft) * proposed, "flops_prm": 0.0,
                     "acceptance_rate": accepted / proposed, "wall_s": time.perf_counter() - t0})
        print(rows[-1], flush=True)
    for spec_arg in args.prm:
        name, _, folder = spec_arg.partition("=")
        folder, _, mode = folder.partition(":")
        free = mode == "free"
        if mode not in ("", "free"):
            raise SystemExit(f"--prm {spec_arg}: the only option is ':free'")
        if folder == "shipped":
            from ponder.toy import load_toy_prm

            prm = load_toy_prm()
        else:
            from ponder.toy.prm_check import load_check_prm

            prm = load_check_prm(folder)
        deltas = [float(d) for d in per_prm[name].split(",")] if name in per_prm else common
        for delta in deltas:
            res = rsd_generate(draft, target, prm, problems, delta=delta, prm_from_draft=free,
                               **kw)
            add(f"RSD, PRM on {name}, delta={delta:g}", f"rsd-{name}", res, delta=delta)
            rate = res.stats["acceptance_rate"]
            rnd = rsd_generate(draft, target, Free(), problems, delta=rate, omega="constant",
                               prm_parameters=0, **kw)
            add(f"random acceptance at {rate:.2f} (vs {name}, delta={delta:g})",
                f"random-{name}", rnd, delta=rate)
    base = next(r for r in rows if r["run"] == "target-only")
    for r in rows:
        r["flops_ratio"] = r["flops"] / base["flops"]
        r["flops_ratio_no_prm"] = (r["flops"] - r["flops_prm"]) / base["flops"]
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "problems": len(problems),
            "offset": args.offset, "threads": torch.get_num_threads(), "prm": args.prm,
            "delta": args.delta}
    (out / "rsd_curve.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    lines = ["| run | accuracy | acceptance | FLOPs vs target-only | same, PRM left out |",
             "|---|---|---|---|---|"]
    for r in rows:
        acc = r.get("acceptance_rate")
        lines.append(f"| {r['run']} | {100 * r['accuracy']:.1f}% | "
                     f"{'-' if acc is None or math.isnan(acc) else f'{acc:.2f}'} | "
                     f"{r['flops_ratio']:.2f} | {r['flops_ratio_no_prm']:.2f} |")
    (out / "rsd_curve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, base, len(problems), out / "rsd_curve.png")


def plot(rows, base, n: int, path) -> None:
    """Accuracy against FLOPs, one line per kind of run (``--replot JSON`` redraws a run's)."""
    from ponder.figures import pyplot, save

    plt = pyplot("bench/rsd_curve.py")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    kinds = sorted({r["kind"] for r in rows})
    colors = plt.get_cmap("tab20").colors
    for k, kind in enumerate(kinds):
        rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["flops_ratio"])
        ax.plot([r["flops_ratio"] for r in rs], [100 * r["accuracy"] for r in rs],
                marker="os^Dv"[k % 5], ms=4, ls="-" if len(rs) > 1 else "", label=kind,
                color=colors[(2 * k) % 20 + (k // 10) % 2])
    ax.axvline(0.75, color="grey", lw=0.8, ls=":")
    ax.axhline(100 * base["accuracy"] - 2, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("estimated FLOPs / target-only (PRM included)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"RSD on {n} toy test problems (greedy)")
    ax.set_xlim(0, max(1.6, max(r["flops_ratio"] for r in rows) + 0.05))
    ax.legend(fontsize=7, frameon=False)
    save(fig, path, dpi=110)


if __name__ == "__main__":
    main()
