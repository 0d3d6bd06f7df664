"""The demo's sections: each runs one part of the library on the toy world and returns a
:class:`~ponder.demo.report.Section`. They only call public APIs of the layers below (toy models,
samplers, ...), so each is also an example of using them.

A section takes a :class:`Context` (output folder, quick or full sizes, seed, progress) and is
registered in :data:`SECTIONS` in the order the demo prints them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .report import Section, Table

__all__ = ["SECTIONS", "Context"]


@dataclass(frozen=True)
class Context:
    """What every section is given: ``out`` (a folder for images), ``quick`` (small sizes: a
    smoke run, not numbers to report), ``seed`` and ``progress`` (tqdm bars)."""

    out: Path
    quick: bool = False
    seed: int = 0
    progress: bool = True


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def toy_section(ctx: Context) -> Section:
    """The toy world: the shipped draft and target models' greedy accuracy on held-out problems
    (and the retrieval model's lookup accuracy by context length, when it is shipped)."""
    from ..toy import SPECS, evaluate_accuracy, load_toy_model, make_retrieval
    from ..toy.models import default_weights_dir

    start = time.perf_counter()
    n = 60 if ctx.quick else 300
    rows, acc = [], {}
    for name in ("draft", "target"):
        model, tok = load_toy_model(name)
        params = sum(p.numel() for p in model.parameters())
        result = evaluate_accuracy(model, tok, SPECS[name].splits().test[:n])
        acc[name] = result["accuracy"]
        by = result["by_steps"]
        rows.append([name, f"{params / 1e6:.2f}M", _pct(result["accuracy"]),
                     *(_pct(by.get(k, float("nan"))) for k in (1, 2, 3))])
    tables = [Table(["model", "parameters", "accuracy", "1 step", "2 steps", "3 steps"], rows,
                    caption=f"greedy accuracy on the first {n} test problems (final answer "
                            "checked by ponder.toy.verify)")]
    findings = [(f"the target model solves {_pct(acc['target'])} of the problems, the draft "
                 f"{_pct(acc['draft'])}: room for a PRM to pick better draft samples and for RSD "
                 "to call the target only where the draft fails")]

    if (default_weights_dir() / "retrieval" / "model.safetensors").is_file():
        from ..toy.retrieval_model import evaluate_retrieval

        model, tok = load_toy_model("retrieval")
        lengths = (512, 1024) if ctx.quick else (512, 1024, 2048)
        m = 20 if ctx.quick else 100
        rrows = []
        for length in lengths:
            r = evaluate_retrieval(model, tok, make_retrieval(m, context_tokens=length,
                                                              seed=ctx.seed + 1))
            rrows.append([str(length), str(r["n"]), _pct(r["accuracy"])])
        tables.append(Table(["context tokens", "lookups", "accuracy"], rrows,
                            caption="the retrieval model (key-value lookup among distractors)"))
    return Section(
        "toy", "The toy world and its models",
        intro="Multi-step arithmetic problems written step by step (steps separated by a blank "
              "line, a final 'Answer: N'), and small Llama models ponder trained on them "
              "(shipped in the package; `ponder toy train` retrains them).",
        tables=tables, findings=findings, seconds=time.perf_counter() - start)


def samplers_section(ctx: Context) -> Section:
    """SPS vs SGLD vs MALA (mass reaching the other modes of a 2-D mixture, from one mode) and
    RTK vs DDPM (diffusion inference), as MMD against gradient / score evaluations."""
    from ..samplers import experiments as ex

    start = time.perf_counter()
    if ctx.quick:
        sps = ex.sps_experiment((2,), chains=200, budget=200, checkpoints=4, seed=ctx.seed,
                                quick=True, progress=ctx.progress)
        rtk = ex.rtk_experiment((2,), n=300, seed=ctx.seed, quick=True, progress=ctx.progress)
    else:
        sps = ex.sps_experiment((2,), chains=1000, budget=800, checkpoints=16, seed=ctx.seed,
                                quick=True, progress=ctx.progress)
        rtk = ex.rtk_experiment((2,), n=1000, seed=ctx.seed, quick=True, progress=ctx.progress)

    floor = next(r for r in sps if r.sampler == "floor")
    level = max(2 * floor.mmd, 0.005)
    rows = []
    for name, params in dict.fromkeys((r.sampler, r.params) for r in sps if r.sampler != "floor"):
        runs = [r for r in sps if (r.sampler, r.params) == (name, params)]
        half = runs[max(0, math.ceil(len(runs) / 2) - 1)]
        reach = ex._calls_to_reach(runs, level)
        rows.append([name, params, f"{half.mmd:.4f} @ {half.cost}",
                     f"{runs[-1].mmd:.4f} @ {runs[-1].cost}",
                     str(reach) if reach else "not reached"])
    tables = [Table(["sampler", "setting", "MMD^2 @ calls (half)", "MMD^2 @ calls (end)",
                     f"calls to MMD^2 <= {level:.4f}"], rows,
                    caption="2-D mixture, modes at +-5 e_1 and +-5 e_2, all chains start in one "
                            f"mode (exact-sample floor {floor.mmd:.4f})")]
    rfloor = next(r for r in rtk if r.sampler == "floor")
    tables.append(Table(["sampler", "setting", "score evaluations", "MMD^2"],
                        [[r.sampler, r.params, str(r.cost), f"{r.mmd:.4f}"]
                         for r in rtk if r.sampler != "floor"],
                        caption="diffusion inference on a 2-D mixture (exact-sample floor "
                                f"{rfloor.mmd:.4f})"))
    try:
        images = ex.plot(sps, rtk, ctx.out)
    except ImportError:  # matplotlib is optional
        images = []
    findings = [line.removeprefix("- ") for line in ex.findings(sps, rtk).splitlines()]
    return Section(
        "samplers", "Samplers: SPS and RTK against their baselines",
        intro="ponder.samplers on the fused Langevin kernels (ponder.ops.langevin): the "
              "stochastic proximal samplers against SGLD and MALA, and reverse-transition-kernel "
              "diffusion inference against DDPM. `ponder experiments samplers` runs the full "
              "grids in d = 2, 10, 50.",
        tables=tables, findings=findings, images=images, seconds=time.perf_counter() - start)


SECTIONS: dict[str, Callable[[Context], Section]] = {
    "toy": toy_section,
    "samplers": samplers_section,
}
