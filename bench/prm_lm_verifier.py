"""Best-of-8 on the toy world with the *target LM's likelihood* as the verifier, next to majority
vote and the first sample: the signal the toy PRM fails to learn (see bench/prm.md).

Each of 8 draft samples (T = 1) of a test problem is scored by the toy target's token
log-probabilities over the solution (teacher-forced): their mean, their minimum and their sum.

    python bench/prm_lm_verifier.py [--problems 150]
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from ponder.rewards.best_of_n import majority_vote
from ponder.toy import SPECS, extract_answer, load_toy_model, verify
from ponder.toy.prm import draft_generator, max_solution_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=150)
    parser.add_argument("--n", type=int, default=8)
    args = parser.parse_args()
    problems = SPECS["target"].splits().test[: args.problems]
    samples = draft_generator().generate([p.prompt for p in problems], n=args.n,
                                         max_new_tokens=max_solution_tokens(problems),
                                         temperature=1.0, seed=1)
    target, tok = load_toy_model("target")
    tok.padding_side = "right"
    right = Counter()
    for p, texts in zip(problems, samples):
        ok = [verify(p, t) for t in texts]
        batch = tok([p.prompt + t for t in texts], return_tensors="pt", padding=True)
        prompt_len = len(tok(p.prompt)["input_ids"])
        with torch.inference_mode():
            logp = target(**batch).logits.log_softmax(-1)
        ids = batch["input_ids"]
        token_lp = logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
        mask = batch["attention_mask"][:, 1:].bool()
        mask[:, : prompt_len - 1] = False  # the solution's tokens only
        total = (token_lp * mask).sum(1)
        rules = {"LM mean log-prob": total / mask.sum(1).clamp(min=1),
                 "LM min log-prob": token_lp.masked_fill(~mask, 0.0).min(1).values,
                 "LM total log-prob": total}
        for name, value in rules.items():
            right[name] += ok[int(value.argmax())]
        right["majority vote"] += ok[majority_vote([extract_answer(t) for t in texts])]
        right["first sample"] += ok[0]
        right["oracle"] += any(ok)
    print(f"best-of-{args.n} on {len(problems)} toy test problems (draft samples at T = 1)")
    for rule, count in right.items():
        print(f"{rule:<20}{count / len(problems):>8.1%}")


if __name__ == "__main__":
    main()
