"""``ponder sample`` and ``ponder experiments samplers``: the samplers on built-in targets.

    ponder sample [SAMPLER] [--target NAME] ...   run a sampler and report what it did
    ponder experiments samplers [--quick]         regenerate the SPS / RTK tables and plots
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import checks

LANGEVIN_SAMPLERS = ("mala", "ula", "sgld", "uld", "sps-sgld", "sps-mala")
DIFFUSION_SAMPLERS = ("ddpm", "rtk-mala", "rtk-uld")
# A step size that works for each built-in target at its default settings.
DEFAULT_STEP = {"gaussian": 0.5, "correlated-gaussian": 0.1, "mixture": 0.3, "logistic": 2e-4,
                "double-well": 0.05}


def add_parsers(subparsers) -> None:
    """Register ``ponder sample`` and ``ponder experiments`` on ``ponder``'s subparsers."""
    from ..samplers import TARGETS

    p = subparsers.add_parser("sample", help="run a sampler on a built-in target")
    p.add_argument("sampler", nargs="?", default="mala",
                   choices=LANGEVIN_SAMPLERS + DIFFUSION_SAMPLERS)
    p.add_argument("--target", default="gaussian", choices=sorted(TARGETS))
    p.add_argument("--dim", type=checks.positive_int, default=None,
                   help="default 2 (3 for logistic)")
    p.add_argument("--chains", type=checks.int_at_least(2), default=1024,
                   help="chains (samples for diffusion)")
    p.add_argument("--steps", type=checks.int_at_least(2), default=1000,
                   help="steps (DDPM: reverse steps)")
    p.add_argument("--step-size", type=checks.positive_real, default=None,
                   help="h (SPS: the inner tau); default depends on the target")
    p.add_argument("--friction", type=checks.positive_real, default=1.0, help="ULD friction gamma")
    p.add_argument("--eta", type=checks.positive_real, default=1.0, help="SPS outer proximal step")
    p.add_argument("--inner-steps", type=checks.positive_int, default=5,
                   help="SPS / RTK inner steps")
    p.add_argument("--segments", type=checks.positive_int, default=10, help="RTK segments K")
    p.add_argument("--batch-size", type=checks.positive_int, default=32,
                   help="SGLD / SPS minibatch (logistic)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", type=checks.device, default="cpu")
    p.add_argument("--backend", choices=["cpu", "cuda", "triton", "torch"], default=None)
    p.add_argument("--seed", type=checks.seed, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_sample)

    p_exp = subparsers.add_parser("experiments", help="regenerate experiment tables and plots")
    p_exp.add_argument("which", choices=["samplers"])
    p_exp.add_argument("--out", default="bench/samplers", type=checks.output_dir)
    p_exp.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p_exp.add_argument("--seed", type=checks.seed, default=0)
    p_exp.add_argument("--quiet", action="store_true")
    p_exp.set_defaults(func=run_experiments)


def _problems(args: argparse.Namespace) -> list[str]:
    """What is wrong with ``ponder sample``'s arguments (drops ``--batch-size`` where
    minibatches make no sense)."""
    problems = []
    if args.sampler in ("sgld", "sps-sgld", "sps-mala") and args.target != "logistic":
        args.batch_size = None  # minibatches need a finite-sum target
    if args.sampler in DIFFUSION_SAMPLERS and args.target in ("logistic", "double-well"):
        problems.append(f"{args.sampler} needs a target with an exact score "
                        "(gaussian, correlated-gaussian, mixture)")
    return problems


def _build_langevin(args: argparse.Namespace, target, step: float):
    from .. import samplers as s

    common = dict(generator=args.seed, backend=args.backend)
    batch = args.batch_size if args.sampler in ("sgld", "sps-sgld", "sps-mala") else None
    if args.sampler in ("ula", "sgld"):
        return s.ULA(target, step, batch_size=batch, **common)
    if args.sampler == "mala":
        return s.MALA(target, step, **common)
    if args.sampler == "uld":
        return s.ULD(target, step, args.friction, **common)
    cls = s.SPS_SGLD if args.sampler == "sps-sgld" else s.SPS_MALA
    return cls(target, args.eta, step, args.inner_steps, batch_size=batch, **common)


def _report_samples(target, x: torch.Tensor, seed: int) -> None:
    from ..samplers import mmd_rbf

    try:
        exact = target.sample(x.shape[0], generator=seed + 1).to(x)
        floor_ref = target.sample(x.shape[0], generator=seed + 2).to(x)
    except NotImplementedError:
        true_w = getattr(target, "true_weights", None)
        print(f"mean         {[round(v, 3) for v in x.double().mean(0).tolist()]}")
        if true_w is not None:
            print(f"true weights {[round(v, 3) for v in true_w.tolist()]} (posterior mean should "
                  "be near them)")
        return
    err = (x.double().mean(0) - exact.double().mean(0)).norm().item()
    print(f"mean error   {err:.4f} (|mean - exact-sample mean|)")
    mmd = mmd_rbf(x, exact, bandwidth=1.0)
    floor = mmd_rbf(floor_ref, exact, bandwidth=1.0)
    print(f"MMD^2        {mmd:.5f} to exact samples (two exact sample sets: {floor:.5f})")


def run_sample(args: argparse.Namespace) -> int:
    """Run ``ponder sample``; returns the exit status."""
    from ..samplers import make_target

    problems = _problems(args)
    if problems:
        print("ponder sample: error: " + "; ".join(problems), file=sys.stderr)
        return 2
    checks.check_backend(args.backend, args.device)
    torch.manual_seed(args.seed)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    device = torch.device(args.device)
    dim = 3 if args.target == "logistic" and args.dim is None else (args.dim or 2)
    # A sampler holds a few [chains, dim] tensors at once (the state, its gradient, a proposal,
    # the noise): sizes that can never fit are refused here, not by the allocator mid-run.
    checks.check_fits(4 * args.chains * dim * dtype.itemsize, device,
                      f"--chains {args.chains} x --dim {dim} in {args.dtype}")
    target = make_target(args.target, dim=dim).to(device=device, dtype=dtype)
    step = args.step_size if args.step_size is not None else DEFAULT_STEP[args.target]
    header = (f"sampler      {args.sampler} on {args.target} (d={target.dim}), {args.dtype} on "
              f"{device}, seed {args.seed}")
    if args.sampler in DIFFUSION_SAMPLERS:
        from .. import samplers as s

        common = dict(generator=args.seed, backend=args.backend, dtype=dtype, device=device)
        if args.sampler == "ddpm":
            sampler = s.DDPM(target, args.steps, **common)
        else:
            cls = s.RTK_MALA if args.sampler == "rtk-mala" else s.RTK_ULD
            sampler = cls(target, args.segments, args.inner_steps, **common)
        print(header)
        result = sampler.sample(args.chains, progress=not args.quiet)
        print(f"samples      {args.chains}, {result.nfe} score evaluations each, "
              f"{result.seconds:.3f} s")
        if result.acceptance is not None:
            print(f"acceptance   {result.acceptance:.3f} (inner MALA)")
        _report_samples(target, result.samples, args.seed)
        return 0
    sampler = _build_langevin(args, target, step)
    print(header)
    x0 = torch.randn(args.chains, target.dim, dtype=dtype, device=device)
    start = time.perf_counter()
    # Only the final state is reported: keeping no trace (burn_in = every step) holds memory to
    # one state however many steps are asked for.
    trace = sampler.run(x0, args.steps, burn_in=args.steps, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    stats = trace.stats
    print(f"chains       {args.chains} x {args.steps} steps (the final states measured), "
          f"step size {step}")
    print(f"gradients    {int(stats['grad_calls'])} calls per chain "
          f"({int(stats['data_grads'])} per-datum gradients)")
    print(f"time         {elapsed:.3f} s, {1e6 * elapsed / args.steps:.1f} us/step "
          "(gradient evaluation included)")
    if "acceptance" in stats:
        print(f"acceptance   {stats['acceptance']:.3f}")
    _report_samples(target, trace.state.x, args.seed)
    return 0


def run_experiments(args: argparse.Namespace) -> int:
    """Run ``ponder experiments samplers``; returns the exit status."""
    from ..samplers.experiments import run_all

    path = run_all(args.out, quick=args.quick, seed=args.seed, progress=not args.quiet)
    print(f"wrote {path} and its plots")
    return 0
