"""Best-of-N: pick one of N candidate solutions per problem by its aggregated PRM score, and
report its accuracy next to the usual baselines.

- ``prm-<agg>``: the candidate with the largest ``aggregate(step scores, agg)`` (ties go to the
  earliest candidate; candidates without steps, whose aggregate is NaN, come last);
- ``majority``: a candidate whose extracted answer is the most frequent one (self-consistency;
  ties go to the answer seen first; candidates without an answer do not vote);
- ``first``: candidate 0 (what a single sample scores);
- ``oracle``: any candidate is correct (the ceiling of any selection rule).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from .model import AGGREGATES, aggregate

__all__ = ["BestOfNResult", "best_of_n", "majority_vote", "select_best"]


def select_best(values: Sequence[float]) -> int:
    """The index of the largest value; NaN counts as the smallest, ties go to the first."""
    if not values:
        raise ValueError("select_best: no candidates")
    keys = [-math.inf if math.isnan(v) else v for v in values]
    return max(range(len(keys)), key=keys.__getitem__)  # max keeps the first of equal keys


def majority_vote(answers: Sequence[Hashable | None]) -> int:
    """The index of the first candidate holding the most frequent non-None answer (0 when no
    candidate has an answer)."""
    if not answers:
        raise ValueError("majority_vote: no candidates")
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return 0
    top = max(counts.values())
    for i, a in enumerate(answers):  # the first answer to reach the top count, in order
        if a is not None and counts[a] == top:
            return i
    return 0  # unreachable


@dataclass
class BestOfNResult:
    """Accuracy of each selection rule over ``n_problems`` problems.

    ``accuracy[rule]`` is the fraction of problems whose selected candidate is correct;
    ``picks[rule][p]`` is the candidate chosen for problem ``p``.
    """

    n_problems: int
    n_candidates: list[int]
    accuracy: dict[str, float] = field(default_factory=dict)
    picks: dict[str, list[int]] = field(default_factory=dict)

    def table(self) -> str:
        """A plain-text table, one rule a row."""
        mean_n = sum(self.n_candidates) / max(1, len(self.n_candidates))
        lines = [f"best-of-N over {self.n_problems} problems (N = {mean_n:g} on average)",
                 f"{'rule':<14}{'accuracy':>9}"]
        lines += [f"{rule:<14}{acc:>9.1%}" for rule, acc in self.accuracy.items()]
        return "\n".join(lines)


def best_of_n(
    scores: Sequence[Sequence[Sequence[float]]],
    correct: Sequence[Sequence[bool]],
    answers: Sequence[Sequence[Hashable | None]] | None = None,
    *,
    aggregates: Sequence[str] = AGGREGATES,
) -> BestOfNResult:
    """Best-of-N bookkeeping.

    Parameters
    ----------
    scores : [P][N_p][S] floats
        Step scores of candidate ``c`` of problem ``p`` (``ProcessRewardModel.score``).
    correct : [P][N_p] bools
        Whether each candidate is right (from a verifier).
    answers : [P][N_p] hashables or None, optional
        The extracted final answers, for majority vote (the rule is left out without them).
    aggregates : sequence of str
        The step-score aggregates to report, each as a ``prm-<agg>`` rule.

    Returns
    -------
    BestOfNResult
    """
    if len(scores) != len(correct) or (answers is not None and len(answers) != len(correct)):
        raise ValueError(
            f"best_of_n: scores, correct (and answers) need one entry per problem, got "
            f"{len(scores)}, {len(correct)}" + ("" if answers is None else f", {len(answers)}")
        )
    if not correct:
        raise ValueError("best_of_n: no problems")
    for how in aggregates:
        if how not in AGGREGATES:
            raise ValueError(f"best_of_n: unknown aggregate {how!r}; known: {AGGREGATES}")
    sizes = []
    for p, (s, c) in enumerate(zip(scores, correct)):
        if len(s) != len(c) or (answers is not None and len(answers[p]) != len(c)):
            raise ValueError(f"best_of_n: problem {p} has {len(s)} scored candidates and "
                             f"{len(c)} correctness flags" +
                             ("" if answers is None else f" and {len(answers[p])} answers"))
        if not c:
            raise ValueError(f"best_of_n: problem {p} has no candidates")
        sizes.append(len(c))
    picks: dict[str, list[int]] = {}
    for how in aggregates:
        picks[f"prm-{how}"] = [select_best([aggregate(x, how) for x in s]) for s in scores]
    if answers is not None:
        picks["majority"] = [majority_vote(a) for a in answers]
    picks["first"] = [0] * len(correct)
    result = BestOfNResult(len(correct), sizes, picks=picks)
    for rule, chosen in picks.items():
        result.accuracy[rule] = sum(bool(c[i]) for c, i in zip(correct, chosen)) / len(correct)
    result.accuracy["oracle"] = sum(any(map(bool, c)) for c in correct) / len(correct)
    return result
