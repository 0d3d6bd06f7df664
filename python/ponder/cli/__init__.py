"""The ``ponder`` command.

    ponder demo [--quick] [--out DIR]             the main job: everything on the toy world
    ponder info                                   versions and backends (= python -m ponder)
    ponder sample [SAMPLER] [--target NAME] ...   run a sampler and report what it did
    ponder experiments samplers [--quick]         regenerate the SPS / RTK tables and plots
    ponder toy train [--out DIR] [--models ...]   (re)train the toy models (draft, target, prm,
                                                  retrieval)
    ponder toy eval [--models ...]                greedy accuracy of the shipped toy models
    ponder think [--model M] [--prompts FILE]     ThinK vs dense: cache bytes, decode tok/s
    ponder rsd [--prm toy|free|oracle] [--delta D ...] RSD next to draft-only and target-only runs
    ponder prm score|collect|train|best-of-n      process reward models on JSONL files
    ponder oreo collect|train|search|effect       OREO: value model + policy, value-guided search
    ponder first extract|calibrate|train|eval|toy FIRST distillation (top-k, calibrated teacher)
    ponder auto-cei init|run|eval                 Auto-CEI on the toy world (resumable)
    ponder mathhay [generate|qc|haystack|eval]    the MathHay benchmark (offline end to end)
    ponder bolt bootstrap|sft|dpo|effect          BOLT: long thought from in-context examples,
                                                  SFT, online DPO (the toy world by default)

A bad argument or input (a missing file, a number out of range, a device or backend that is not
here, a model folder that cannot be loaded) stops the command with one line, "ponder <command>:
error: ...", and exit status 2, before any work wherever it can be told in advance. PONDER_DEBUG=1
in the environment shows the traceback instead. Models are read from local folders with safetensors weights only, unless a
command is given --allow-download (Hugging Face Hub ids) or --allow-pickle (*.bin weights)."""

from __future__ import annotations

import argparse
import os
import sys

# A module per command family, each with its ``add_parser`` and the code that runs its commands;
# the library code they call lives in the layers below.
from .. import BackendUnavailableError
from . import auto_cei, bolt, checks, demo, first, mathhay, oreo, prm, rsd, samplers, think, toy


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
    oreo.add_parser(sub)
    first.add_parser(sub)
    auto_cei.add_parser(sub)
    mathhay.add_parser(sub)
    bolt.add_parser(sub)
    return parser


# What a command may raise for bad input (an argument out of range, a file that cannot be read, a
# backend or device that is not here, a model folder that cannot be loaded): printed as one line,
# exit status 2. ponder's own checks raise ValueError / TypeError naming the argument (ponder.
# validation). Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, TypeError, OSError, BackendUnavailableError)
DEBUG_ENV = "PONDER_DEBUG"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 400 else text[:397] + "..."


def _out_of_memory(err: BaseException) -> bool:
    """An allocation that failed: torch's CUDA OutOfMemoryError, or the CPU allocator's
    RuntimeError (which has no class of its own)."""
    import torch

    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err))


def main(argv: list[str] | None = None) -> int:
    """Run ``ponder`` on ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Bad arguments or inputs end with one line on stderr, ``ponder <command>: error: <what>``, and
    exit status 2 (argparse's own errors too; it prints the usage first); so does running out of
    memory. An error that a command's own checks did not raise (one from ponder's library layers,
    transformers or torch) carries a hint to set ``PONDER_DEBUG=1``, which shows the traceback
    instead. Ctrl-C ends with exit status 130. Returns rather than exits, ``--help`` included.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad argument (argparse printed why)
        return exit_.code if isinstance(exit_.code, int) else 2
    # "ponder prm score", "ponder mathhay qc": a family's subcommand is its ``<family>_command``.
    family = args.command.replace("-", "_")
    name = " ".join(filter(None, [args.command, getattr(args, f"{family}_command", None)]))
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"ponder {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug or not (isinstance(err, USER_ERRORS) or _out_of_memory(err)):
            raise
        what = _one_line(err)
        if _out_of_memory(err):
            what = (f"out of memory ({what[:200]}): ask for less (fewer chains or tokens, a "
                    "smaller batch)")
        if not isinstance(err, checks.CommandError):
            what += f" ({DEBUG_ENV}=1 shows the traceback)"
        print(f"ponder {name}: error: {what}", file=sys.stderr)
        return 2
