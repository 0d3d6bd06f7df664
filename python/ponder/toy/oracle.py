"""Judges that know the toy world's truth: a whole-solution verifier and a per-step scorer.

- :class:`ToyVerifier`: the :class:`ponder.rewards.Verifier` of the toy world, registered as
  ``ponder.rewards.get_verifier("toy")`` when ``ponder.toy`` is imported;
- :class:`ToyOracleScorer`: a step scorer for :func:`ponder.decoding.rsd_generate` that scores a
  step by :func:`ponder.toy.check_steps` (an upper bound for a learned PRM).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..rewards.verify import register_verifier
from .arithmetic import STEP_SEPARATOR, Problem, check_steps, extract_answer, verify

__all__ = ["ToyOracleScorer", "ToyVerifier"]


class ToyVerifier:
    """:func:`ponder.toy.verify`: ``reference`` is a ``Problem``, a question (``"Q: 2+3=?"``,
    solved here) or the int answer; the first ``"Answer: N"`` in ``text`` is compared."""

    def __call__(self, reference: Any, text: str) -> bool:
        return bool(verify(reference, text))


register_verifier("toy", ToyVerifier)


class ToyOracleScorer:
    """A step scorer for the toy world that knows the truth: a step scores 1 when
    :func:`ponder.toy.check_steps` judges it right (an ``"Answer: N"`` step: when N is the right
    answer), else 0. An upper bound for a learned PRM, for when none is trained.

    Parameters
    ----------
    problems : sequence of Problem
        The problems whose prompts :meth:`score` is asked about.
    """

    def __init__(self, problems: Sequence[Problem]):
        self._by_question = {p.prompt: p for p in problems}

    def score(self, questions: Sequence[str], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        """``out[i][j]``: 1.0 or 0.0 for step ``j`` of candidate ``i`` (one score per step)."""
        out = []
        for q, cand in zip(questions, steps):
            p = self._by_question[q]
            text = STEP_SEPARATOR.join(cand)
            flags = check_steps(p, text)
            scores = [float(f) for f in flags]
            if cand and extract_answer(cand[-1]) is not None and cand[-1].startswith("Answer"):
                scores.append(float(verify(p, text)))
            while len(scores) < len(cand):
                scores.append(0.0)
            out.append(scores[: len(cand)])
        return out
