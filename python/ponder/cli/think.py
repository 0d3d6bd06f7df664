"""``ponder think``: generate with and without ThinK; compare cache bytes, decode speed, outputs.

    ponder think                                  toy "target" model on toy arithmetic prompts
    ponder think --model retrieval --context 8192 toy lookups in long contexts (accuracy kept?)
    ponder think --model path/to/hf_model --prompts prompts.jsonl

Prompts: a ``.jsonl`` file (one ``{"prompt": ...}`` object or JSON string a line), or any other
file as one prompt. Without ``--prompts``: test problems of the toy arithmetic world for the toy
draft and target, key-value lookups of ``--context`` tokens for the toy retrieval models (the
trained one, or ``retrieval-constructed``: :func:`ponder.toy.build_retrieval_model`); their
accuracy is reported. ``--window`` / ``--recent``
default to 8 for the toy arithmetic prompts (about 20 tokens) and to ThinK's 32 otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import checks

TOY_MODELS = ("draft", "target", "retrieval", "retrieval-constructed")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``think`` subcommand to ``ponder``'s subparsers."""
    p = subparsers.add_parser(
        "think", help="generate with and without ThinK (cache bytes, decode tokens/s, agreement)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="target",
                   help="a toy model name (draft, target, retrieval, retrieval-constructed) or "
                        "a local Hugging Face model folder")
    p.add_argument("--prompts", default=None, type=checks.existing_file,
                   help=".jsonl (one prompt a line) or a text file")
    p.add_argument("--n", type=checks.positive_int, default=32,
                   help="toy prompts used (without --prompts)")
    p.add_argument("--context", type=checks.positive_int, default=4096,
                   help="--model retrieval: prompt length in tokens (default 4096)")
    p.add_argument("--batch-size", type=checks.positive_int, default=16)
    p.add_argument("--max-new-tokens", type=checks.positive_int, default=None,
                   help="default 48 (2 for --model retrieval: 'v' and the digit)")
    p.add_argument("--prune-ratio", type=checks.real_in(0.0, 1.0, high_open=True), default=0.4)
    p.add_argument("--window", type=checks.positive_int, default=None,
                   help="default 8 on the toy arithmetic prompts, else 32")
    p.add_argument("--recent", type=checks.nonnegative_int, default=None, help="as --window")
    p.add_argument("--evict", choices=["snapkv"], default=None)
    p.add_argument("--token-budget", type=checks.positive_int, default=None)
    p.add_argument("--fold-block", type=checks.positive_int, default=None,
                   help="prune generated tokens too, this many at a time")
    p.add_argument("--sample", action="store_true", help="sample (seeded) instead of greedy")
    p.add_argument("--seed", type=checks.seed, default=0)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--backend", choices=["cpu", "triton", "torch"], default=None)
    checks.add_model_flags(p)
    p.set_defaults(func=run)
    return p


def _read_prompts(path: str) -> list[str]:
    """The prompts of ``--prompts``: every non-empty one, or a :class:`CommandError` naming the
    file and line."""
    file = Path(path)
    try:
        text = file.read_text()
    except (OSError, ValueError) as err:  # ValueError: not UTF-8
        raise checks.CommandError(f"--prompts: cannot read {path}: {err}") from err
    if file.suffix != ".jsonl":
        if not text.strip():
            raise checks.CommandError(f"--prompts: {path} is empty")
        return [text]
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as err:
            raise checks.CommandError(f"--prompts: line {number} of {path} is not JSON ({err})") \
                from err
        if isinstance(item, dict):
            item = item.get("prompt")
        if not isinstance(item, str):
            raise checks.CommandError(f"--prompts: line {number} of {path} is not a string or a "
                                      "{\"prompt\": ...} object")
        if not item.strip():
            raise checks.CommandError(f"--prompts: line {number} of {path} is an empty prompt")
        prompts.append(item)
    if not prompts:
        raise checks.CommandError(f"--prompts: {path} holds no prompt")
    return prompts


def _load(args):
    dtype = getattr(torch, args.dtype)
    if args.model in ("draft", "target"):
        from ..toy import load_toy_model

        model, tokenizer = load_toy_model(args.model, dtype=dtype)
        return model, tokenizer, f"toy {args.model!r}"
    if args.model == "retrieval":
        from ..toy import load_toy_model

        model, tokenizer = load_toy_model("retrieval", dtype=dtype)
        return model, tokenizer, "toy 'retrieval' (trained)"
    if args.model == "retrieval-constructed":
        from ..toy import build_retrieval_model

        model, tokenizer = build_retrieval_model()
        return model.to(dtype), tokenizer, "toy 'retrieval' (constructed)"
    model, tokenizer = checks.load_causal_lm(args.model, "--model", dtype=dtype,
                                             allow_download=args.allow_download,
                                             allow_pickle=args.allow_pickle)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer, args.model


def run(args: argparse.Namespace) -> int:
    """Run ``ponder think`` (see the module docstring); returns the exit status."""
    from ..kv import ThinKSettings, apply_think, remove_think
    from ..kv.measure import generate_measured

    checks.check_model(args.model, "--model", TOY_MODELS, kind="toy model",
                       allow_download=args.allow_download, allow_pickle=args.allow_pickle)
    retrieval = args.model in ("retrieval", "retrieval-constructed")
    toy_arithmetic = args.prompts is None and not retrieval
    if args.max_new_tokens is None:
        args.max_new_tokens = 2 if retrieval else 48
    for name in ("window", "recent"):
        if getattr(args, name) is None:
            setattr(args, name, 8 if toy_arithmetic else 32)
    settings = {"prune_ratio": args.prune_ratio, "window": args.window, "recent": args.recent,
                "evict": args.evict, "token_budget": args.token_budget, "backend": args.backend,
                "fold_block": args.fold_block}
    ThinKSettings(**settings)  # the settings' own checks, before the model is loaded
    checks.check_backend(args.backend, "cpu")  # the models run on the CPU
    # Prompts from a file are read (and refused) before the model is loaded.
    file_prompts = _read_prompts(args.prompts) if args.prompts is not None else None
    model, tokenizer, label = _load(args)
    problems = lookups = None
    if file_prompts is not None:
        prompts = file_prompts
    elif retrieval:
        from ..toy import make_retrieval

        lookups = make_retrieval(args.n, context_tokens=args.context, seed=args.seed)
        prompts = [e.prompt for e in lookups]
    else:
        from ..toy import SPECS

        problems = SPECS["target"].splits().test[: args.n]
        prompts = [p.prompt for p in problems]
    # Caches are sized for prompt + new tokens (and a fold block): past the model's positions
    # that is meaningless and can ask for more memory than there is.
    checks.check_generation_length(tokenizer, model.config, prompts, args.max_new_tokens)
    positions = getattr(model.config, "max_position_embeddings", None)
    if args.fold_block is not None and isinstance(positions, int) and args.fold_block > positions:
        raise checks.CommandError(f"--fold-block {args.fold_block} exceeds the model's "
                                  f"max_position_embeddings ({positions}): it would never fold")
    apply_think(model, **settings)  # checks the settings against the model
    remove_think(model)
    cfg = model.config
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    print(f"model        {label} ({cfg.model_type}, {cfg.num_hidden_layers} layers, "
          f"{cfg.num_key_value_heads} KV heads, {args.dtype})")
    print(f"prompts      {len(prompts)} ({min(lengths)}-{max(lengths)} tokens), batch "
          f"{args.batch_size}, {'sampled' if args.sample else 'greedy'}, max_new_tokens "
          f"{args.max_new_tokens}")
    print("ThinK        " + ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None))
    results = {}
    gen_kw = {"batch_size": args.batch_size, "max_new_tokens": args.max_new_tokens,
              "sample": args.sample, "seed": args.seed}
    with torch.inference_mode():
        results["dense"] = generate_measured(model, tokenizer, prompts, **gen_kw)
        apply_think(model, **settings)
        try:
            results["think"] = generate_measured(model, tokenizer, prompts, **gen_kw)
        finally:
            remove_think(model)
    d_text, d_bytes, d_s, d_tok = results["dense"]
    t_text, t_bytes, t_s, t_tok = results["think"]
    print(f"{'':<24}{'dense':>14}{'ThinK':>14}")
    for i, what in enumerate(("held", "used")):
        print(f"{'cache bytes ' + what:<24}{d_bytes[i]:>14,}{t_bytes[i]:>14,}   "
              f"ratio {t_bytes[i] / max(d_bytes[i], 1):.3f}")
    rate = [tok / s if s > 0 else float("nan") for tok, s in ((d_tok, d_s), (t_tok, t_s))]
    print(f"{'decode tokens/s':<24}{rate[0]:>14.1f}{rate[1]:>14.1f}")
    same = sum(a == b for a, b in zip(d_text, t_text))
    print(f"outputs agree: {same}/{len(prompts)} identical")
    if problems is not None or lookups is not None:
        from ..toy import verify, verify_retrieval

        items, check, label, note = ((problems, verify, "toy accuracy", "") if lookups is None
                                     else (lookups, verify_retrieval, "lookup accuracy",
                                           "   (chance 10%)"))
        acc = [sum(check(x, t) for x, t in zip(items, texts)) / len(items)
               for texts in (d_text, t_text)]
        print(f"{label:<24}{acc[0]:>14.1%}{acc[1]:>14.1%}{note}")
    return 0
