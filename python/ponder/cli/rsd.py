"""``ponder rsd``: RSD next to draft-only and target-only runs, on the toy world or given models."""

from __future__ import annotations

import argparse
import json
import math

from ..ops.speculative import OMEGAS
from . import checks

TOY_LMS = ("draft", "target")


def _delta(text: str) -> float:
    """An acceptance threshold: any number (+-inf included), not NaN."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be a number (inf allowed), got {text!r}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ponder rsd`` on ``ponder``'s subparsers."""
    parser = subparsers.add_parser(
        "rsd", help="reward-guided speculative decoding vs draft-only and target-only",
        description="Run RSD on the toy arithmetic world (default models: the toy draft and "
        "target) and print accuracy, steps, tokens and estimated FLOPs next to draft-only and "
        "target-only runs.")
    parser.add_argument("--draft", default="draft",
                        help="toy model name or a transformers model folder (default: draft)")
    parser.add_argument("--target", default="target",
                        help="toy model name or a transformers model folder (default: target)")
    parser.add_argument("--prm", default="toy", choices=["toy", "free", "oracle"],
                        help="'toy' (the shipped toy PRM if present, else the oracle step "
                        "checker), 'free' (the toy draft's PRM scored from the draft's own "
                        "generation pass: only its head's FLOPs; toy draft only) or 'oracle' "
                        "(toy problems only)")
    parser.add_argument("--data", default=None, type=checks.existing_file,
                        help="JSONL of problems {\"prompt\": ..., \"answer\": ...} "
                        "(default: toy test problems)")
    parser.add_argument("--n", type=checks.positive_int, default=100,
                        help="problems to run (default 100)")
    parser.add_argument("--delta", type=_delta, nargs="+", default=[0.7],
                        help="acceptance thresholds (default 0.7)")
    parser.add_argument("--omega", default="binary", choices=OMEGAS)
    parser.add_argument("--max-new-tokens", type=checks.positive_int, default=64)
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    checks.add_model_flags(parser)
    parser.set_defaults(func=run)
    return parser


def load_prm(kind: str, problems):
    """``(scorer, name)``: the shipped toy PRM for ``"toy"`` when it is installed, else (and for
    ``"oracle"``) the oracle step checker, which knows only toy problems."""
    from ..toy import ToyOracleScorer, load_toy_prm

    if kind not in ("toy", "free", "oracle"):
        raise checks.CommandError(f"--prm must be 'toy', 'free' or 'oracle', got {kind!r}")
    if kind == "free":
        try:
            return load_toy_prm(kind="check-draft-local"), "draft-side PRM from the draft's pass"
        except FileNotFoundError:
            raise checks.CommandError("--prm free needs the shipped toy weights "
                                      "(weights/prm-check-draft-local)") from None
    if kind == "toy":
        try:
            return load_toy_prm(), "toy PRM"
        except FileNotFoundError:
            pass
    if any(isinstance(p, str) for p in problems):
        raise checks.CommandError("--data needs a learned PRM (the oracle only knows the toy test "
                         "problems), and the toy PRM is not installed")
    return ToyOracleScorer(problems), "oracle step checker"


def _load_model(name: str, flag: str, args):
    """A toy model by name, or (model, tokenizer) from a transformers model (checked by
    :func:`checks.check_model`)."""
    from ..toy import load_toy_model

    if name in TOY_LMS:
        return load_toy_model(name)
    model, tok = checks.load_causal_lm(name, flag, allow_download=args.allow_download,
                                       allow_pickle=args.allow_pickle)
    tok.padding_side = "left"
    return model.eval(), tok


def read_problems(path: str, n: int) -> tuple[list[str], list[object]]:
    """Prompts and answers from a JSONL file of {"prompt": str, "answer": int | str} rows (the
    first ``n``), the answers as the toy verifier takes them: an integer (a string of digits is
    one), or a toy question it solves itself. A prompt must be non-empty, and one prompt cannot
    have two answers."""
    from ..toy import parse_question

    rows = checks.read_records(path, ("prompt", "answer"), arg="--data",
                               kinds={"prompt": str, "answer": (int, str)})[:n]
    answers: dict[str, object] = {}
    prompts, normalised = [], []
    for number, row in enumerate(rows, 1):
        where = f"--data: {path} record {number}"
        prompt, answer = row["prompt"], row["answer"]
        if not prompt.strip():
            raise checks.CommandError(f"{where}: 'prompt' is empty")
        if isinstance(answer, str) and answer.strip().lstrip("-").isdigit():
            answer = int(answer)  # as a string it would be read as a question
        elif isinstance(answer, str):
            try:
                parse_question(answer)
            except ValueError:
                raise checks.CommandError(f"{where}: 'answer' must be an integer or a toy "
                                          f"question ('Q: 12+34-5=?'), got {answer!r}") from None
        if answers.setdefault(prompt, answer) != answer:
            raise checks.CommandError(f"{where} repeats an earlier prompt with another answer")
        prompts.append(prompt)
        normalised.append(answer)
    return prompts, normalised


def run(args) -> int:
    """Run ``ponder rsd``; returns the exit status."""
    from ..decoding import num_parameters, rsd_generate
    from ..toy import SPECS, verify

    for flag, name in (("--draft", args.draft), ("--target", args.target)):
        checks.check_model(name, flag, TOY_LMS, kind="toy model",
                           allow_download=args.allow_download, allow_pickle=args.allow_pickle)
    verifier = verify
    if args.data is None:
        problems = SPECS["target"].splits().test[: args.n]
        prompts = [p.prompt for p in problems]
    else:  # read and checked before any model is loaded
        problems, answers = read_problems(args.data, args.n)
        prompts = problems
        by_prompt = dict(zip(problems, answers))

        def verifier(prompt, text):
            return verify(by_prompt[prompt], text)

    if args.prm == "oracle" and args.data is not None:
        raise checks.CommandError("--prm oracle knows only the toy test problems, not --data "
                                  "(use --prm toy)")
    if args.prm == "free" and args.draft != "draft":
        raise checks.CommandError("--prm free is built on the toy draft: it scores from that "
                                  f"draft's own pass, not from --draft {args.draft}")
    draft, tok = _load_model(args.draft, "--draft", args)
    target, target_tok = _load_model(args.target, "--target", args)
    for model, tokenizer in ((draft, tok), (target, target_tok)):
        checks.check_generation_length(tokenizer, model.config, prompts, args.max_new_tokens)
    prm, prm_name = load_prm(args.prm, problems)
    inner = getattr(prm, "model", None)
    # The oracle is charged as a target-sized PRM (a learned toy PRM is one).
    prm_params = num_parameters(inner) if inner is not None else num_parameters(target)
    rows = []
    for label, delta in [("draft-only", -math.inf), ("target-only", math.inf)] + [
        (f"RSD delta={d:g}", d) for d in args.delta
    ]:
        res = rsd_generate(draft, target, prm, problems, tokenizer=tok,
                           target_tokenizer=target_tok, delta=delta, omega=args.omega,
                           max_new_tokens=args.max_new_tokens, verifier=verifier,
                           prm_parameters=prm_params, prm_from_draft=args.prm == "free")
        rows.append({"run": label, **res.stats})
    base = next(r for r in rows if r["run"] == "target-only")["flops"]
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(f"{len(problems)} toy test problems; PRM: {prm_name}; omega={args.omega}")
    head = (f"{'run':<18}{'accuracy':>9}{'draft st':>9}{'target st':>10}{'accept':>8}"
            f"{'draft tok':>10}{'discard':>8}{'target tok':>11}{'GFLOPs':>8}{'vs target':>10}"
            f"{'no-PRM':>8}"
            f"{'wall s':>8}")
    print(head)
    for r in rows:
        acc = r["acceptance_rate"]
        print(f"{r['run']:<18}{r['accuracy']:>9.3f}{r['draft_steps']:>9}{r['target_steps']:>10}"
              f"{'-' if math.isnan(acc) else f'{acc:.2f}':>8}{r['draft_tokens']:>10}"
              f"{r['discarded_draft_tokens']:>8}{r['target_tokens']:>11}"
              f"{r['flops'] / 1e9:>8.3f}{r['flops'] / base:>10.2f}"
              f"{(r['flops'] - r['flops_prm']) / base:>8.2f}{r['wall_s']:>8.1f}")
    return 0
