"""The ``ponder`` command.

    ponder demo [--quick] [--out DIR]             the main job: everything on the toy world
    ponder info                                   versions and backends (= python -m ponder)
    ponder sample [SAMPLER] [--target NAME] ...   run a sampler and report what it did
    ponder experiments samplers [--quick]         regenerate the SPS / RTK tables and plots
    ponder toy train [--out DIR] [--models ...]   (re)train the toy models (draft, target, prm,
                                                  retrieval)
    ponder toy eval [--models ...]                greedy accuracy of the shipped toy models
    ponder think [--model M] [--prompts FILE]     ThinK vs dense: cache bytes, decode tok/s
    ponder prm score|collect|train|best-of-n      process reward models on JSONL files
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

LANGEVIN_SAMPLERS = ("mala", "ula", "sgld", "uld", "sps-sgld", "sps-mala")
DIFFUSION_SAMPLERS = ("ddpm", "rtk-mala", "rtk-uld")
# A step size that works for each built-in target at its default settings.
DEFAULT_STEP = {"gaussian": 0.5, "correlated-gaussian": 0.1, "mixture": 0.3, "logistic": 2e-4,
                "double-well": 0.05}


def _cmd_info(args: argparse.Namespace) -> int:
    from . import info

    print(info())
    return 0


def _build_langevin(args: argparse.Namespace, target, step: float):
    from . import samplers as s

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
    from .samplers import mmd_rbf

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


def _cmd_sample(args: argparse.Namespace) -> int:
    from .samplers import make_target

    torch.manual_seed(args.seed)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    device = torch.device(args.device)
    dim = 3 if args.target == "logistic" and args.dim is None else (args.dim or 2)
    target = make_target(args.target, dim=dim).to(device=device, dtype=dtype)
    step = args.step_size if args.step_size is not None else DEFAULT_STEP[args.target]
    print(f"sampler      {args.sampler} on {args.target} (d={target.dim}), {args.dtype} on "
          f"{device}, seed {args.seed}")
    if args.sampler in DIFFUSION_SAMPLERS:
        from . import samplers as s

        common = dict(generator=args.seed, backend=args.backend, dtype=dtype, device=device)
        if args.sampler == "ddpm":
            sampler = s.DDPM(target, args.steps, **common)
        else:
            cls = s.RTK_MALA if args.sampler == "rtk-mala" else s.RTK_ULD
            sampler = cls(target, args.segments, args.inner_steps, **common)
        result = sampler.sample(args.chains, progress=not args.quiet)
        print(f"samples      {args.chains}, {result.nfe} score evaluations each, "
              f"{result.seconds:.3f} s")
        if result.acceptance is not None:
            print(f"acceptance   {result.acceptance:.3f} (inner MALA)")
        _report_samples(target, result.samples, args.seed)
        return 0
    sampler = _build_langevin(args, target, step)
    x0 = torch.randn(args.chains, target.dim, dtype=dtype, device=device)
    start = time.perf_counter()
    trace = sampler.run(x0, args.steps, burn_in=args.steps // 2, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    stats = trace.stats
    print(f"chains       {args.chains} x {args.steps} steps (second half kept), step size {step}")
    print(f"gradients    {int(stats['grad_calls'])} calls per chain "
          f"({int(stats['data_grads'])} per-datum gradients)")
    print(f"time         {elapsed:.3f} s, {1e6 * elapsed / args.steps:.1f} us/step "
          "(gradient evaluation included)")
    if "acceptance" in stats:
        print(f"acceptance   {stats['acceptance']:.3f}")
    _report_samples(target, trace.state.x, args.seed)
    return 0


def _cmd_experiments(args: argparse.Namespace) -> int:
    from .samplers.experiments import run_all

    path = run_all(args.out, quick=args.quick, seed=args.seed, progress=not args.quiet)
    print(f"wrote {path} and its plots")
    return 0


def _cmd_toy(args: argparse.Namespace) -> int:
    from .toy import SPECS, evaluate_accuracy, load_toy_model

    if args.action == "train":
        from .toy.models import default_weights_dir
        from .toy.train import format_accuracies, train_all

        out = args.out or default_weights_dir()
        names = args.models or [*SPECS, "prm", "retrieval"]
        lm_names = [n for n in names if n in SPECS]
        if lm_names:
            results = train_all(out, names=lm_names, progress=not args.quiet)
            print(format_accuracies(results))
        if "prm" in names:  # after the LMs: the PRM's data comes from the draft in ``out``
            from .toy.prm import format_prm_result, train_toy_prm

            print(format_prm_result(train_toy_prm(out, source_dir=out, progress=not args.quiet)))
        if "retrieval" in names:
            from .toy.retrieval_train import format_retrieval_result, train_retrieval_model

            print(format_retrieval_result(train_retrieval_model(out, progress=not args.quiet)))
        print(f"wrote {out}")
        return 0
    names = args.models or [*SPECS, "prm", "retrieval"]
    if "prm" in names:  # sampling N drafts per problem is slow: report the measured recipe
        from .toy.models import read_recipe
        from .toy.prm import format_prm_result

        print(format_prm_result(read_recipe("prm", weights_dir=args.out)) + " (recipe.json)")
    for name in [n for n in names if n in SPECS]:
        model, tokenizer = load_toy_model(name, weights_dir=args.out)
        problems = SPECS[name].splits().test[: args.n]
        acc = evaluate_accuracy(model, tokenizer, problems)
        by = ", ".join(f"{k} steps {v:.1%}" for k, v in sorted(acc["by_steps"].items()))
        print(f"{name:<7} greedy accuracy {acc['accuracy']:.1%} on {acc['n']} test problems ({by})")
    if "retrieval" in names:
        from .toy.retrieval_model import format_retrieval_accuracy, retrieval_accuracy

        model, tokenizer = load_toy_model("retrieval", weights_dir=args.out)
        n = min(args.n, 24)  # an 8K-token prompt takes about a second
        print(format_retrieval_accuracy(retrieval_accuracy(model, tokenizer, n=n), n))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .samplers import TARGETS

    parser = argparse.ArgumentParser(prog="ponder", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    from .demo.cli import add_parser as add_demo

    add_demo(sub)
    p_info = sub.add_parser("info", help="versions and backends")
    p_info.set_defaults(func=_cmd_info)

    p = sub.add_parser("sample", help="run a sampler on a built-in target")
    p.add_argument("sampler", nargs="?", default="mala",
                   choices=LANGEVIN_SAMPLERS + DIFFUSION_SAMPLERS)
    p.add_argument("--target", default="gaussian", choices=sorted(TARGETS))
    p.add_argument("--dim", type=int, default=None, help="default 2 (3 for logistic)")
    p.add_argument("--chains", type=int, default=1024, help="chains (samples for diffusion)")
    p.add_argument("--steps", type=int, default=1000, help="steps (DDPM: reverse steps)")
    p.add_argument("--step-size", type=float, default=None,
                   help="h (SPS: the inner tau); default depends on the target")
    p.add_argument("--friction", type=float, default=1.0, help="ULD friction gamma")
    p.add_argument("--eta", type=float, default=1.0, help="SPS outer proximal step")
    p.add_argument("--inner-steps", type=int, default=5, help="SPS / RTK inner steps")
    p.add_argument("--segments", type=int, default=10, help="RTK segments K")
    p.add_argument("--batch-size", type=int, default=32, help="SGLD / SPS minibatch (logistic)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", choices=["cpu", "cuda", "triton", "torch"], default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_sample)

    p_exp = sub.add_parser("experiments", help="regenerate experiment tables and plots")
    p_exp.add_argument("which", choices=["samplers"])
    p_exp.add_argument("--out", default="bench/samplers")
    p_exp.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p_exp.add_argument("--seed", type=int, default=0)
    p_exp.add_argument("--quiet", action="store_true")
    p_exp.set_defaults(func=_cmd_experiments)

    p_toy = sub.add_parser("toy", help="the toy world's models")
    p_toy.add_argument("action", choices=["train", "eval"])
    p_toy.add_argument("--models", nargs="+", choices=["draft", "target", "prm", "retrieval"],
                       default=None)
    p_toy.add_argument("--out", default=None,
                       help="weights folder (default: the package's shipped weights)")
    p_toy.add_argument("--n", type=int, default=300, help="eval: test problems")
    p_toy.add_argument("--quiet", action="store_true")
    p_toy.set_defaults(func=_cmd_toy)

    from .kv.cli import add_parser as add_think_parser  # ThinK (ponder.kv)

    add_think_parser(sub)

    from .decoding import cli as decoding_cli  # ponder rsd

    decoding_cli.add_parser(sub)

    from .rewards.cli import add_parser as add_prm_parser  # ponder prm score|collect|train|...

    add_prm_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sample":
        problems = []
        if args.steps < 2:
            problems.append("--steps must be >= 2")
        if args.chains < 2:
            problems.append("--chains must be >= 2")
        if args.dim is not None and args.dim < 1:
            problems.append("--dim must be >= 1")
        if args.step_size is not None and not (math.isfinite(args.step_size)
                                               and args.step_size > 0):
            problems.append("--step-size must be a finite number > 0")
        if args.sampler in ("sgld", "sps-sgld", "sps-mala") and args.target != "logistic":
            args.batch_size = None  # minibatches need a finite-sum target
        if args.sampler in DIFFUSION_SAMPLERS and args.target in ("logistic", "double-well"):
            problems.append(f"{args.sampler} needs a target with an exact score "
                            "(gaussian, correlated-gaussian, mixture)")
        if problems:
            print("ponder sample: " + "; ".join(problems), file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"ponder {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
