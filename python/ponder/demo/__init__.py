"""``ponder demo``: the library end to end on the built-in toy world, offline, on a CPU.

    from ponder.demo import run_demo
    sections = run_demo("ponder-demo", quick=True)   # prints each section as it finishes
    # ponder-demo/report.md and the plots next to it

Each section (:data:`ponder.demo.sections.SECTIONS`) runs one part of the library on the toy
models ponder ships and prints a table; the report collects them.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .report import Section, render_markdown, render_text
from .sections import SECTIONS, Context

__all__ = ["SECTIONS", "Section", "run_demo"]


def run_demo(
    out: str | Path = "ponder-demo",
    *,
    quick: bool = False,
    sections: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    echo: bool = True,
) -> list[Section]:
    """Run the demo's sections, print each (``echo``), write ``out/report.md`` and the plots.

    Parameters
    ----------
    out : str or Path
        The report's folder (created).
    quick : bool
        Small sizes (a smoke run of about 15 s, not numbers to report).
    sections : sequence of str, optional
        Names from :data:`SECTIONS` to run, in the demo's order; all by default.
    seed : int
        Seeds every random choice, so a run is reproducible.
    progress, echo : bool
        Progress bars; printing each section as it finishes.

    Returns
    -------
    list of Section
    """
    names = list(SECTIONS) if sections is None else list(sections)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ValueError(f"run_demo: unknown section(s) {unknown}; known: {list(SECTIONS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(out=out, quick=quick, seed=seed, progress=progress)
    torch.manual_seed(seed)
    done: list[Section] = []
    start = time.perf_counter()
    for name in (n for n in SECTIONS if n in names):
        section = SECTIONS[name](ctx)
        done.append(section)
        if echo:
            print(render_text(section), flush=True)
    header = (f"{'Quick run (small sizes: a smoke test, not numbers to report). ' if quick else ''}"
              f"Seed {seed}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{platform.machine()} CPU; {time.perf_counter() - start:.0f} s in all. "
              f"Regenerate with `ponder demo{' --quick' if quick else ''} --out {out}`.")
    (out / "report.md").write_text(render_markdown(done, header=header, out_dir=out))
    return done
