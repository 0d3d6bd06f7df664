"""``ponder first extract | calibrate | train | eval | toy``: FIRST distillation (docs/first.md).

    ponder first extract --data train.jsonl --teacher TEACHER --out store-train   # teacher top-k
    ponder first calibrate --store store-val --apply-to store-train              # choose c
    ponder first train --data train.jsonl --store store-train --student STUDENT --out student
    ponder first eval --model student --data test.jsonl --diagram reliability.png
    ponder first toy --steps 1000 --out first-toy        # the four-way comparison, toy world

Data are JSONL ``{"prompt", "response"}`` lines; models are transformers folders (safetensors)
or the toy models ``toy-target`` / ``toy-draft``. Without ``--data`` / ``--teacher`` /
``--student`` every command runs on the toy world (the toy target teaches a draft-sized student
from scratch; the problems are the toy draft's train / validation / test splits) and keeps its
files under ``first-toy/``. ``train --mode`` also runs the baselines: ``sft``, ``kd`` (the
teacher on the fly, full vocabulary) and ``topk`` (c = 1).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import checks

TOY_MODELS = ("toy-target", "toy-draft")
TOY_DIR = Path("first-toy")


def _load(name: str, flag: str, args):
    if name in TOY_MODELS:
        from ..toy import load_toy_model

        return load_toy_model(name.removeprefix("toy-"))
    checks.check_model(name, flag, TOY_MODELS, allow_download=args.allow_download,
                       allow_pickle=args.allow_pickle)
    return checks.load_causal_lm(name, flag, allow_download=args.allow_download,
                                 allow_pickle=args.allow_pickle)


def _toy_records(part: str, n: int) -> list[dict[str, str]]:
    from ..toy import SPECS

    problems = getattr(SPECS["draft"].splits(), part)[:n]
    return [{"prompt": p.prompt, "response": p.target} for p in problems]


def _records(args, part: str, n: int) -> list[dict]:
    if args.data is None:
        return _toy_records(part, n)
    return checks.read_records(args.data, ("prompt", "response"), "--data")


def _cmd_extract(args) -> int:
    import torch

    from ..train.first import extract_topk

    recs = _records(args, "train", args.toy_problems)
    teacher, tok = _load(args.teacher, "--teacher", args)
    meta = extract_topk(teacher, recs, args.k, out_dir=args.out, tokenizer=tok,
                        dtype=torch.float16 if args.dtype == "float16" else torch.float32,
                        batch_size=args.batch_size, shard_size=args.shard_size,
                        progress=not args.quiet, overwrite=args.overwrite)
    m = meta["mass"]
    print(f"{meta['examples']} examples, {meta['tokens']} response tokens -> {args.out} "
          f"({meta['bytes']:,} bytes; full fp16 logits: {meta['full_logits_bytes']['float16']:,})"
          f"\ncaptured mass of the top-{meta['k']}: mean {m['mean']:.4f}, p5 {m['p5']:.4f}, "
          f"p50 {m['p50']:.4f}, min {m['min']:.4f}")
    return 0


def _cmd_calibrate(args) -> int:
    from ..train.first import calibrate_store, extract_topk

    store = args.store
    if store is None:  # the toy world: the validation split's top-k, extracted if missing
        store = str(TOY_DIR / "store-validation")
        if not (Path(store) / "meta.json").is_file():
            teacher, tok = _load("toy-target", "--teacher", args)
            extract_topk(teacher, _toy_records("validation", args.toy_problems), 5,
                         out_dir=store, tokenizer=tok, progress=not args.quiet)
    found = calibrate_store(store, coarse=args.grid, fine_step=args.fine_step)
    print(f"c = {found['temperature_c']:g}: ECE {found['ece']:.4f} (at c = 1: "
          f"{found['ece_at_1']:.4f}) on {found['tokens']} tokens of {store}")
    target = args.apply_to
    if target is None and args.store is None and (TOY_DIR / "store-train" / "meta.json").is_file():
        target = str(TOY_DIR / "store-train")
    if target is not None:
        meta_path = Path(target) / "meta.json"
        if not meta_path.is_file():
            raise checks.CommandError(f"--apply-to: {target} is not a top-k store (no meta.json)")
        meta = json.loads(meta_path.read_text())
        meta.update(temperature_c=found["temperature_c"], calibration_store=str(store))
        meta_path.write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote temperature_c = {found['temperature_c']:g} into {meta_path}")
    return 0


def _student(args):
    if args.student is not None:
        return _load(args.student, "--student", args)
    # the toy world: a draft-sized model from scratch
    from transformers import LlamaForCausalLM, set_seed

    from ..toy import SPECS, make_tokenizer

    set_seed(args.seed)
    return LlamaForCausalLM(SPECS["draft"].llama_config()), make_tokenizer()


def _cmd_train(args) -> int:
    import tempfile

    from ..toy.models import save_toy_model
    from ..toy.train import cpu_training_args, run_trainer
    from ..train.first import FIRSTTrainer, tokenize_records

    if args.mode in ("first", "topk") and not (Path(args.store) / "meta.json").is_file():
        raise checks.CommandError(f"--store: {args.store} is not a top-k store (run `ponder "
                                  "first extract` first)")
    n = args.steps * args.batch_size
    recs = _records(args, "train", n)
    student, tok = _student(args)
    teacher = _load(args.teacher, "--teacher", args)[0] if args.mode == "kd" else None
    with tempfile.TemporaryDirectory(prefix="ponder-first-") as scratch:
        targs = cpu_training_args(scratch, steps=args.steps, batch_size=args.batch_size,
                                  learning_rate=args.lr, weight_decay=0.01, warmup=0.05,
                                  seed=args.seed, progress=not args.quiet)
        trainer = FIRSTTrainer(student, targs, tokenize_records(tok, recs), mode=args.mode,
                               store=args.store if args.mode in ("first", "topk") else None,
                               temperature_c=args.c, other_bucket=args.other_bucket,
                               teacher=teacher, tokenizer=tok)
        seconds, losses = run_trainer(trainer, progress=not args.quiet)
    save_toy_model(student, tok, args.out)
    print(f"{args.mode}: {args.steps} steps in {seconds:.0f} s, final loss "
          f"{losses[-1][1] if losses else float('nan'):.4f}, c = {trainer.temperature_c:g} "
          f"-> {args.out}")
    return 0


def _cmd_eval(args) -> int:
    from ..train.calibration import reliability_diagram

    model, tok = _load(args.model, "--model", args)
    model.eval()
    if args.data is None:
        from ..toy import SPECS
        from ..toy.first_world import evaluate_calibration

        test = SPECS["draft"].splits().test[:args.toy_problems]
        out = Path(args.diagram).parent if args.diagram else TOY_DIR
        result = evaluate_calibration(Path(args.model).name, model, tok, test, out)
    else:
        from ..toy.first_world import token_metrics_records

        metrics, conf, ok = token_metrics_records(
            model, tok, checks.read_records(args.data, ("prompt", "response"), "--data"))
        result = {"token": metrics}
        if args.diagram:
            reliability_diagram(conf, ok, args.diagram, title=Path(args.model).name)
    print(json.dumps(result, indent=1))
    return 0


def _cmd_toy(args) -> int:
    from ..toy.first_world import format_first_table, run_first_effect

    results = run_first_effect(args.out, steps=args.steps, batch_size=args.batch_size,
                               seed=args.seed, other_bucket=args.other_bucket,
                               test_problems=args.toy_problems, init=args.init,
                               learning_rate=args.lr, progress=not args.quiet)
    print(format_first_table(results))
    return 0


def add_parser(subparsers) -> None:
    """Register ``ponder first ...`` on the top-level parser's subparsers."""
    p = subparsers.add_parser("first", help="FIRST distillation: extract, calibrate, train, "
                              "eval, toy", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="first_command", required=True)

    def common(q, toy_problems: int):
        q.add_argument("--quiet", action="store_true", help="no progress bars")
        q.add_argument("--toy-problems", type=checks.positive_int, default=toy_problems,
                       help="toy problems used when --data is not given")
        checks.add_model_flags(q)

    e = sub.add_parser("extract", help="store the teacher's top-k per response token")
    e.add_argument("--data", type=checks.existing_file, default=None)
    e.add_argument("--teacher", default="toy-target")
    e.add_argument("--out", type=checks.output_dir, default=str(TOY_DIR / "store-train"))
    e.add_argument("--k", type=checks.positive_int, default=5)
    e.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    e.add_argument("--batch-size", type=checks.positive_int, default=32)
    e.add_argument("--shard-size", type=checks.positive_int, default=4096)
    e.add_argument("--overwrite", action="store_true",
                   help="replace a store of other data (default: resume the same data's)")
    common(e, 32000)
    e.set_defaults(func=_cmd_extract)

    c = sub.add_parser("calibrate", help="choose FIRST's teacher temperature c on a validation "
                       "store")
    c.add_argument("--store", default=None, help="the validation split's top-k store")
    c.add_argument("--grid", type=checks.positive_real, nargs="+",
                   default=[round(0.1 * i, 10) for i in range(1, 11)],
                   help="the coarse grid of c (default 0.1 ... 1.0, the paper's; values "
                        "above 1 flatten an over-confident teacher)")
    c.add_argument("--fine-step", type=checks.positive_real, default=0.02)
    c.add_argument("--apply-to", default=None,
                   help="a training store whose meta.json gets the chosen c")
    common(c, 500)
    c.set_defaults(func=_cmd_calibrate)

    t = sub.add_parser("train", help="train a student: first, or a baseline (sft, kd, topk)")
    t.add_argument("--data", type=checks.existing_file, default=None)
    t.add_argument("--store", default=str(TOY_DIR / "store-train"))
    t.add_argument("--student", default=None,
                   help="a model folder (default: a toy-draft-sized model from scratch)")
    t.add_argument("--teacher", default="toy-target", help="the teacher of --mode kd")
    t.add_argument("--mode", choices=["first", "topk", "kd", "sft"], default="first")
    t.add_argument("--c", type=checks.positive_real, default=None,
                   help="FIRST's c (default: the store's, from `calibrate --apply-to`, else 1)")
    t.add_argument("--other-bucket", action="store_true")
    t.add_argument("--out", type=checks.output_dir, default=str(TOY_DIR / "student"))
    t.add_argument("--steps", type=checks.positive_int, default=1000)
    t.add_argument("--batch-size", type=checks.positive_int, default=32)
    t.add_argument("--lr", type=checks.positive_real, default=2e-3)
    t.add_argument("--seed", type=checks.seed, default=0)
    common(t, 32000)
    t.set_defaults(func=_cmd_train)

    v = sub.add_parser("eval", help="accuracy and calibration (ECE, NLL, Brier, diagrams)")
    v.add_argument("--model", default=str(TOY_DIR / "student"))
    v.add_argument("--data", type=checks.existing_file, default=None)
    v.add_argument("--diagram", type=checks.output_file, default=None)
    common(v, 300)
    v.set_defaults(func=_cmd_eval)

    y = sub.add_parser("toy", help="the toy-world comparison: sft, kd, topk and first students")
    y.add_argument("--out", type=checks.output_dir, default=str(TOY_DIR))
    y.add_argument("--steps", type=checks.positive_int, default=1000)
    y.add_argument("--batch-size", type=checks.positive_int, default=32)
    y.add_argument("--seed", type=checks.seed, default=0)
    y.add_argument("--other-bucket", action="store_true")
    y.add_argument("--init", choices=("draft", "scratch"), default="draft",
                   help="students start from the shipped toy draft (a fine-tune, default) or "
                        "from scratch")
    y.add_argument("--lr", type=checks.real_in(0.0, low_open=True), default=None,
                   help="peak learning rate (default 5e-4 from the draft, 2e-3 from scratch)")
    common(y, 300)
    y.set_defaults(func=_cmd_toy)
