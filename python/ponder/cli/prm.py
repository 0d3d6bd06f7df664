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

from . import checks

CONVENTIONS = ("toy", "math-shepherd")
TOY_LMS = ("toy-draft", "toy-target", "toy-prm")


def _convention(name: str):
    from ..rewards.model import math_shepherd, toy_convention

    return toy_convention() if name == "toy" else math_shepherd()


def _load_lm(name: str, allow_download: bool = False):
    """A toy LM by name, or (model, tokenizer) from a transformers model: a local folder with
    safetensors weights, or a Hub id with ``allow_download`` (``--allow-download``)."""
    if name in TOY_LMS:
        from ..toy import load_toy_model

        return load_toy_model(name.removeprefix("toy-"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = not allow_download
    tok = AutoTokenizer.from_pretrained(name, local_files_only=local)
    return AutoModelForCausalLM.from_pretrained(name, local_files_only=local,
                                                use_safetensors=True), tok


def _verifier(name: str):
    from .. import toy  # noqa: F401 - importing ponder.toy registers the "toy" verifier
    from ..rewards import get_verifier

    return get_verifier(name)


def _load_prm(args):
    from ..rewards.model import ProcessRewardModel

    if args.model == "toy":
        from ..toy.prm import load_toy_prm

        return load_toy_prm(batch_size=args.batch_size)
    model, tok = _load_lm(args.model, args.allow_download)
    model.eval()
    return ProcessRewardModel(model, tok, _convention(args.convention), batch_size=args.batch_size)


def _steps_of(rec: dict, separator: str, where: str = "--input") -> list[str]:
    from ..rewards.verify import split_steps

    if "steps" in rec:
        return list(checks.string_list(rec, "steps", where))
    if isinstance(rec.get("solution"), str):
        return split_steps(rec["solution"], separator)
    raise checks.CommandError(f"{where} needs 'steps' (a list of strings) or 'solution' "
                              "(a string)")


def _solutions(path: str) -> list[dict]:
    """``score`` / ``collect`` input: {"question", "steps" | "solution"} records."""
    recs = checks.read_records(path, ("question",), kinds={"question": str})
    for number, rec in enumerate(recs, 1):
        _steps_of(rec, "\n\n", f"--input: {path} record {number}")
    return recs


def _cmd_score(args) -> int:
    from ..rewards.model import aggregate

    _check_model(args, "--model", ("toy",))
    recs = _solutions(args.input)
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

    _check_model(args, "--policy", TOY_LMS)
    recs = _solutions(args.input)
    model, tok = _load_lm(args.policy, args.allow_download)
    gen = TransformersGenerator(model, tok, batch_size=args.batch_size)
    stats = collect_rollouts(
        recs, gen, _verifier(args.verifier), args.output, n=args.n,
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

    from ..rewards.train import PRMDataCollator, PRMDataset, PRMTrainer

    _check_model(args, "--init", TOY_LMS)
    recs = checks.read_records(args.data, arg="--data")
    model, tok = _load_lm(args.init, args.allow_download)
    model.train()
    conv = _convention(args.convention)
    data = PRMDataset(recs, tok, conv)
    if len(data) == 0:
        raise checks.CommandError(f"--data: {args.data} holds no labelled steps")
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
    from ..toy import extract_answer

    _check_model(args, "--model", ("toy",))
    recs = checks.read_records(args.input, ("question", "candidates"), kinds={"question": str})
    for number, rec in enumerate(recs, 1):
        where = f"--input: {args.input} record {number}"
        if not checks.string_list(rec, "candidates", where):
            raise checks.CommandError(f"{where}: 'candidates' is empty")
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


def _check_model(args, flag: str, names: tuple[str, ...]) -> None:
    """``--model`` / ``--policy`` / ``--init`` name a built-in model or a local folder (a Hub
    name too with ``--allow-download``): checked before any file is read or model loaded."""
    value = getattr(args, flag.lstrip("-"))
    if not args.allow_download:
        try:
            checks.model_source("model", names)(value)
        except argparse.ArgumentTypeError as err:
            raise checks.CommandError(f"{flag}: {err} (--allow-download to fetch it from the "
                                      "Hub)") from None


def add_parser(subparsers) -> None:
    """Register ``ponder prm ...`` on the top-level parser's subparsers."""
    p = subparsers.add_parser("prm", help="process reward models: score, collect, train, "
                              "best-of-n", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="prm_command", required=True)

    def common(q, model=True):
        q.add_argument("--separator", default="\n\n", help="step separator of solutions")
        q.add_argument("--convention", choices=CONVENTIONS, default="toy")
        q.add_argument("--batch-size", type=checks.positive_int, default=64)
        q.add_argument("--quiet", action="store_true")
        q.add_argument("--allow-download", action="store_true",
                       help="let transformers fetch a model name from the Hugging Face Hub "
                       "(default: local folders only; weights are always safetensors)")
        if model:
            q.add_argument("--model", default="toy",
                           help="'toy' (the shipped toy PRM) or a transformers model folder")

    s = sub.add_parser("score", help="per-step scores of solutions (JSONL in, JSONL out)")
    s.add_argument("--input", required=True, type=checks.existing_file)
    s.add_argument("--output", required=True, type=checks.output_file)
    common(s)
    s.set_defaults(func=_cmd_score)

    c = sub.add_parser("collect", help="ER-PRM rollouts and labels (resumable)")
    c.add_argument("--input", required=True, type=checks.existing_file)
    c.add_argument("--output", required=True, type=checks.output_file)
    c.add_argument("--policy", default="toy-draft")
    c.add_argument("--verifier", choices=["toy", "math"], default="toy")
    c.add_argument("--n", type=checks.positive_int, default=16)
    c.add_argument("--eta", type=checks.positive_real, default=2.0)
    c.add_argument("--max-new-tokens", type=checks.positive_int, default=256)
    c.add_argument("--temperature", type=checks.positive_real, default=1.0)
    c.add_argument("--seed", type=checks.nonnegative_int, default=0)
    common(c, model=False)
    c.set_defaults(func=_cmd_collect)

    t = sub.add_parser("train", help="train a PRM on ER-PRM JSONL (soft-label cross-entropy)")
    t.add_argument("--data", required=True, type=checks.existing_file)
    t.add_argument("--out", required=True)
    t.add_argument("--init", default="toy-target",
                   help="toy-target, toy-draft or a folder")
    t.add_argument("--steps", type=checks.positive_int, default=500)
    t.add_argument("--lr", type=checks.positive_real, default=5e-4)
    t.add_argument("--seed", type=checks.nonnegative_int, default=0)
    common(t, model=False)
    t.set_defaults(func=_cmd_train)

    b = sub.add_parser("best-of-n", help="best-of-N accuracy vs majority vote, first, oracle")
    b.add_argument("--input", required=True, type=checks.existing_file)
    b.add_argument("--output", default=None, type=checks.output_file)
    b.add_argument("--verifier", choices=["toy", "math"], default="toy")
    b.add_argument("--aggregate", nargs="+", default=["min", "last", "product", "mean"],
                   choices=["min", "last", "product", "mean"])
    common(b)
    b.set_defaults(func=_cmd_best_of_n)

