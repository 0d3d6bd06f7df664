"""``ponder toy train | eval``: (re)train the toy world's models, or measure the shipped ones.

    ponder toy train [--out DIR] [--models ...]   (re)train the toy models (draft, target, prm,
                                                  retrieval)
    ponder toy eval [--models ...]                greedy accuracy of the shipped toy models
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import checks


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``ponder toy`` on ``ponder``'s subparsers."""
    p = subparsers.add_parser("toy", help="the toy world's models")
    p.add_argument("action", choices=["train", "eval"])
    p.add_argument("--models", nargs="+", choices=["draft", "target", "prm", "retrieval"],
                   default=None)
    p.add_argument("--out", default=None, type=checks.output_dir,
                   help="weights folder (default: the package's shipped weights)")
    p.add_argument("--n", type=checks.positive_int, default=300, help="eval: test problems")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def _train(args: argparse.Namespace, names: list[str]) -> int:
    from ..toy import SPECS
    from ..toy.models import default_weights_dir
    from ..toy.train import format_accuracies, train_all

    out = args.out or default_weights_dir()
    lm_names = [n for n in names if n in SPECS]
    if lm_names:
        results = train_all(out, names=lm_names, progress=not args.quiet)
        print(format_accuracies(results))
    if "prm" in names:  # after the LMs: the PRM's data comes from the draft in ``out``
        from ..toy.prm import format_prm_result, train_toy_prm

        print(format_prm_result(train_toy_prm(out, source_dir=out, progress=not args.quiet)))
    if "retrieval" in names:
        from ..toy.retrieval_train import format_retrieval_result, train_retrieval_model

        print(format_retrieval_result(train_retrieval_model(out, progress=not args.quiet)))
    print(f"wrote {out}")
    return 0


def _eval(args: argparse.Namespace, names: list[str]) -> int:
    from ..toy import SPECS, evaluate_accuracy, load_toy_model

    if "prm" in names:  # sampling N drafts per problem is slow: report the measured recipe
        from ..toy.models import read_recipe
        from ..toy.prm import format_prm_result

        try:
            recipe = read_recipe("prm", weights_dir=args.out)
        except (OSError, ValueError) as err:  # ValueError: not JSON
            raise checks.CommandError(f"no toy PRM recipe to report ({err}); `ponder toy train "
                                      "--models prm` writes one") from err
        print(format_prm_result(recipe) + " (recipe.json)")
    for name in [n for n in names if n in SPECS]:
        model, tokenizer = load_toy_model(name, weights_dir=args.out)
        problems = SPECS[name].splits().test[: args.n]
        acc = evaluate_accuracy(model, tokenizer, problems)
        by = ", ".join(f"{k} steps {v:.1%}" for k, v in sorted(acc["by_steps"].items()))
        print(f"{name:<7} greedy accuracy {acc['accuracy']:.1%} on {acc['n']} test problems ({by})")
    if "retrieval" in names:
        from ..toy.retrieval_model import format_retrieval_accuracy, retrieval_accuracy

        model, tokenizer = load_toy_model("retrieval", weights_dir=args.out)
        n = min(args.n, 24)  # an 8K-token prompt takes about a second
        print(format_retrieval_accuracy(retrieval_accuracy(model, tokenizer, n=n), n))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``ponder toy``; returns the exit status."""
    from ..toy import SPECS

    names = args.models or [*SPECS, "prm", "retrieval"]
    if args.action == "eval" and args.out is not None and not Path(args.out).is_dir():
        raise checks.CommandError(f"--out: no such weights folder: {args.out}")
    return (_train if args.action == "train" else _eval)(args, names)
