"""``ponder prm score | collect | train | best-of-n``: PRMs on JSONL files.

    ponder prm score --input cands.jsonl --output scored.jsonl          # the toy PRM by default
    ponder prm collect --input solutions.jsonl --output er.jsonl --n 16 --eta 2
    ponder prm collect ... --server http://127.0.0.1:8000 --model NAME   # sample from a server
    ponder prm train --data er.jsonl --out my-prm --init toy-target --steps 500
    ponder prm best-of-n --input groups.jsonl --aggregate min

Inputs: ``score`` and ``collect`` read ``{"question", "steps"}`` or ``{"question", "solution"}``
lines (``--separator`` splits a solution into steps); ``best-of-n`` reads ``{"question",
"candidates": [solution, ...]}`` lines, optionally with ``"reference"`` (the gold answer for the
verifier; the toy verifier solves the question itself). ``--model`` / ``--policy`` / ``--init``
take ``toy`` (the shipped toy PRM), ``toy-draft`` / ``toy-target`` (the toy LMs) or a
transformers model folder with safetensors weights (``--allow-pickle`` for ``*.bin`` weights,
``--allow-download`` for Hugging Face Hub ids).
"""

from __future__ import annotations

import argparse
import json
import math

from . import checks
from .generation import add_server_options, text_generator

CONVENTIONS = ("toy", "math-shepherd")
TOY_LMS = ("toy-draft", "toy-target", "toy-prm")


def _convention(name: str):
    from ..rewards.model import math_shepherd, toy_convention

    return toy_convention() if name == "toy" else math_shepherd()


def _load_lm(name: str, flag: str, args):
    """A toy LM by name, or (model, tokenizer) from a transformers model: a local folder with
    safetensors weights unless ``--allow-download`` (a Hub id) or ``--allow-pickle`` (``*.bin``
    weights) say otherwise."""
    if name in TOY_LMS:
        from ..toy import load_toy_model

        return load_toy_model(name.removeprefix("toy-"))
    return checks.load_causal_lm(name, flag, allow_download=args.allow_download,
                                 allow_pickle=args.allow_pickle)


def _verifier(name: str):
    from .. import toy  # noqa: F401 - importing ponder.toy registers the "toy" verifier
    from ..rewards import get_verifier

    try:
        return get_verifier(name)
    except ImportError as err:  # math-verify is an optional dependency
        raise checks.CommandError(f"--verifier {name}: {err}") from err


def _check_references(recs: list[dict], verifier: str, path: str, keys: tuple[str, ...]) -> None:
    """Make each record's reference (the first of ``keys`` it has, else its question) one that
    ``verifier`` takes, before any model is loaded: a number or a string (math), an integer or a
    toy question (toy; a string of digits becomes the integer, in place)."""
    from ..toy import parse_question

    for number, rec in enumerate(recs, 1):
        where = f"--input: {path} record {number}"
        key = next((k for k in keys if k in rec), "question")
        ref = rec[key]
        if not checks.is_a(ref, (int, float, str)):
            raise checks.CommandError(f"{where}: {key!r} must be a number or a string")
        if verifier != "toy":
            continue
        if isinstance(ref, str) and ref.strip().lstrip("-").isdigit():
            rec[key] = int(ref)  # as a string the toy verifier would read a question
        elif isinstance(ref, str):
            try:
                parse_question(ref)
            except ValueError:
                raise checks.CommandError(
                    f"{where}: {key!r} is neither an integer answer nor a toy question "
                    f"('Q: 12+34-5=?') for --verifier toy: {ref!r}") from None
        elif not isinstance(ref, int):
            raise checks.CommandError(f"{where}: {key!r} must be an integer for --verifier toy")


def _load_prm(args):
    from ..rewards.model import ProcessRewardModel

    if args.model == "toy":
        from ..toy.prm import load_toy_prm

        return load_toy_prm(batch_size=args.batch_size)
    model, tok = _load_lm(args.model, "--model", args)
    model.eval()
    return ProcessRewardModel(model, tok, _convention(args.convention), batch_size=args.batch_size)


def _steps_of(rec: dict, separator: str, where: str = "--input") -> list[str]:
    """The steps of a record: its ``steps``, or its ``solution`` split at ``separator``; at
    least one (a solution without steps has nothing to score or label)."""
    from ..rewards.verify import split_steps

    if "steps" in rec:
        steps = list(checks.string_list(rec, "steps", where))
    elif isinstance(rec.get("solution"), str):
        steps = split_steps(rec["solution"], separator)
    else:
        raise checks.CommandError(f"{where} needs 'steps' (a list of strings) or 'solution' "
                                  "(a string)")
    if not steps:
        raise checks.CommandError(f"{where} has no steps")
    return steps


def _solutions(args) -> list[dict]:
    """``score`` / ``collect`` input: {"question", "steps" | "solution"} records, each with at
    least one step."""
    if checks.same_file(args.input, args.output):
        raise checks.CommandError(f"--output is the --input file ({args.input})")
    recs = checks.read_records(args.input, ("question",), kinds={"question": str})
    for number, rec in enumerate(recs, 1):
        _steps_of(rec, args.separator, f"--input: {args.input} record {number}")
    return recs


def _cmd_score(args) -> int:
    from ..rewards.model import aggregate

    _check_model(args, "--model", ("toy",))
    recs = _solutions(args)
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
    from ..rewards.collect import collect_rollouts

    _check_model(args, "--policy", TOY_LMS)
    recs = _solutions(args)
    verifier = _verifier(args.verifier)
    _check_references(recs, args.verifier, args.input, ("reference", "answer"))
    with text_generator(args, lambda: _load_lm(args.policy, "--policy", args)) as (gen, tok):
        stats = collect_rollouts(
            recs, gen, verifier, args.output, n=args.n,
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
    recs = _training_records(args.data)
    model, tok = _load_lm(args.init, "--init", args)
    model.train()
    conv = _convention(args.convention)
    try:
        data = PRMDataset(recs, tok, conv)
    except ValueError as err:  # a record whose step tags do not match its labels
        raise checks.CommandError(f"--data: {args.data}: {err}") from err
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
    # A learning rate that blows the weights up still "trains": refuse to save NaN / inf.
    broken = sum(int((~torch.isfinite(w)).sum()) for w in model.parameters())
    if broken:
        raise checks.CommandError(
            f"training diverged: {broken:,} weights are NaN or inf after {args.steps} steps at "
            f"--lr {args.lr:g}; the model was not saved (try a smaller --lr)")
    model.save_pretrained(args.out)  # safetensors
    tok.save_pretrained(args.out)
    print(f"trained on {len(data)} examples for {args.steps} steps -> {args.out}")
    return 0


def _cmd_best_of_n(args) -> int:
    from ..rewards.best_of_n import best_of_n
    from ..toy import extract_answer

    _check_model(args, "--model", ("toy",))
    if args.output is not None and checks.same_file(args.input, args.output):
        raise checks.CommandError(f"--output is the --input file ({args.input})")
    recs = checks.read_records(args.input, ("question", "candidates"), kinds={"question": str})
    for number, rec in enumerate(recs, 1):
        where = f"--input: {args.input} record {number}"
        for c, text in enumerate(checks.string_list(rec, "candidates", where, nonempty=True), 1):
            _steps_of({"solution": text}, args.separator, f"{where} candidate {c}")
    verifier = _verifier(args.verifier)
    _check_references(recs, args.verifier, args.input, ("reference",))
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


def _training_records(path: str) -> list[dict]:
    """``train`` input: ER-PRM records, ``{"text", "value"}`` or ``{"question", "steps",
    "value"}`` with ``value`` a non-empty list of labels in [0, 1]; checked before any model is
    loaded (the step tags are counted once the tokenizer is there)."""
    recs = checks.read_records(path, ("value",), arg="--data",
                               kinds={"text": str, "question": str, "value": list})
    for number, rec in enumerate(recs, 1):
        where = f"--data: {path} record {number}"
        labels = rec["value"]
        if not labels or not all(checks.is_a(v, (int, float)) and 0.0 <= v <= 1.0
                                 for v in labels):
            raise checks.CommandError(f"{where}: 'value' must be a non-empty list of labels in "
                                      "[0, 1]")
        if "text" not in rec:
            if "question" not in rec or "steps" not in rec:
                raise checks.CommandError(f"{where} needs 'text', or 'question' and 'steps'")
            checks.string_list(rec, "steps", where, nonempty=True)
    return recs


def _check_model(args, flag: str, names: tuple[str, ...]) -> None:
    """``--model`` / ``--policy`` / ``--init`` name a built-in model, a model folder that can be
    loaded, or (``--allow-download``) a Hub id: checked before any file is read or model
    loaded."""
    checks.check_model(getattr(args, flag.lstrip("-")), flag, names,
                       allow_download=args.allow_download, allow_pickle=args.allow_pickle)


def add_parser(subparsers) -> None:
    """Register ``ponder prm ...`` on the top-level parser's subparsers."""
    p = subparsers.add_parser("prm", help="process reward models: score, collect, train, "
                              "best-of-n", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="prm_command", required=True)

    def common(q, model=True):
        q.add_argument("--separator", default="\n\n", type=checks.nonempty_text,
                       help="step separator of solutions")
        q.add_argument("--convention", choices=CONVENTIONS, default="toy")
        q.add_argument("--batch-size", type=checks.positive_int, default=64)
        q.add_argument("--quiet", action="store_true")
        checks.add_model_flags(q)
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
    # Below 1e-6 the logits / temperature of float32 models overflow (a NaN sampling
    # distribution); sampling is greedy long before.
    c.add_argument("--temperature", type=checks.real_in(1e-6), default=1.0,
                   help="sampling temperature (>= 1e-6)")
    c.add_argument("--seed", type=checks.seed, default=0)
    common(c, model=False)
    add_server_options(c)
    c.set_defaults(func=_cmd_collect)

    t = sub.add_parser("train", help="train a PRM on ER-PRM JSONL (soft-label cross-entropy)")
    t.add_argument("--data", required=True, type=checks.existing_file)
    t.add_argument("--out", required=True, type=checks.output_dir)
    t.add_argument("--init", default="toy-target",
                   help="toy-target, toy-draft or a folder")
    t.add_argument("--steps", type=checks.positive_int, default=500)
    t.add_argument("--lr", type=checks.positive_real, default=5e-4)
    t.add_argument("--seed", type=checks.seed, default=0)
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

