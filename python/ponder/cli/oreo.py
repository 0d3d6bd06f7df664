"""``ponder oreo collect | train | search | effect``: OREO on JSONL files and model folders.

With no arguments each command runs on the toy world: ``collect`` samples the toy draft on the
train split into ``oreo_out/data.jsonl``, ``train`` trains OREO from the draft on it into
``oreo_out/model`` (the policy, and the value model in ``model/value``), ``search`` runs
value-guided beam search with ``oreo_out/model`` (or the shipped toy OREO models) on the test
split. ``effect`` is the seeded toy comparison (docs/oreo.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import checks

TOY_POLICY = "draft"
OUT = Path("oreo_out")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ponder oreo`` on ``ponder``'s subparsers."""
    parser = subparsers.add_parser(
        "oreo", help="OREO: collect data, train policy + value model, value-guided search",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="oreo_command", required=True)

    c = sub.add_parser("collect", help="sample, verify and keep a balanced JSONL data set")
    c.add_argument("--policy", default=TOY_POLICY,
                   help="toy model name or a transformers model folder (default: draft)")
    c.add_argument("--questions", type=checks.existing_file, default=None,
                   help="JSONL of {\"prompt\", \"answer\" (an integer)} (default: toy train "
                   "split)")
    c.add_argument("--n", type=checks.positive_int, default=1500,
                   help="toy questions when --questions is not given (default 1500)")
    c.add_argument("--out", default=str(OUT / "data.jsonl"),
                   help="the JSONL to append to (its folder is made; default oreo_out/data.jsonl)")
    c.add_argument("--k", type=checks.positive_int, default=8, help="samples per round")
    c.add_argument("--rounds", type=checks.positive_int, default=2)
    c.add_argument("--max-right", type=checks.positive_int, default=4)
    c.add_argument("--max-wrong", type=checks.positive_int, default=4)
    c.add_argument("--top-p", type=checks.real_in(0.0, 1.0, low_open=True), default=0.9)
    c.add_argument("--max-new-tokens", type=checks.positive_int, default=64)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=_cmd_collect)

    t = sub.add_parser("train", help="train OREO (policy and value model) on a JSONL data set")
    t.add_argument("--data", default=str(OUT / "data.jsonl"),
                   help="JSONL of {\"prompt\", \"response\", \"reward\"}")
    t.add_argument("--policy", default=TOY_POLICY, help="the SFT policy (toy name or folder)")
    t.add_argument("--out", type=checks.output_dir, default=str(OUT / "model"))
    t.add_argument("--level", choices=("token", "step", "response"), default="step")
    t.add_argument("--step-delimiter", default="\n\n",
                   help="the text that ends a step, tokenised to token ids (default blank line)")
    t.add_argument("--steps", type=checks.positive_int, default=200)
    t.add_argument("--batch-size", type=checks.positive_int, default=32)
    t.add_argument("--lr", type=checks.real_in(0.0, low_open=True), default=3e-4)
    t.add_argument("--critic-lr", type=checks.real_in(0.0, low_open=True), default=1e-3)
    t.add_argument("--beta", type=checks.real_in(0.0, low_open=True), default=0.03)
    t.add_argument("--alpha", type=checks.real_in(0.0), default=0.01)
    t.add_argument("--kl", choices=("exact", "k3", "none"), default="exact")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=_cmd_train)

    s = sub.add_parser("search", help="value-guided beam search (and greedy) accuracy")
    s.add_argument("--model", default=None,
                   help="a folder written by `ponder oreo train` (default: oreo_out/model, "
                   "else the shipped toy OREO models)")
    s.add_argument("--questions", type=checks.existing_file, default=None,
                   help="JSONL of {\"prompt\", \"answer\"} (default: toy test split)")
    s.add_argument("--n", type=checks.positive_int, default=100, help="problems (default 100)")
    s.add_argument("--beam-width", type=checks.positive_int, default=4)
    s.add_argument("--max-steps", type=checks.positive_int, default=20)
    s.add_argument("--max-new-tokens", type=checks.positive_int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=_cmd_search)

    e = sub.add_parser("effect", help="the seeded toy-world comparison (about 15 minutes)")
    e.add_argument("--out", type=checks.output_dir, default=str(OUT / "effect"))
    e.add_argument("--save-models", type=checks.output_dir, default=None,
                   help="also write the step-level OREO policy and value model (fp16) here")
    e.set_defaults(func=_cmd_effect)
    return parser


def _questions(path: str | None, split: str, n: int) -> list[dict]:
    """Rows with "id", "prompt" and "problem" (what the toy verifier takes: a Problem or an
    integer answer)."""
    from ..toy.oreo import toy_questions

    if path is None:
        return toy_questions(split, n)
    recs = checks.read_records(path, ("prompt", "answer"), arg="--questions",
                               kinds={"prompt": str})
    out = []
    for i, r in enumerate(recs):
        try:
            answer = int(r["answer"])
        except (TypeError, ValueError):
            raise checks.CommandError(f"--questions: {path} record {i + 1}: 'answer' must be an "
                                      "integer") from None
        out.append({"id": str(r.get("id", i)), "prompt": r["prompt"], "problem": answer})
    return out


def _load_lm(name: str, flag: str):
    from ..toy import load_toy_model

    if name in ("draft", "target"):
        return load_toy_model(name)
    model, tok = checks.load_causal_lm(name, flag)
    return model, tok


def _cmd_collect(args) -> int:
    from ..generation import TransformersGenerator
    from ..toy import verify
    from ..train.oreo import collect

    out = Path(args.out)
    if out.is_dir():
        raise checks.CommandError(f"--out: {out} is a folder, not a file")
    out.parent.mkdir(parents=True, exist_ok=True)
    qs = _questions(args.questions, "train", args.n)
    model, tok = _load_lm(args.policy, "--policy")
    gen = TransformersGenerator(model, tok, batch_size=512)

    def progress(done, total):
        print(f"\rcollect: {done}/{total} questions", end="", flush=True)

    stats = collect(gen, qs, lambda q, r: verify(q["problem"], r), args.out, k=args.k,
                    rounds=args.rounds, max_right=args.max_right, max_wrong=args.max_wrong,
                    top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                    chunk=128, progress=progress)
    print(f"\n{stats['rows']} rows ({stats['right']} right, {stats['wrong']} wrong) from "
          f"{stats['questions']} questions ({stats['skipped']} already done) -> {args.out}")
    return 0


def _cmd_train(args) -> int:
    import torch
    from transformers import TrainingArguments

    from ..train.oreo import (OREOConfig, OREOTrainer, ValueModel, read_jsonl, rows_to_dataset,
                              save_value_model)

    if not Path(args.data).is_file():
        raise checks.CommandError(f"--data: no file {args.data} (run `ponder oreo collect` "
                                  "first)")
    rows = read_jsonl(args.data)
    for i, r in enumerate(rows):
        if not all(k in r for k in ("prompt", "response", "reward")):
            raise checks.CommandError(f"--data: {args.data} row {i + 1} needs 'prompt', "
                                      "'response' and 'reward'")
    if not rows:
        raise checks.CommandError(f"--data: {args.data} is empty")
    torch.manual_seed(args.seed)
    policy, tok = _load_lm(args.policy, "--policy")
    policy.train()
    delim = tuple(tok(args.step_delimiter, add_special_tokens=False)["input_ids"])
    cfg = OREOConfig(beta=args.beta, alpha=args.alpha, kl=args.kl, level=args.level,
                     step_delimiter=delim)
    targs = TrainingArguments(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.03, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, report_to="none",
        logging_steps=max(1, args.steps // 10), save_strategy="no", seed=args.seed,
        use_cpu=not torch.cuda.is_available())
    trainer = OREOTrainer(policy, ValueModel.from_policy(policy), oreo=cfg,
                          critic_learning_rate=args.critic_lr, args=targs,
                          train_dataset=rows_to_dataset(tok, rows), processing_class=tok)
    trainer.train()
    broken = sum(int((~torch.isfinite(w)).sum()) for w in trainer.model.parameters())
    if broken:
        raise checks.CommandError(f"training diverged ({broken} non-finite weights): lower --lr")
    out = Path(args.out)
    trainer.policy.save_pretrained(out)
    tok.save_pretrained(out)
    save_value_model(trainer.value_model, out / "value")
    print(f"policy -> {out}, value model -> {out / 'value'}")
    return 0


def _load_oreo(folder: str | None):
    """``(policy, value, tokenizer)`` from a folder of `ponder oreo train` (or the shipped)."""
    from transformers import AutoModelForCausalLM

    from ..toy.tokenizer import make_tokenizer
    from ..train.oreo import load_value_model

    if folder is None:
        if not (OUT / "model" / "value").is_dir():
            from ..toy.oreo import load_toy_oreo

            return load_toy_oreo()
        folder = OUT / "model"
    folder = Path(folder)
    if not (folder / "value").is_dir():
        raise checks.CommandError(f"--model: {folder} has no value/ folder (train one with "
                                  "`ponder oreo train`)")
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype="float32", local_files_only=True)
    value = load_value_model(folder / "value")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError):
        tok = make_tokenizer()
    return policy.eval(), value.eval(), tok


def _cmd_search(args) -> int:
    from ..decoding.value_search import value_beam_search
    from ..toy import verify
    from ..toy.models import generate_solutions

    qs = _questions(args.questions, "test", args.n)
    policy, value, tok = _load_oreo(args.model)
    prompts = [q["prompt"] for q in qs]
    greedy = generate_solutions(policy, tok, prompts, max_new_tokens=args.max_new_tokens)
    res = value_beam_search(policy, value, tok, prompts, beam_width=args.beam_width,
                            max_steps=args.max_steps, max_new_tokens=args.max_new_tokens,
                            seed=args.seed)
    g = sum(verify(q["problem"], t) for q, t in zip(qs, greedy))
    b = sum(verify(q["problem"], t) for q, t in zip(qs, res.texts))
    out = {"problems": len(qs), "greedy_accuracy": g / len(qs),
           f"beam_{args.beam_width}_accuracy": b / len(qs),
           "beam_sampled_tokens": res.sampled_tokens}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{len(qs)} problems: greedy {g / len(qs):.3f}, value beam search "
              f"B={args.beam_width} {b / len(qs):.3f} ({res.sampled_tokens} tokens sampled)")
    return 0


def _cmd_effect(args) -> int:
    import torch

    from ..toy.oreo import effect

    res = effect(args.out)
    if args.save_models:
        from ..toy.models import save_toy_model
        from ..toy.tokenizer import make_tokenizer
        from ..train.oreo import save_value_model

        policy, value = res["models"]["step"]
        out = Path(args.save_models)
        save_toy_model(policy, make_tokenizer(), out)
        save_value_model(value, out / "value", dtype=torch.float16)
        print(f"step-level OREO policy and value model -> {out}")
    print(f"{args.out}/effect.json written ({res['seconds']} s)")
    return 0
