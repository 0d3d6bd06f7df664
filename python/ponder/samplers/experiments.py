"""The SPS and RTK papers' experiments on Gaussian mixtures, as tables (markdown) and plots (PNG).

    ponder experiments samplers [--quick] [--out bench/samplers]

SPS vs SGLD vs MALA: MMD (and TV in 2-D) against gradient calls on the symmetric mixtures of
:meth:`GaussianMixture.symmetric` with modes at +-5 e_j (radius 5, so that crossing between modes
is rare for a Langevin chain) in d = 2, 10, 50, all chains started in ONE mode: what is measured
is how fast mass reaches the other modes. RTK-MALA / RTK-ULD vs DDPM: MMD against score
evaluations (NFE) for d = 2, 10, on the default radius-4 mixture.

Settings the papers leave open are chosen here and swept a little: each sampler runs a few
step sizes (and SPS a few (eta, tau, S)), and the tables give every setting, the plots the best.
MALA-type step sizes shrink like (2 / d)^(1/3), MALA's optimal scaling. MMD uses an RBF
bandwidth of sqrt(d) (the distance scale of two draws from one unit-std mode), fixed per
dimension so values compare across samplers; the "floor" row is the MMD between two independent
exact sample sets of the same size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ._core import Sampler
from .diffusion import DDPM, RTK_MALA, RTK_ULD
from .langevin import MALA, ULA
from ..figures import pyplot, save
from .metrics import mmd_rbf, tv_histogram
from .sps import SPS_MALA, SPS_SGLD
from .targets import GaussianMixture

SPS_RADIUS = 5.0


@dataclasses.dataclass
class Row:
    experiment: str
    dim: int
    sampler: str
    params: str
    cost: int  # gradient calls (SPS) or score evaluations (RTK) per chain / sample
    mmd: float
    tv: float | None = None


def _sps_settings(dim: int, quick: bool
                  ) -> list[tuple[str, str, Callable[[GaussianMixture, int], Sampler]]]:
    c = (2.0 / dim) ** (1.0 / 3.0)  # MALA-type steps shrink like d^(-1/3)

    def mala(h):
        return (f"h={h * c:.3g}", lambda t, s: MALA(t, h * c, generator=s))

    def sps_mala(eta, tau, steps):
        return (f"eta={eta},tau={tau * c:.3g},S={steps}",
                lambda t, s: SPS_MALA(t, eta, tau * c, steps, generator=s))

    def sgld(h):
        return (f"h={h}", lambda t, s: ULA(t, h, generator=s))

    def sps_sgld(eta, tau, steps):
        return (f"eta={eta},tau={tau},S={steps}",
                lambda t, s: SPS_SGLD(t, eta, tau, steps, generator=s))

    grid = [
        ("SGLD", [sgld(0.05), sgld(0.2), sgld(0.5)]),
        ("MALA", [mala(0.2), mala(0.5), mala(1.0)]),
        ("SPS-SGLD", [sps_sgld(1, 0.2, 5), sps_sgld(4, 0.5, 5), sps_sgld(16, 0.5, 10)]),
        ("SPS-MALA", [sps_mala(1, 0.5, 5), sps_mala(4, 0.8, 5), sps_mala(16, 1.0, 10)]),
    ]
    # quick: the middle setting of each sampler only
    return [(name, params, build) for name, options in grid
            for params, build in (options[1:2] if quick else options)]


def _distance(x: torch.Tensor, reference: torch.Tensor, dim: int) -> tuple[float, float | None]:
    mmd = mmd_rbf(x, reference, bandwidth=math.sqrt(dim))
    tv = None
    if dim == 2:
        tv = tv_histogram(x, reference, bins=24, range=((-8.0, 8.0), (-8.0, 8.0)))
    return mmd, tv


def sps_experiment(dims: Sequence[int] = (2, 10, 50), *, chains: int = 1000, budget: int = 2000,
                   checkpoints: int = 40, seed: int = 0, quick: bool = False,
                   progress: bool = True) -> list[Row]:
    """MMD / TV against gradient calls for SGLD, MALA, SPS-SGLD and SPS-MALA."""
    rows: list[Row] = []
    for dim in dims:
        settings = _sps_settings(dim, quick)
        target = GaussianMixture.symmetric(dim, radius=SPS_RADIUS)
        reference = target.sample(chains, generator=seed + 1).float()
        floor = target.sample(chains, generator=seed + 2).float()
        rows.append(Row("sps", dim, "floor", "exact vs exact", 0, *_distance(floor, reference, dim)))
        gen = torch.Generator().manual_seed(seed)
        start_mode = target.means[0].float()
        x0 = start_mode + 0.1 * torch.randn(chains, dim, generator=gen)
        marks = [round(budget * (i + 1) / checkpoints) for i in range(checkpoints)]
        for name, params, build in tqdm(settings, desc=f"sps d={dim}", disable=not progress):
            sampler = build(target, seed)
            state = sampler.init(x0)
            todo = list(marks)
            while todo and state.grad_calls < budget + 1:
                state = sampler.step(state)
                while todo and state.grad_calls >= todo[0]:
                    rows.append(Row("sps", dim, name, params, state.grad_calls,
                                    *_distance(state.x, reference, dim)))
                    todo.pop(0)
    return rows


def rtk_experiment(dims: Sequence[int] = (2, 10), *, n: int = 2000, seed: int = 0,
                   quick: bool = False, progress: bool = True) -> list[Row]:
    """MMD against score evaluations for DDPM, RTK-MALA and RTK-ULD."""
    ddpm_steps = (1000, 100, 50, 20, 10) if not quick else (200, 20)
    rtk_shapes = ((4, 2), (5, 3), (10, 3), (10, 5), (10, 10)) if not quick else ((10, 5),)
    rows: list[Row] = []
    for dim in dims:
        target = GaussianMixture.symmetric(dim)
        reference = target.sample(n, generator=seed + 1).float()
        floor = target.sample(n, generator=seed + 2).float()
        rows.append(Row("rtk", dim, "floor", "exact vs exact", 0, *_distance(floor, reference, dim)))
        runs: list[tuple[str, str, object]] = [
            ("DDPM", f"steps={k}", DDPM(target, k, generator=seed)) for k in ddpm_steps
        ]
        for segments, inner in rtk_shapes:
            runs.append(("RTK-MALA", f"K={segments},S={inner}",
                         RTK_MALA(target, segments, inner, generator=seed)))
            runs.append(("RTK-ULD", f"K={segments},S={inner}",
                         RTK_ULD(target, segments, inner, generator=seed)))
        for name, params, sampler in tqdm(runs, desc=f"rtk d={dim}", disable=not progress):
            result = sampler.sample(n)  # type: ignore[attr-defined]
            rows.append(Row("rtk", dim, name, params, result.nfe,
                            *_distance(result.samples.float(), reference, dim)))
    return rows


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _calls_to_reach(rows: list[Row], level: float) -> int | None:
    hits = [r.cost for r in rows if r.mmd <= level]
    return min(hits) if hits else None


def sps_table(rows: list[Row]) -> str:
    out = []
    for dim in sorted({r.dim for r in rows}):
        sub = [r for r in rows if r.dim == dim]
        floor = next(r for r in sub if r.sampler == "floor")
        level = max(2 * floor.mmd, 0.005)
        floor_tv = f", floor TV {floor.tv:.3f}" if floor.tv is not None else ""
        out.append(f"\n#### d = {dim} (floor MMD {floor.mmd:.4f}{floor_tv}; 'calls to reach' "
                   f"uses MMD <= {level:.4f})\n")
        out.append("| sampler | setting | MMD at 1/4 budget | at 1/2 | at full budget | TV at full"
                   " | calls to reach |")
        out.append("|---|---|---|---|---|---|---|")
        for (name, params) in dict.fromkeys((r.sampler, r.params) for r in sub if r.sampler != "floor"):
            runs = [r for r in sub if (r.sampler, r.params) == (name, params)]
            q = [runs[max(0, math.ceil(len(runs) * f) - 1)] for f in (0.25, 0.5, 1.0)]
            reach = _calls_to_reach(runs, level)
            out.append(f"| {name} | {params} | {_fmt(q[0].mmd)} | {_fmt(q[1].mmd)} | "
                       f"{_fmt(q[2].mmd)} | {_fmt(q[2].tv)} | {reach if reach else 'not reached'} |")
    return "\n".join(out)


def rtk_table(rows: list[Row]) -> str:
    out = ["\n| d | sampler | setting | NFE | MMD | TV |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.dim} | {r.sampler} | {r.params} | {r.cost} | {_fmt(r.mmd)} | {_fmt(r.tv)} |")
    return "\n".join(out)


def findings(sps_rows: list[Row], rtk_rows: list[Row]) -> str:
    """Plain statements computed from the rows: per dimension, the fewest gradient calls (SPS) or
    score evaluations (RTK) each sampler needed to reach the MMD level, best setting."""
    out = []
    for exp, rows, unit in (("sps", sps_rows, "gradient calls"), ("rtk", rtk_rows, "NFE")):
        for dim in sorted({r.dim for r in rows}):
            sub = [r for r in rows if r.dim == dim]
            floor = next(r for r in sub if r.sampler == "floor")
            level = max(2 * floor.mmd, 0.005)
            best: dict[str, int | None] = {}
            for r in sub:
                if r.sampler == "floor":
                    continue
                best.setdefault(r.sampler, None)
                if r.mmd <= level and (best[r.sampler] is None or r.cost < best[r.sampler]):
                    best[r.sampler] = r.cost
            parts = [f"{name} {cost if cost is not None else 'never (within the budget)'}"
                     for name, cost in best.items()]
            out.append(f"- {exp.upper()}, d = {dim}: fewest {unit} to MMD^2 <= {level:.4f}: "
                       + "; ".join(parts) + ".")
    return "\n".join(out)


def _best_runs(rows: list[Row]) -> dict[tuple[int, str], list[Row]]:
    """Per (dim, sampler): the setting with the lowest final MMD."""
    best: dict[tuple[int, str], list[Row]] = {}
    for key in dict.fromkeys((r.dim, r.sampler, r.params) for r in rows if r.sampler != "floor"):
        runs = [r for r in rows if (r.dim, r.sampler, r.params) == key]
        slot = (key[0], key[1])
        if slot not in best or runs[-1].mmd < best[slot][-1].mmd:
            best[slot] = runs
    return best


def plot(sps_rows: list[Row], rtk_rows: list[Row], out: Path) -> list[Path]:
    """sps.png (MMD vs gradient calls, best setting per sampler) and rtk.png (MMD vs NFE)."""
    plt = pyplot("samplers.experiments.plot")
    paths = []
    if sps_rows:
        dims = sorted({r.dim for r in sps_rows})
        fig, axes = plt.subplots(1, len(dims), figsize=(4.5 * len(dims), 3.6), squeeze=False)
        best = _best_runs(sps_rows)
        for ax, dim in zip(axes[0], dims):
            for (d, name), runs in best.items():
                if d == dim:
                    ax.plot([r.cost for r in runs], [max(r.mmd, 1e-5) for r in runs], marker="o",
                            ms=3, label=f"{name} ({runs[0].params})")
            floor = next(r for r in sps_rows if r.dim == dim and r.sampler == "floor")
            ax.axhline(max(floor.mmd, 1e-5), color="grey", ls=":", label="exact-sample floor")
            ax.set(xlabel="gradient calls per chain", ylabel="MMD^2 (RBF, bw sqrt(d))", yscale="log",
                   title=f"mixture, d = {dim}")
            ax.legend(fontsize=7)
        paths.append(save(fig, out / "sps.png", dpi=110))
    if rtk_rows:
        dims = sorted({r.dim for r in rtk_rows})
        fig, axes = plt.subplots(1, len(dims), figsize=(4.5 * len(dims), 3.6), squeeze=False)
        for ax, dim in zip(axes[0], dims):
            for name in ("DDPM", "RTK-MALA", "RTK-ULD"):
                runs = sorted((r for r in rtk_rows if r.dim == dim and r.sampler == name),
                              key=lambda r: r.cost)
                ax.plot([r.cost for r in runs], [max(r.mmd, 1e-5) for r in runs], marker="o",
                        label=name)
            floor = next(r for r in rtk_rows if r.dim == dim and r.sampler == "floor")
            ax.axhline(max(floor.mmd, 1e-5), color="grey", ls=":", label="exact-sample floor")
            ax.set(xlabel="score evaluations (NFE)", ylabel="MMD^2 (RBF, bw sqrt(d))", xscale="log",
                   yscale="log", title=f"mixture, d = {dim}")
            ax.legend(fontsize=7)
        paths.append(save(fig, out / "rtk.png", dpi=110))
    return paths


def run_all(out: str | Path = "bench/samplers", *, quick: bool = False, seed: int = 0,
            progress: bool = True) -> Path:
    """Run both experiments, write ``out/README.md`` (tables) and the plots; returns the
    markdown path. ``quick`` shrinks everything (a smoke run, not the reported numbers)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        sps_rows = sps_experiment((2,), chains=300, budget=300, checkpoints=4, seed=seed,
                                  quick=True, progress=progress)
        rtk_rows = rtk_experiment((2,), n=400, seed=seed, quick=True, progress=progress)
    else:
        sps_rows = sps_experiment(seed=seed, progress=progress)
        rtk_rows = rtk_experiment(seed=seed, progress=progress)
    try:
        images = plot(sps_rows, rtk_rows, out)
    except ImportError:
        images = []
    lines = [
        "# Sampler experiments (SPS and RTK papers, on Gaussian mixtures)",
        "",
        "Regenerate with `ponder experiments samplers" + (" --quick" if quick else "") +
        f" --out {out}` (CPU, seed {seed}). "
        + ("QUICK RUN: small sizes, a smoke test, not the reported numbers. " if quick else "")
        + "Settings and their reasons: `ponder/samplers/experiments.py` (module docstring).",
        "",
        "## Findings (computed from the tables below)",
        "",
        findings(sps_rows, rtk_rows),
        "",
        "## SPS vs SGLD vs MALA: MMD^2 against gradient calls",
        "",
        "Target: equal-weight modes at +-5 e_j (j < min(d, 4)), unit std; all chains start in "
        "the mode at +5 e_1. SGLD uses the full gradient here (the mixture is not a finite sum), "
        "so it is ULA. MMD^2 with an RBF kernel of bandwidth sqrt(d); TV from 24 x 24 "
        "histograms on [-8, 8]^2 (biased upwards by sampling noise: compare with the floor).",
        sps_table(sps_rows),
        "",
        "## RTK-MALA / RTK-ULD vs DDPM: MMD^2 against score evaluations",
        "",
        "Horizon T = 5; RTK with K segments and S inner steps (NFE = K (S + 1)); exact energies "
        "for RTK-MALA; default inner step sizes (module docstring of ponder.samplers.diffusion).",
        rtk_table(rtk_rows),
        "",
    ]
    lines += [f"![{p.stem}]({p.name})" for p in images]
    if not images:
        lines.append("(plots skipped: matplotlib is not installed; pip install matplotlib)")
    md = out / "README.md"
    md.write_text("\n".join(lines) + "\n")
    return md


__all__ = [
    "Row",
    "findings",
    "plot",
    "rtk_experiment",
    "rtk_table",
    "run_all",
    "sps_experiment",
    "sps_table",
]
