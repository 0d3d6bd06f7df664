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
import os
import sys

# A module per command family, each with its ``add_parser`` and the code that runs its commands;
# the library code they call lives in the layers below.
from .. import BackendUnavailableError
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


# What a command may raise for bad input (an argument out of range, a file that cannot be read, a
# backend or device that is not here): printed as one line, exit status 2. Anything else is a bug
# and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, OSError, BackendUnavailableError)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def main(argv: list[str] | None = None) -> int:
    """Run ``ponder`` on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Bad arguments or inputs end with one line on stderr, ``ponder <command>: error: <what>``, and
    exit status 2 (argparse's own errors too; it prints the usage first). Returns rather than
    exits, ``--help`` included. ``PONDER_DEBUG=1`` in the
    environment shows the traceback instead.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad argument (argparse printed why)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.func(args)
    except USER_ERRORS as err:
        if os.environ.get("PONDER_DEBUG", "") not in ("", "0"):
            raise
        name = " ".join(filter(None, [args.command, getattr(args, "prm_command", None)]))
        print(f"ponder {name}: error: {_one_line(err)}", file=sys.stderr)
        return 2
