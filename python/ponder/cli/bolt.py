"""``ponder bolt bootstrap | sft | dpo | effect``: BOLT (long thought bootstrapped from an
instruct model by in-context examples, then SFT and online DPO).

    ponder bolt effect --out bolt-toy           # trains the toy instruct model, runs every stage
    ponder bolt bootstrap                       # the toy world: ./bolt-toy/instruct
    ponder bolt sft                             # fine-tunes on ./bolt-toy/bootstrap.jsonl
    ponder bolt dpo                             # online DPO from ./bolt-toy/sft
    ponder bolt bootstrap --model DIR --queries q.jsonl --reward rm:RM_DIR --out run/
    ponder bolt sft --model DIR --data run/bootstrap.jsonl --out run/
    ponder bolt dpo --model run/sft --queries q.jsonl --reward math --out run/

Queries are JSONL lines ``{"query", "id"?, "reference"?}`` (``"answer"`` is read as the
reference). ``--reward`` is ``toy`` or ``math`` (verifiers: 1 for a right answer, 0 otherwise;
``math`` needs math-verify) or ``rm:FOLDER`` (a transformers sequence-classification reward
model). Without ``--model`` every command runs on the toy world. Files in ``--out``:
``bootstrap.samples.jsonl`` (every sample, resumable), ``bootstrap.jsonl`` (the best per query),
``sft/`` and ``dpo/`` (models).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import checks

TOY_OUT = "bolt-toy"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ponder bolt`` on ``ponder``'s subparsers."""
    p = subparsers.add_parser("bolt", help="BOLT: bootstrap long thought, SFT, online DPO",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bolt_command", choices=["bootstrap", "sft", "dpo", "effect"])
    p.add_argument("--model", default=None,
                   help="a causal LM folder (default: the toy world's model for the stage)")
    p.add_argument("--queries", type=checks.existing_file, default=None,
                   help="bootstrap / dpo: JSONL queries (default: toy problems)")
    p.add_argument("--data", type=checks.existing_file, default=None,
                   help="sft: the selected records (default: OUT/bootstrap.jsonl)")
    p.add_argument("--out", type=checks.output_dir, default=TOY_OUT, help="output folder")
    p.add_argument("--reward", default=None,
                   help="toy | math | rm:FOLDER (default: toy on the toy world)")
    p.add_argument("--examples", type=checks.existing_file, default=None,
                   help="in-context examples, JSON or JSONL {query, thought, solution} "
                        "(default: the 10 shipped with ponder; toy examples on the toy world)")
    p.add_argument("--m", type=checks.int_at_least(0), default=None,
                   help="examples per prompt (3; toy: 2)")
    p.add_argument("--n", type=checks.int_at_least(1), default=8, help="samples per query")
    p.add_argument("--temperature", type=checks.real_in(0.0), default=None,
                   help="sampling temperature (bootstrap 0.7, dpo 1.0)")
    p.add_argument("--max-new-tokens", type=checks.int_at_least(1), default=None,
                   help="(1024; toy: 160)")
    p.add_argument("--percentile", type=checks.real_in(0.0, 100.0), default=30.0)
    p.add_argument("--min-reward", type=float, default=None,
                   help="also drop samples below this reward (toy default: 1, right answers)")
    p.add_argument("--num-queries", type=checks.int_at_least(1), default=None,
                   help="toy world: how many problems (bootstrap 128, dpo 96)")
    p.add_argument("--epochs", type=checks.real_in(0.0, low_open=True), default=None,
                   help="sft epochs (2; toy: 4)")
    p.add_argument("--lr", type=checks.real_in(0.0, low_open=True), default=None,
                   help="learning rate (sft 1e-5, dpo 5e-7; toy: 1e-3, 5e-5)")
    p.add_argument("--batch-size", type=checks.int_at_least(1), default=None,
                   help="sft / dpo batch and reward-model batch (8; toy: 16)")
    p.add_argument("--iterations", type=checks.int_at_least(1), default=3, help="dpo iterations")
    p.add_argument("--beta", type=checks.real_in(0.0, low_open=True), default=0.1)
    p.add_argument("--thought-open", default=None)
    p.add_argument("--thought-close", default=None)
    p.add_argument("--solution-open", default=None)
    p.add_argument("--solution-close", default=None)
    p.add_argument("--instruct-steps", type=checks.int_at_least(1), default=None,
                   help="effect: training steps of the toy instruct model (800)")
    p.add_argument("--bolt-delimiter-share", type=checks.real_in(0.0, 1.0), default=0.3,
                   help="effect: share of the instruct model's thought formats that use the "
                        "BOLT delimiters (0.3; 0 holds them out, and then bootstrapping keeps "
                        "nothing)")
    p.add_argument("--seed", type=checks.seed, default=0)
    p.add_argument("--quiet", action="store_true")
    checks.add_model_flags(p)
    p.set_defaults(func=run)
    return p


def _toy(args) -> bool:
    return args.model is None


def _format(args):
    from ..train.bolt import DEFAULT_FORMAT, BoltFormat

    if _toy(args):
        from ..toy.bolt import TOY_FORMAT

        base = TOY_FORMAT
    else:
        base = DEFAULT_FORMAT
    fields = {k: getattr(args, k) for k in ("thought_open", "thought_close", "solution_open",
                                             "solution_close") if getattr(args, k) is not None}
    if not fields:
        return base
    try:
        return BoltFormat(**{**base.__dict__, **fields})
    except (TypeError, ValueError) as err:
        raise checks.CommandError(str(err)) from err


def _reward(args):
    from ..train.bolt import SequenceClassifierReward, VerifierReward

    name = args.reward or ("toy" if _toy(args) else None)
    if name is None:
        raise checks.CommandError("--reward is needed with --model: toy, math or rm:FOLDER")
    if name in ("toy", "math"):
        from .. import toy  # noqa: F401 - registers the "toy" verifier
        from ..rewards import get_verifier

        try:
            return VerifierReward(get_verifier(name))
        except ImportError as err:
            raise checks.CommandError(f"--reward {name}: {err}") from err
    if name.startswith("rm:"):
        folder = name[3:]
        checks.check_model(folder, "--reward", (), kind="reward model",
                           allow_download=args.allow_download, allow_pickle=args.allow_pickle)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        local = not args.allow_download
        try:
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=local)
            model = AutoModelForSequenceClassification.from_pretrained(
                folder, local_files_only=local, use_safetensors=None if args.allow_pickle
                else True)
        except (OSError, ValueError, KeyError) as err:
            raise checks.CommandError(f"--reward: cannot load {folder}: {err}") from err
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return SequenceClassifierReward(model, tok, batch_size=args.batch_size or 8)
    raise checks.CommandError(f"--reward must be toy, math or rm:FOLDER, got {name!r}")


def _queries(args, default_count: int, offset: int) -> list[dict]:
    if args.queries is not None:
        recs = checks.read_records(args.queries, ("query",), "--queries", {"query": str})
        return [{"query": r["query"], "id": str(r.get("id", i)),
                 "reference": r.get("reference", r.get("answer"))} for i, r in enumerate(recs)]
    if not _toy(args):
        raise checks.CommandError("--queries is needed with --model")
    from ..toy import make_problems, split

    pool = split(make_problems(4000, seed=args.seed + 101)).train
    count = args.num_queries or default_count
    return [{"query": p.question, "id": str(i), "reference": p.answer}
            for i, p in enumerate(pool[offset:offset + count])]


def _model(args, toy_stage: str):
    """(model, tokenizer): ``--model``, or on the toy world the toy instruct model (bootstrap,
    sft) or ``OUT/sft`` (dpo)."""
    if args.model is not None:
        checks.check_model(args.model, "--model", (), allow_download=args.allow_download,
                           allow_pickle=args.allow_pickle)
        model, tok = checks.load_causal_lm(args.model, "--model",
                                           allow_download=args.allow_download,
                                           allow_pickle=args.allow_pickle)
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        return model, tok
    from ..toy import load_toy_model, make_tokenizer

    if toy_stage == "dpo":
        folder = Path(args.out) / "sft"
        if not (folder / "model.safetensors").is_file():
            raise checks.CommandError(f"no SFT model in {folder}: run `ponder bolt sft "
                                      f"--out {args.out}` first (or pass --model)")
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM.from_pretrained(folder), make_tokenizer(padding_side="left")
    # The toy instruct model is not shipped (docs/bolt.md): `ponder bolt effect --out OUT`
    # trains it into OUT/instruct, which is used first.
    trained = Path(args.out) / "instruct" / "model.safetensors"
    try:
        return load_toy_model("instruct", weights_dir=args.out if trained.is_file() else None)
    except FileNotFoundError as err:
        raise checks.CommandError(f"no toy instruct model in {Path(args.out) / 'instruct'}: "
                                  f"`ponder bolt effect --out {args.out}` trains it (or pass "
                                  "--model)") from err


def _bootstrap(args) -> int:
    from ..generation import TransformersGenerator
    from ..train.bolt import BoltPromptBuilder, bootstrap, load_examples, select_best

    fmt = _format(args)
    reward = _reward(args)
    queries = _queries(args, 128, 0)
    toy = _toy(args)
    if toy:
        from ..toy.bolt import toy_builder, toy_examples

        examples = load_examples(args.examples) if args.examples else toy_examples()
    else:
        examples = load_examples(args.examples)
    m = (2 if toy else 3) if args.m is None else args.m
    if m > len(examples):  # before loading any model
        raise checks.CommandError(f"--m {m}: only {len(examples)} in-context examples")
    model, tok = _model(args, "bootstrap")
    if toy:
        builder = toy_builder(m, seed=args.seed, fmt=fmt, examples=examples)
        stop, min_reward = ["\n\nQ"], 1.0 if args.min_reward is None else args.min_reward
    else:
        builder = BoltPromptBuilder(examples, fmt=fmt, m=m, tokenizer=tok, seed=args.seed)
        stop, min_reward = None, args.min_reward
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bootstrap(queries, TransformersGenerator(model, tok, batch_size=64), builder, reward,
              out / "bootstrap.samples.jsonl", n=args.n,
              max_new_tokens=args.max_new_tokens or (160 if _toy(args) else 1024),
              temperature=0.7 if args.temperature is None else args.temperature, stop=stop,
              seed=args.seed, progress=not args.quiet)
    chosen, stats = select_best(out / "bootstrap.samples.jsonl", out / "bootstrap.jsonl",
                                percentile=args.percentile, min_reward=min_reward,
                                ids=[q["id"] for q in queries])
    for line in stats.lines():
        print(line)
    (out / "bootstrap.stats.json").write_text(json.dumps(stats.to_dict(), indent=1) + "\n")
    print(f"wrote {out / 'bootstrap.jsonl'} ({len(chosen)} records)")
    return 0


def _sft(args) -> int:
    from ..train.bolt import sft

    data = args.data or str(Path(args.out) / "bootstrap.jsonl")
    if not Path(data).is_file():
        raise checks.CommandError(f"--data: no {data}: run `ponder bolt bootstrap --out "
                                  f"{args.out}` first")
    records = checks.read_records(data, ("query", "thought", "solution"), "--data",
                                  {"query": str, "thought": str, "solution": str})
    model, tok = _model(args, "sft")
    toy = _toy(args)
    out = Path(args.out) / "sft"
    sft(model, tok, records, out, fmt=_format(args),
        prompt_template="{query}\n\n" if toy else "{query}",
        learning_rate=args.lr or (1e-3 if toy else 1e-5),
        batch_size=args.batch_size or (16 if toy else 8),
        epochs=args.epochs or (4.0 if toy else 2.0), max_length=512 if toy else 2048,
        seed=args.seed, progress=not args.quiet)
    print(f"wrote {out}")
    return 0


def _dpo(args) -> int:
    from ..train.bolt import online_dpo

    toy = _toy(args)
    reward = _reward(args)
    queries = _queries(args, 96, 128)
    model, tok = _model(args, "dpo")
    out = Path(args.out) / "dpo"
    history = online_dpo(
        model, tok, queries, reward, out, fmt=_format(args),
        prompt_template="{query}\n\n" if toy else "{query}", iterations=args.iterations,
        n=max(2, args.n), temperature=1.0 if args.temperature is None else args.temperature,
        max_new_tokens=args.max_new_tokens or (160 if toy else 1024),
        stop=["\n\nQ"] if toy else (), beta=args.beta, seed=args.seed,
        progress=not args.quiet, learning_rate=args.lr or (5e-5 if toy else 5e-7),
        batch_size=args.batch_size or (16 if toy else 8), max_length=512 if toy else 2048)
    for h in history:
        reward_text = "-" if h.mean_reward is None else f"{h.mean_reward:.3f}"
        print(f"iteration {h.iteration + 1}: format {h.format_rate:.1%}, mean reward "
              f"{reward_text}, pairs {h.pairs}")
    print(f"wrote {out}")
    return 0


def _effect(args) -> int:
    if not _toy(args):
        raise checks.CommandError("effect runs on the toy world: no --model")
    from dataclasses import replace

    from ..toy.bolt import ToyInstructSpec, format_effect, run_effect

    spec = replace(ToyInstructSpec(), bolt_delimiter_share=args.bolt_delimiter_share,
                   **({"steps": args.instruct_steps} if args.instruct_steps else {}))
    result = run_effect(args.out, instruct_spec=spec, seed=args.seed, progress=not args.quiet,
                        dpo_iterations=args.iterations)
    print(format_effect(result))
    print(f"{result['seconds']} s; wrote {Path(args.out) / 'effect.json'}")
    return 0


def run(args: argparse.Namespace) -> int:
    return {"bootstrap": _bootstrap, "sft": _sft, "dpo": _dpo,
            "effect": _effect}[args.bolt_command](args)
