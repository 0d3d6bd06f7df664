"""The ``ponder`` command.

    ponder info                      versions and backends (same as ``python -m ponder``)
    ponder sample [options]          a short MALA / ULA / ULD run on a Gaussian target
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch


def _cmd_info(args: argparse.Namespace) -> int:
    from . import info

    print(info())
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    """Sample N(mean, scale^2 I) with the fused kernels and report what happened."""
    from tqdm import tqdm

    from .ops import langevin

    torch.manual_seed(args.seed)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    device = torch.device(args.device)
    mean, scale = args.mean, args.scale
    chains, dim = args.chains, args.dim

    def logp_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = (x - mean) / scale
        return -0.5 * (z * z).sum(-1), -z / scale

    x = torch.randn(chains, dim, dtype=dtype, device=device)
    v = torch.zeros_like(x)
    logp, grad = logp_and_grad(x)
    accepted_total = 0
    kept = []
    burn_in = args.steps // 2
    start = time.perf_counter()
    for step in tqdm(range(args.steps), desc=f"{args.sampler}", disable=args.quiet):
        if args.sampler == "mala":
            x_prop = langevin.mala_propose(x, grad, args.step_size, backend=args.backend)
            logp_prop, grad_prop = logp_and_grad(x_prop)
            x, logp, grad, acc = langevin.mala_accept(
                x, logp, grad, x_prop, logp_prop, grad_prop, args.step_size, backend=args.backend
            )
            accepted_total += int(acc.sum())
        elif args.sampler == "ula":
            x = langevin.ula_step(x, grad, args.step_size, backend=args.backend)
            _, grad = logp_and_grad(x)
        else:
            x, v = langevin.uld_step(x, v, grad, args.step_size, args.friction,
                                     backend=args.backend)
            _, grad = logp_and_grad(x)
        if step >= burn_in:
            kept.append(x.double().mean(0).mean().item())
            kept.append(x.double().var(0).mean().item())
    elapsed = time.perf_counter() - start
    means, variances = kept[0::2], kept[1::2]
    est_mean = sum(means) / len(means)
    est_var = sum(variances) / len(variances)
    print(f"sampler      {args.sampler} on N({mean}, {scale}^2 I), {chains} chains x d={dim}, "
          f"{args.dtype} on {device}")
    print(f"steps        {args.steps} (second half kept), step size {args.step_size}")
    print(f"time         {elapsed:.3f} s, {1e6 * elapsed / args.steps:.1f} us/step "
          "(gradient evaluation included)")
    if args.sampler == "mala":
        print(f"acceptance   {accepted_total / (chains * args.steps):.3f}")
    print(f"mean         {est_mean:.4f} (target {mean})")
    print(f"variance     {est_var:.4f} (target {scale * scale:.4f})")
    ok = abs(est_mean - mean) < 0.1 * scale and abs(est_var / scale**2 - 1) < 0.15
    print("result       " + ("moments match the target" if ok else
                            "moments are off (ULA/ULD are biased at large step sizes)"))
    return 0 if ok or args.sampler != "mala" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ponder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions and backends")
    p_info.set_defaults(func=_cmd_info)
    p = sub.add_parser("sample", help="a short sampler run on a Gaussian target")
    p.add_argument("--sampler", choices=["mala", "ula", "uld"], default="mala")
    p.add_argument("--chains", type=int, default=1024)
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--step-size", type=float, default=0.5)
    p.add_argument("--friction", type=float, default=1.0, help="ULD friction gamma")
    p.add_argument("--mean", type=float, default=1.0)
    p.add_argument("--scale", type=float, default=2.0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", choices=["cpu", "cuda", "triton", "torch"], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sample":
        if args.steps < 2 or args.chains < 1 or args.dim < 1:
            print("ponder sample: --steps must be >= 2, --chains and --dim >= 1", file=sys.stderr)
            return 2
        if not (math.isfinite(args.step_size) and args.step_size > 0):
            print("ponder sample: --step-size must be a finite number > 0", file=sys.stderr)
            return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
