"""The ``ponder`` command.

    ponder demo [--quick] [--out DIR]             the main job: everything on the toy world
    ponder info                                   versions and backends (= python -m ponder)
    ponder sample [SAMPLER] [--target NAME] ...   run a sampler and report what it did
    ponder experiments samplers [--quick]         regenerate the SPS / RTK tables and plots
    ponder toy train [--out DIR] [--models ...]   (re)train the toy models (draft, target, prm,
                                                  retrieval)
    ponder toy eval [--models ...]                greedy accuracy of the shipped toy models
    ponder think [--model M] [--prompts FILE]     ThinK vs dense: cache bytes, decode tok/s
    ponder rsd [--prm toy|oracle] [--delta D ...] RSD next to draft-only and target-only runs
    ponder prm score|collect|train|best-of-n      process reward models on JSONL files"""

from __future__ import annotations

import argparse
import sys

# A module per command family, each with its ``add_parser`` and the code that runs its commands;
# the library code they call lives in the layers below.
from . import demo, prm, rsd, samplers, think, toy


def _run_info(args: argparse.Namespace) -> int:
    from .. import info

    print(info())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``ponder`` parser; each subcommand sets ``func(args) -> exit status``."""
    parser = argparse.ArgumentParser(prog="ponder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    sub.add_parser("info", help="versions and backends").set_defaults(func=_run_info)
    samplers.add_parsers(sub)
    toy.add_parser(sub)
    think.add_parser(sub)
    rsd.add_parser(sub)
    prm.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ponder`` on ``argv`` (default ``sys.argv[1:]``); returns the exit status (2 for bad
    arguments, with the reason on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"ponder {args.command}: {err}", file=sys.stderr)
        return 2
