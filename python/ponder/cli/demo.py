"""``ponder demo``: the command-line face of :func:`ponder.demo.run_demo`."""

from __future__ import annotations

import argparse

from . import checks


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``ponder demo`` on the ``ponder`` command's sub-parsers."""
    from ..demo.sections import SECTIONS

    p = sub.add_parser("demo", help="the library end to end on the toy world (the main job)",
                       description="Run every part of ponder on its built-in toy world, offline "
                                   "on the CPU: print a table per section and write "
                                   "OUT/report.md with the plots.")
    p.add_argument("--out", default="ponder-demo", type=checks.output_dir,
                   help="report folder (default ./ponder-demo)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes: a smoke run of about 15 s, not numbers to report")
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), default=None, metavar="SECTION",
                   help=f"run only these sections ({', '.join(SECTIONS)})")
    p.add_argument("--seed", type=checks.seed, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``ponder demo``; returns the exit status."""
    from ..demo import run_demo

    run_demo(args.out, quick=args.quick, sections=args.only, seed=args.seed,
             progress=not args.quiet)
    print(f"wrote {args.out}/report.md")
    return 0
