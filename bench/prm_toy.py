"""The toy step-checking PRM end to end: ER-PRM rollouts, PRM training, best-of-N curves.

    python bench/prm_toy.py all --out /tmp/prm-toy            # everything below, resumable
    python bench/prm_toy.py collect --out DIR                 # draft samples of train problems,
                                                              # then collect_rollouts (resumable)
    python bench/prm_toy.py train --out DIR                   # one head per label kind / LM
    python bench/prm_toy.py best-of-n --out DIR               # 300 test problems x 64 samples

Rollouts: ``--train-problems`` train-split problems, ``--samples`` draft samples each (T = 1),
each prefix rolled out ``--rollouts`` times by the draft (T = 1) through
:func:`ponder.rewards.collect_rollouts`, verified by the toy verifier; the raw outcomes are kept,
so every label kind (hard = eta -> inf, soft = eta = 0, entropy-regularised eta) comes from the
same rollouts. Training: :class:`ponder.rewards.PRMTrainer` on
:class:`ponder.toy.prm_check.StepCheckPRM` (the LM frozen, the head trained). Best-of-N:
``--test-problems`` test problems, 64 draft samples each (T = 1); for N < 64 the 64 samples are
cut into 64 / N disjoint groups and a problem's accuracy is the mean over its groups; 95%
intervals are 1.96 standard errors over problems. Writes ``DIR/best_of_n.json``,
``DIR/best_of_n.md`` and ``DIR/best_of_n.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

LABELS = {"hard": math.inf, "soft": 0.0, "er0.5": 0.5, "er1": 1.0, "er2": 2.0, "er5": 5.0,
          "er10": 10.0, "local": "local"}  # local: exact step checks (collect-local)
NS = (1, 2, 4, 8, 16, 32, 64)


def _steps(problem, text):
    from ponder.toy.prm import label_solution

    return label_solution(problem, text, "first_error")[0]


def collect(args) -> None:
    from ponder.rewards import toy_convention
    from ponder.rewards.collect import collect_rollouts
    from ponder.toy import SPECS, ToyVerifier, make_tokenizer
    from ponder.toy.prm import draft_generator, max_solution_tokens

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    problems = SPECS["target"].splits().train[:args.train_problems]  # the training split only
    sols_path = out / "solutions.jsonl"
    gen = draft_generator()
    if not sols_path.exists():
        texts = gen.generate([p.prompt for p in problems], n=args.samples,
                             max_new_tokens=max_solution_tokens(problems), temperature=1.0,
                             seed=args.seed)
        with open(sols_path, "w") as f:
            for i, (p, ts) in enumerate(zip(problems, texts)):
                for j, t in enumerate(ts):
                    steps = _steps(p, t)
                    if steps:
                        f.write(json.dumps({"id": f"{i}.{j}", "question": p.question,
                                            "steps": steps}) + "\n")
    records = [json.loads(line) for line in sols_path.read_text().splitlines()]
    t0 = time.perf_counter()
    stats = collect_rollouts(records, gen, ToyVerifier(), out / "er.jsonl", n=args.rollouts,
                             eta=2.0, convention=toy_convention(), tokenizer=make_tokenizer(),
                             max_new_tokens=64, temperature=1.0, seed=args.seed,
                             prefixes_per_call=256, progress=not args.quiet)
    print(f"rollouts: {stats} in {time.perf_counter() - t0:.0f} s")


def collect_local(args) -> None:
    """Draft solutions of train problems as RSD sees them (greedy, plus ``--local-samples`` at
    T = 1), each step labelled by the toy's exact checker given the steps before it
    (``label_solution(mode="local")``): ``DIR/local.jsonl``, the records of the ``local`` label
    kind. Problems ``--train-problems`` onwards of the train split (not the rollouts' ones)."""
    from ponder.decoding import rsd_generate
    from ponder.toy import SPECS, load_toy_model
    from ponder.toy.prm import label_solution

    out = Path(args.out)
    path = out / "local.jsonl"
    if path.exists():
        return
    out.mkdir(parents=True, exist_ok=True)
    lo = args.train_problems
    problems = SPECS["target"].splits().train[lo:lo + args.local_problems]
    draft, tok = load_toy_model("draft")
    rows = []
    for sample in range(1 + args.local_samples):
        res = rsd_generate(draft, draft, None, problems, tokenizer=tok, delta=-math.inf,
                           max_new_tokens=64, temperature=0.0 if sample == 0 else 1.0,
                           generator=args.seed + sample)
        for p, text in zip(problems, res.texts):
            steps, labels = label_solution(p, text, "local")
            if steps:
                rows.append({"question": p.question, "steps": steps, "value": labels,
                             "temperature": 0.0 if sample == 0 else 1.0})
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    labels = [v for r in rows for v in r["value"]]
    print(f"local labels: {len(rows)} solutions, {len(labels)} steps, "
          f"{sum(labels) / len(labels):.3f} good")


def _records(out: Path, eta: float):
    from ponder.rewards import er_prm_label

    if eta == "local":
        rows = [json.loads(line) for line in (out / "local.jsonl").read_text().splitlines()]
        return [{"question": r["question"], "steps": r["steps"], "value": r["value"]}
                for r in rows]

    rows = [json.loads(line) for line in (out / "er.jsonl").read_text().splitlines()]
    return [{"question": r["question"], "steps": r["steps"],
             "value": [er_prm_label(o, eta) for o in r["outcomes"]]} for r in rows]


def train_head(out: Path, name: str, eta: float, lms, *, steps: int, seed: int = 0,
               progress: bool = False, hidden: bool = False, weight_decay: float = 0.0,
               width: int = 16) -> dict:
    import transformers
    from ponder.rewards.train import PRMDataCollator, PRMDataset, PRMTrainer
    from ponder.toy.prm_check import build_check_prm, check_convention, save_check_prm
    from ponder.toy.train import cpu_training_args, run_trainer

    records = _records(out, eta)
    model, tok = build_check_prm(lms, seed=seed, hidden=hidden, width=width)
    model.features.enable_cache()  # the LMs are frozen: each example's features once
    data = PRMDataset(records, tok, check_convention())
    transformers.set_seed(seed)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ponder-prm-check-") as scratch:
        targs = cpu_training_args(scratch, steps=steps, batch_size=64, learning_rate=3e-2,
                                  weight_decay=weight_decay, warmup=0.05, seed=seed, progress=progress,
                                  log_points=10)
        trainer = PRMTrainer(model=model, args=targs, train_dataset=data,
                             data_collator=PRMDataCollator(tok.pad_token_id), value_head="head")
        seconds, losses = run_trainer(trainer, progress=progress)
    model.features.enable_cache(False)
    recipe = {"name": name, "eta": eta if eta == "local" or math.isfinite(eta) else "inf",
              "lms": list(lms),
              "hidden": hidden, "width": width, "weight_decay": weight_decay,
              "records": len(records), "steps": steps, "batch_size": 64, "learning_rate": 3e-2,
              "train_seconds": round(seconds, 1), "loss": losses,
              "trainable_parameters": model.trainable_parameters(),
              "lm_parameters": model.lm_parameters(), "threads": torch.get_num_threads()}
    save_check_prm(model, out / "heads" / name, recipe)
    return recipe


def train(args) -> None:
    out = Path(args.out)
    for spec in args.heads:
        spec, _, options = spec.partition(":")  # ":h": the LM's hidden states too
        label, _, lm = spec.partition("@")
        lms = tuple(lm.split("+")) if lm else ("target",)
        name = spec.replace("@", "-").replace("+", "_") + ("-h" if "h" in options else "")
        if (out / "heads" / name / "head.safetensors").exists():
            continue
        r = train_head(out, name, LABELS[label], lms, steps=args.steps, progress=not args.quiet,
                       hidden="h" in options, weight_decay=args.weight_decay)
        print(f"{name}: {r['train_seconds']} s, loss {r['loss'][0][1]} -> {r['loss'][-1][1]}")


def _samples(out: Path, args):
    from ponder.toy import SPECS, extract_answer, verify
    from ponder.toy.prm import draft_generator, max_solution_tokens

    path = out / f"test_samples_{args.test_problems}x{max(NS)}.json"
    problems = SPECS["target"].splits().test[:args.test_problems]
    if not path.exists():
        texts = draft_generator().generate([p.prompt for p in problems], n=max(NS),
                                           max_new_tokens=max_solution_tokens(problems),
                                           temperature=1.0, seed=args.seed + 1)
        path.write_text(json.dumps(texts))
    texts = json.loads(path.read_text())
    correct = [[bool(verify(p, t)) for t in ts] for p, ts in zip(problems, texts)]
    answers = [[extract_answer(t) for t in ts] for ts in texts]
    return problems, texts, correct, answers


@torch.inference_mode()
def _features(model, tok, questions, steps, batch: int = 256):
    """Per candidate: the [S, F] step features of ``model``'s LMs (computed once; every head on
    the same LMs is then applied to them)."""
    from ponder.toy.prm_check import as_prm

    prm = as_prm(model, tok)
    enc = [prm.encode(q, s) if s else None for q, s in zip(questions, steps)]
    out = [torch.zeros(0, len(model.features.lms) * 7) for _ in enc]
    todo = sorted((i for i, e in enumerate(enc) if e), key=lambda i: len(enc[i][0]))
    for start in range(0, len(todo), batch):
        part = todo[start:start + batch]
        width = max(len(enc[i][0]) for i in part)
        ids = torch.zeros(len(part), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, i in enumerate(part):
            ids[r, :len(enc[i][0])] = torch.tensor(enc[i][0])
            mask[r, :len(enc[i][0])] = 1
        f = model.features.step_features(ids, mask)
        for r, i in enumerate(part):
            out[i] = f[r, enc[i][1]]
    return out


@torch.inference_mode()
def _apply_head(model, feats):
    res = []
    for f in feats:
        if not len(f):
            res.append([])
            continue
        h = torch.cat([f, torch.tanh(model.features.mlp(f))], -1)
        res.append(torch.sigmoid(model.head(h))[:, 0].tolist())
    return res


def _curves(values_by_rule, correct):
    """``(curves, per_problem)``: rule -> {N: (mean, half-width of the 95% interval)} over
    disjoint groups of the samples, and rule -> {N: per-problem accuracies}."""
    out, per = {}, {}
    p_count = len(correct)
    for rule, pick in values_by_rule.items():
        out[rule], per[rule] = {}, {}
        for n in NS:
            per_problem = []
            for p in range(p_count):
                groups = range(0, len(correct[p]), n)
                per_problem.append(sum(correct[p][g + pick(p, g, n)] for g in groups)
                                   / len(groups))
            out[rule][n] = _mean_ci(per_problem)
            per[rule][n] = per_problem
    return out, per


def _mean_ci(values):
    import statistics

    return (sum(values) / len(values),
            1.96 * statistics.pstdev(values) / math.sqrt(len(values)))


def best_of_n(args) -> None:
    from ponder.rewards import aggregate
    from ponder.rewards.best_of_n import majority_vote, select_best
    from ponder.toy.prm_check import build_check_prm, load_check_prm

    out = Path(args.out)
    t0 = time.perf_counter()
    problems, texts, correct, answers = _samples(out, args)
    print(f"samples ready ({time.perf_counter() - t0:.0f} s)")
    flat_q = [p.question for p, ts in zip(problems, texts) for _ in ts]
    flat_s = [_steps(p, t) for p, ts in zip(problems, texts) for t in ts]
    per = max(NS)
    heads = sorted(d.name for d in (out / "heads").iterdir() if (d / "head.safetensors").exists())
    feats_by_lms, scores = {}, {}
    for name in heads:
        cfg = json.loads((out / "heads" / name / "config.json").read_text())
        key = "+".join(cfg["lms"])
        prm = load_check_prm(out / "heads" / name)
        if key not in feats_by_lms:
            t1 = time.perf_counter()
            feats_by_lms[key] = _features(prm.model, prm.tokenizer, flat_q, flat_s)
            print(f"features on {key}: {time.perf_counter() - t1:.0f} s")
            check = prm.score(flat_q[:64], flat_s[:64])  # the cached path = the PRM's own
            fast = _apply_head(prm.model, feats_by_lms[key][:64])
            assert all(abs(a - b) < 1e-3 for x, y in zip(check, fast) for a, b in zip(x, y))
        s = _apply_head(prm.model, feats_by_lms[key])
        scores[name] = [s[i * per:(i + 1) * per] for i in range(len(problems))]
    # the target's own log-prob: min token log-prob over the steps (feature "prefix_min" at the
    # last step of the target's features), from an untrained target feature module
    if "target" not in feats_by_lms:
        m, tok = build_check_prm(("target",))
        feats_by_lms["target"] = _features(m, tok, flat_q, flat_s)
    lp = [float(f[-1, 5]) if len(f) else -math.inf for f in feats_by_lms["target"]]
    lp = [lp[i * per:(i + 1) * per] for i in range(len(problems))]

    def prm_rule(name, how):
        return lambda p, g, n: select_best([aggregate(x, how)
                                            for x in scores[name][p][g:g + n]])

    rules = {"first sample": lambda p, g, n: 0,
             "majority vote": lambda p, g, n: majority_vote(answers[p][g:g + n]),
             "target log-prob (min)": lambda p, g, n: select_best(lp[p][g:g + n]),
             "oracle": lambda p, g, n: max(range(n), key=lambda i: correct[p][g + i])}
    for name in heads:
        rules[f"PRM {name}, min"] = prm_rule(name, "min")
        rules[f"PRM {name}, last"] = prm_rule(name, "last")
    curves, per_problem = _curves(rules, correct)
    # paired over problems: each PRM rule minus majority vote at each N
    paired = {rule: {n: _mean_ci([a - b for a, b in zip(per_problem[rule][n],
                                                          per_problem["majority vote"][n])])
                     for n in NS}
              for rule in rules if rule.startswith(("PRM", "target"))}
    recipes = {n: json.loads((out / "heads" / n / "recipe.json").read_text()) for n in heads}
    (out / "best_of_n.json").write_text(json.dumps(
        {"problems": len(problems), "samples": per, "ns": NS, "curves": curves,
         "minus_majority": paired,
         "recipes": recipes, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        indent=1))
    lines = ["| rule | " + " | ".join(f"N={n}" for n in NS) + " |",
             "|---|" + "---|" * len(NS)]
    for rule, c in curves.items():
        lines.append(f"| {rule} | " + " | ".join(f"{100 * c[n][0]:.1f} ± {100 * c[n][1]:.1f}"
                                                 for n in NS) + " |")
    lines += ["", "Paired difference to majority vote (points, 95% interval over problems):", "",
              "| rule | " + " | ".join(f"N={n}" for n in NS) + " |", "|---|" + "---|" * len(NS)]
    for rule, c in paired.items():
        lines.append(f"| {rule} | " + " | ".join(f"{100 * c[n][0]:+.1f} ± {100 * c[n][1]:.1f}"
                                                 for n in NS) + " |")
    table = "\n".join(lines)
    (out / "best_of_n.md").write_text(table + "\n")
    print(table)
    _plot(curves, out / "best_of_n.png", len(problems))
    print(f"done in {time.perf_counter() - t0:.0f} s")


def _plot(curves, path, problems):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for rule, c in curves.items():
        if rule.startswith("PRM") and not rule.endswith("min"):
            continue
        ys = [100 * c[n][0] for n in NS]
        err = [100 * c[n][1] for n in NS]
        ax.errorbar(NS, ys, yerr=err, marker="o", ms=3, capsize=2, label=rule,
                    ls="--" if not rule.startswith("PRM") else "-")
    ax.set_xscale("log", base=2)
    ax.set_xticks(NS, [str(n) for n in NS])
    ax.set_xlabel("N (draft samples at T = 1)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"best-of-N on {problems} toy test problems (95% intervals)")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["collect", "collect-local", "train", "best-of-n",
                                            "all"])
    parser.add_argument("--out", default="/tmp/prm-toy")
    parser.add_argument("--train-problems", type=int, default=500)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--test-problems", type=int, default=300)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--heads", nargs="+", default=["er2", "er2@draft"],
                        help="label kind (" + ", ".join(LABELS) + ")[@lm[+lm]][:h] (:h: the "
                             "LM's last-layer hidden states as features too; one LM)")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local-problems", type=int, default=4000,
                        help="collect-local: train problems (after the rollouts' ones)")
    parser.add_argument("--local-samples", type=int, default=1,
                        help="collect-local: T = 1 samples per problem besides the greedy one")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    if args.command in ("collect", "all"):
        collect(args)
    if args.command == "collect-local":
        collect_local(args)
    if args.command in ("train", "all"):
        train(args)
    if args.command in ("best-of-n", "all"):
        best_of_n(args)


if __name__ == "__main__":
    main()
