"""Value-guided beam search on the toy world with and without carrying the policy's KV caches
across steps (``value_beam_search(reuse_cache=...)``): wall time, and whether the results agree.

The policy is the shipped toy draft (float32); the value model is ``ValueModel.from_policy`` of
it with a seeded random head (no trained value model is shipped; the search's work does not
depend on what the values are, only the paths taken do, and both runs take the same paths). The
prompts are the first ``--problems`` toy test problems; beam width ``--beam``, at most 32 tokens
per step, the toy effect's ``max_new_tokens``, seed 0, batch 512 (as ``ponder oreo effect``).
Each setting runs ``--rounds`` times, alternating, in one process; the table keeps the fastest.

Run:  python bench/oreo_search.py --problems 100 --beam 4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=100)
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    import torch
    from ponder.decoding.value_search import value_beam_search
    from ponder.toy.models import load_toy_model
    from ponder.toy.oreo import _max_new_tokens, toy_questions
    from ponder.train.oreo import ValueModel

    policy, tok = load_toy_model("draft")
    policy = policy.float().eval()
    value = ValueModel.from_policy(policy).eval()
    with torch.no_grad():
        value.head.weight.normal_(generator=torch.Generator().manual_seed(0))
    problems = [q["problem"] for q in toy_questions("test", a.problems)]
    prompts = [p.prompt for p in problems]
    kw = {"beam_width": a.beam, "max_new_tokens": _max_new_tokens(problems),
          "max_step_tokens": 32, "seed": 0, "batch_size": 512}
    best: dict[bool, float] = {}
    res = {}
    for _ in range(a.rounds):
        for reuse in (False, True):
            t = time.perf_counter()
            res[reuse] = value_beam_search(policy, value, tok, prompts, reuse_cache=reuse, **kw)
            best[reuse] = min(best.get(reuse, float("inf")), time.perf_counter() - t)
    same = res[True].ids == res[False].ids
    print(f"value beam search, toy draft + random-head value model, {a.problems} test problems, "
          f"B = {a.beam}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"fastest of {a.rounds}")
    print(f"same responses with and without the carried caches: {same} "
          f"({sum(x == y for x, y in zip(res[True].ids, res[False].ids))} / {a.problems}); "
          f"sampled tokens {res[True].sampled_tokens} / {res[False].sampled_tokens}")
    print("| KV caches | time | speed-up |")
    print("|---|---|---|")
    print(f"| recomputed every step (`reuse_cache=False`) | {best[False]:.2f} s | 1.00x |")
    print(f"| carried across steps (`reuse_cache=True`) | {best[True]:.2f} s | "
          f"{best[False] / best[True]:.2f}x |")


if __name__ == "__main__":
    main()
