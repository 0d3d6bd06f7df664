"""``ponder auto-cei init | run | eval``: Auto-CEI on the toy world, resumable in a folder.

    ponder auto-cei init [--out DIR]    refusal tuning and c1 / c2 (stages 1-4)
    ponder auto-cei run  [--out DIR]    everything not done yet (init included)
    ponder auto-cei eval [--out DIR]    SFT (the draft), refusal tuning and the best Auto-CEI
                                        model on the test split: a table, overall and by steps

With no arguments it runs on the toy world with ``ponder.toy.auto_cei.TOY_CONFIG`` (small k, few
iterations: minutes on two cores) from the shipped ``draft``. A killed command continues where it
stopped when run again on the same folder. The task's knobs are written to ``DIR/task.json`` by
the first command; later commands read them back (giving other knobs is an error).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from . import checks

DEFAULT_OUT = "auto-cei-toy"


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ponder auto-cei`` on ``ponder``'s subparsers."""
    p = subparsers.add_parser("auto-cei", help="Auto-CEI (curriculum expert iteration) on the "
                              "toy world", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["init", "run", "eval"])
    p.add_argument("--out", default=DEFAULT_OUT, type=checks.output_dir,
                   help=f"the run's folder (default ./{DEFAULT_OUT})")
    p.add_argument("--n", type=checks.int_at_least(20), default=None,
                   help="toy problems drawn, 1-4 steps, split 60/15/25 (default 800)")
    p.add_argument("--seed", type=checks.int_at_least(0), default=None,
                   help="problems' seed (default 17)")
    p.add_argument("--k", type=checks.int_at_least(1), default=None,
                   help="samples per question per expert iteration (toy default 4)")
    p.add_argument("--max-iterations", type=checks.int_at_least(1), default=None,
                   help="expert iterations per curriculum step (toy default 2)")
    p.add_argument("--max-curriculum-evals", type=checks.int_at_least(1), default=None,
                   help="values of c1 the hill climb measures (toy default 2)")
    p.add_argument("--retrain-from", choices=["base", "continue"], default=None)
    p.add_argument("--split", choices=["validation", "test"], default="test", help="eval only")
    p.add_argument("--json", default=None, type=checks.output_file,
                   help="eval: also write the metrics here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def _task_knobs(args: argparse.Namespace) -> dict:
    path = Path(args.out) / "task.json"
    given = {k: v for k, v in (("n", args.n), ("seed", args.seed)) if v is not None}
    if path.is_file():
        saved = json.loads(path.read_text())
        clash = {k: v for k, v in given.items() if saved.get(k) != v}
        if clash:
            raise checks.CommandError(f"{args.out} holds a run on other problems ({saved}); "
                                      f"use a new --out for {clash}")
        return saved
    return {"n": 800, "seed": 17, **given}


def run(args: argparse.Namespace) -> int:
    from ..toy.auto_cei import TOY_CONFIG, compare, format_table, toy_task
    from ..toy.models import load_toy_model
    from ..train.auto_cei import AutoCEI

    out = Path(args.out)
    knobs = _task_knobs(args)
    task = toy_task(knobs["n"], seed=knobs["seed"])
    log = (lambda *a: None) if args.quiet else print
    if args.action == "eval":
        if not (out / "state.json").is_file():
            raise checks.CommandError(f"{out} holds no Auto-CEI run: `ponder auto-cei run` first")
        results = compare(out, task=task, progress=not args.quiet, log=log, train=False,
                          split=args.split)
        print(format_table(results))
        best = results["run"]["best"]
        print(f"best Auto-CEI model: {best['model']} (c1 = {best['c1']}, validation f = "
              f"{best['f']:.3f}); c1_0 = {results['run']['c1_0']:.3f}, c2 = "
              f"{results['run']['c2']:.3f}, tau = {results['run']['tau']:.3f}")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return 0
    changes = {k: v for k, v in (("k", args.k), ("max_iterations", args.max_iterations),
                                 ("max_curriculum_evals", args.max_curriculum_evals),
                                 ("retrain_from", args.retrain_from)) if v is not None}
    config = replace(TOY_CONFIG, **changes)
    resuming = (out / "state.json").is_file()
    if resuming and changes:
        raise checks.CommandError(f"{out} holds a run already: its settings cannot change "
                                  f"({', '.join(changes)}); use a new --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / "task.json").write_text(json.dumps(knobs))
    run_ = AutoCEI(task, out, None if resuming else config,
                   base=None if resuming else load_toy_model("draft"),
                   progress=not args.quiet, on_stage=lambda s: log(f"done: {s}"))
    state = run_.init() if args.action == "init" else run_.run()
    log(f"c1_0 = {state['c1_0']:.3f}, c2 = {state['c2']:.3f}, s = {state['s']:.3f}, "
        f"tau = {state['tau']:.3f}; best so far: {state['best']['model']} "
        f"(validation f = {state['best']['f']:.3f}); state in {out / 'state.json'}")
    return 0
