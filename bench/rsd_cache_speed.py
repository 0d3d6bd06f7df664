"""RSD's end-to-end speed with and without carried KV caches (``rsd_generate(carry_cache=)``),
on the toy models: same problems, same seed, the outputs checked equal.

    python bench/rsd_cache_speed.py [--n 200] [--repeats 2]

The step scorer is the oracle step checker (free), so the times are the two models' generation;
runs: draft-only, target-only and RSD at delta 0.5. Times are the minimum over ``--repeats``.
A second table runs RSD with the shipped step-check PRM on the target (delta 0.3), which reads
an LM of its own: everything re-read, the two models' caches carried but the PRM re-reading
each prefix (``prm_cache=False``), and the PRM's cache carried too (``prm_cache=True``).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from ponder.decoding import rsd_generate
from ponder.toy import SPECS, ToyOracleScorer, load_toy_model, verify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    draft, tok = load_toy_model("draft")
    target, _ = load_toy_model("target")
    problems = SPECS["target"].splits().test[:args.n]
    oracle = ToyOracleScorer(problems)
    print(f"{args.n} toy test problems, greedy, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| run | re-read prefixes (s) | carried caches (s) | speed-up | same output | accuracy |")
    print("|---|---|---|---|---|---|")
    for name, delta in (("draft-only", -math.inf), ("target-only", math.inf),
                        ("RSD, oracle, delta=0.5", 0.5)):
        best, texts = {}, {}
        for _ in range(args.repeats):
            for carry in (False, True):
                r = rsd_generate(draft, target, oracle, problems, tokenizer=tok, delta=delta,
                                 verifier=verify, batch_size=args.batch_size, generator=0,
                                 carry_cache=carry)
                best[carry] = min(best.get(carry, math.inf), r.stats["wall_s"])
                texts[carry] = (r.texts, r.stats["accuracy"])
        same = texts[True][0] == texts[False][0]
        print(f"| {name} | {best[False]:.2f} | {best[True]:.2f} | "
              f"{best[False] / best[True]:.2f}x | {same} | {texts[True][1]:.3f} |", flush=True)
    from ponder.toy import load_toy_prm

    prm = load_toy_prm()
    print()
    print("| RSD, PRM on the target, delta=0.3 | end to end (s) | of it PRM scoring (s) | "
          "same output |")
    print("|---|---|---|---|")
    variants = {"all re-read": {"carry_cache": False},
                "models' caches carried, PRM re-reads": {"prm_cache": False},
                "all caches carried (PRM's too)": {}}
    best, prm_s, texts = {}, {}, {}
    for _ in range(args.repeats):
        for key, extra in variants.items():
            r = rsd_generate(draft, target, prm, problems, tokenizer=tok, delta=0.3,
                             verifier=verify, batch_size=args.batch_size, generator=0, **extra)
            best[key] = min(best.get(key, math.inf), r.stats["wall_s"])
            prm_s[key] = min(prm_s.get(key, math.inf), r.stats["prm_wall_s"])
            texts[key] = r.texts
    first = texts["all re-read"]
    for key in variants:
        print(f"| {key} | {best[key]:.2f} | {prm_s[key]:.2f} | {texts[key] == first} |",
              flush=True)


if __name__ == "__main__":
    main()
