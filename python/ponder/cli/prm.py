"""``ponder prm score | collect | train | best-of-n``: PRMs on JSONL files.

    ponder prm score --input cands.jsonl --output scored.jsonl          # the toy PRM by default
    ponder prm collect --input solutions.jsonl --output er.jsonl --n 16 --eta 2
    ponder prm train --data er.jsonl --out my-prm --init toy-target --steps 500
    ponder prm best-of-n --input groups.jsonl --aggregate min

Inputs: ``score`` and ``collect`` read ``{"question", "steps"}`` or ``{"question", "solution"}``
lines (``--separator`` splits a solution into steps); ``best-of-n`` reads ``{"question",
"candidates": [solution, ...]}`` lines, optionally with ``"reference"`` (the gold answer for the
verifier; the toy verifier solves the question itself). ``--model`` / ``--policy`` / ``--init``
take ``toy`` (the shipped toy PRM), ``toy-draft`` / ``toy-target`` (the toy LMs) or a
transformers model folder.
"""

from __future__ import annotations

import argparse
import json
import math

CONVENTIONS = ("toy", "math-shepherd")


def _convention(name: str):
    from ..rewards.model import math_shepherd, toy_convention

    return toy_convention() if name == "toy" else math_shepherd()


def _load_lm(name: str):
    if name in ("toy-draft", "toy-target", "toy-prm"):
        from ..toy import load_toy_model

        return load_toy_model(name.removeprefix("toy-"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name)
    return AutoModelForCausalLM.from_pretrained(name), tok


def _verifier(name: str):
    from .. import toy  # noqa: F401 - importing ponder.toy registers the "toy" verifier
    from ..rewards import get_verifier

    return get_verifier(name)


def _load_prm(args):
    from ..rewards.model import ProcessRewardModel

    if args.model == "toy":
        from ..toy.prm import load_toy_prm

        return load_toy_prm(batch_size=args.batch_size)
    model, tok = _load_lm(args.model)
    model.eval()
    return ProcessRewardModel(model, tok, _convention(args.convention), batch_size=args.batch_size)


def _steps_of(rec: dict, separator: str) -> list[str]:
    from ..rewards.verify import split_steps

    if "steps" in rec:
        return list(rec["steps"])
    if "solution" in rec:
        return split_steps(rec["solution"], separator)
    raise ValueError("each input line needs 'steps' or 'solution'")


def _cmd_score(args) -> int:
    from ..rewards.model import aggregate
    from ..rewards.train import read_jsonl

    recs = read_jsonl(args.input)
    prm = _load_prm(args)
    steps = [_steps_of(r, args.separator) for r in recs]
    scores = prm.score([r["question"] for r in recs], steps, progress=not args.quiet)
    with open(args.output, "w") as f:
        for r, s, sc in zip(recs, steps, scores):
            out = {**r, "steps": s, "scores": sc}
            out.update({a: _num(aggregate(sc, a)) for a in ("min", "last", "product", "mean")})
            f.write(json.dumps(out) + "\n")
    print(f"scored {len(recs)} solutions -> {args.output}")
    return 0


def _num(x: float):
    return None if math.isnan(x) else x


def _cmd_collect(args) -> int:
    from ..generation import TransformersGenerator
    from ..rewards.collect import collect_rollouts
    from ..rewards.train import read_jsonl

    model, tok = _load_lm(args.policy)
    gen = TransformersGenerator(model, tok, batch_size=args.batch_size)
    stats = collect_rollouts(
        read_jsonl(args.input), gen, _verifier(args.verifier), args.output, n=args.n,
        eta=args.eta, convention=_convention(args.convention), tokenizer=tok,
        separator=args.separator, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, seed=args.seed, progress=not args.quiet,
    )
    print(f"{stats.written} solutions written ({stats.skipped} already done), "
          f"{stats.prefixes_sampled} prefixes x {args.n} completions -> {args.output}")
    return 0


def _cmd_train(args) -> int:
    import torch
    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from ..rewards.train import PRMDataCollator, PRMDataset, PRMTrainer, read_jsonl

    model, tok = _load_lm(args.init)
    model.train()
    conv = _convention(args.convention)
    data = PRMDataset(read_jsonl(args.data), tok, conv)
    targs = TrainingArguments(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.05, max_grad_norm=1.0,
        logging_steps=max(1, args.steps // 20), save_strategy="no", report_to="none",
        use_cpu=not torch.cuda.is_available(), seed=args.seed, remove_unused_columns=False,
        disable_tqdm=args.quiet,
    )
    trainer = PRMTrainer(model=model, args=targs, train_dataset=data,
                         data_collator=PRMDataCollator(tok.pad_token_id or 0),
                         label_ids=data.label_ids)
    if args.quiet:
        trainer.remove_callback(PrinterCallback)
    trainer.train()
    model.save_pretrained(args.out)  # safetensors
    tok.save_pretrained(args.out)
    print(f"trained on {len(data)} examples for {args.steps} steps -> {args.out}")
    return 0


def _cmd_best_of_n(args) -> int:
    from ..rewards.best_of_n import best_of_n
    from ..rewards.train import read_jsonl
    from ..toy import extract_answer

    recs = read_jsonl(args.input)
    verifier = _verifier(args.verifier)
    prm = _load_prm(args)
    questions, steps, owner = [], [], []
    for p, r in enumerate(recs):
        for c in r["candidates"]:
            questions.append(r["question"])
            steps.append(_steps_of({"solution": c}, args.separator))
            owner.append(p)
    flat = prm.score(questions, steps, progress=not args.quiet)
    scores = [[] for _ in recs]
    for p, s in zip(owner, flat):
        scores[p].append(s)
    correct = [[verifier(r.get("reference", r["question"]), c) for c in r["candidates"]]
               for r in recs]
    answers = None
    if args.verifier == "toy":
        answers = [[extract_answer(c) for c in r["candidates"]] for r in recs]
    aggs = tuple(args.aggregate)
    result = best_of_n(scores, correct, answers, aggregates=aggs)
    print(result.table())
    if args.output:
        with open(args.output, "w") as f:
            for p, r in enumerate(recs):
                f.write(json.dumps({**r, "scores": scores[p], "correct": correct[p],
                                    "picks": {k: v[p] for k, v in result.picks.items()}}) + "\n")
    return 0


def add_parser(subparsers) -> None:
    """Register ``ponder prm ...`` on the top-level parser's subparsers."""
    p = subparsers.add_parser("prm", help="process reward models: score, collect, train, "
                              "best-of-n", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="prm_command", required=True)

    def common(q, model=True):
        q.add_argument("--separator", default="\n\n", help="step separator of solutions")
        q.add_argument("--convention", choices=CONVENTIONS, default="toy")
        q.add_argument("--batch-size", type=int, default=64)
        q.add_argument("--quiet", action="store_true")
        if model:
            q.add_argument("--model", default="toy",
                           help="'toy' (the shipped toy PRM) or a transformers model folder")

    s = sub.add_parser("score", help="per-step scores of solutions (JSONL in, JSONL out)")
    s.add_argument("--input", required=True)
    s.add_argument("--output", required=True)
    common(s)
    s.set_defaults(func=_cmd_score)

    c = sub.add_parser("collect", help="ER-PRM rollouts and labels (resumable)")
    c.add_argument("--input", required=True)
    c.add_argument("--output", required=True)
    c.add_argument("--policy", default="toy-draft")
    c.add_argument("--verifier", choices=["toy", "math"], default="toy")
    c.add_argument("--n", type=int, default=16)
    c.add_argument("--eta", type=float, default=2.0)
    c.add_argument("--max-new-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float, default=1.0)
    c.add_argument("--seed", type=int, default=0)
    common(c, model=False)
    c.set_defaults(func=_cmd_collect)

    t = sub.add_parser("train", help="train a PRM on ER-PRM JSONL (soft-label cross-entropy)")
    t.add_argument("--data", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--init", default="toy-target", help="toy-target, toy-draft or a folder")
    t.add_argument("--steps", type=int, default=500)
    t.add_argument("--lr", type=float, default=5e-4)
    t.add_argument("--seed", type=int, default=0)
    common(t, model=False)
    t.set_defaults(func=_cmd_train)

    b = sub.add_parser("best-of-n", help="best-of-N accuracy vs majority vote, first, oracle")
    b.add_argument("--input", required=True)
    b.add_argument("--output", default=None)
    b.add_argument("--verifier", choices=["toy", "math"], default="toy")
    b.add_argument("--aggregate", nargs="+", default=["min", "last", "product", "mean"],
                   choices=["min", "last", "product", "mean"])
    common(b)
    b.set_defaults(func=_cmd_best_of_n)

