"""Process reward models: scoring, ER-PRM labels and rollouts, PRM training, best-of-N.

- :mod:`ponder.rewards.model`: :class:`ProcessRewardModel` (Math-Shepherd, Qwen2.5-Math-PRM and
  value-head conventions; batched, chunked scoring through :mod:`ponder.ops.prm`);
- :mod:`ponder.rewards.labels`: ER-PRM labels with exact ``eta -> 0`` / ``eta -> inf`` limits;
- :mod:`ponder.rewards.verify`: verifiers (math-verify; any callable; a registry by name) and step
  splitting;
- :mod:`ponder.rewards.collect`: the resumable rollout collector (ER-PRM JSONL);
- :mod:`ponder.rewards.train`: soft-label PRM training (a ``transformers.Trainer`` subclass);
- :mod:`ponder.rewards.best_of_n`: best-of-N selection next to majority vote, first and oracle.

transformers is imported only by the pieces that need it.
"""

from .best_of_n import BestOfNResult, best_of_n, majority_vote
from .labels import er_prm_label, er_prm_labels, first_error_labels
from .model import (
    AGGREGATES,
    PRMConvention,
    ProcessRewardModel,
    aggregate,
    math_shepherd,
    qwen_math_prm,
    toy_convention,
    value_head,
)
from .verify import MathVerifier, Verifier, get_verifier, register_verifier, split_steps

__all__ = [
    "AGGREGATES",
    "BestOfNResult",
    "MathVerifier",
    "PRMConvention",
    "ProcessRewardModel",
    "Verifier",
    "aggregate",
    "best_of_n",
    "er_prm_label",
    "er_prm_labels",
    "first_error_labels",
    "get_verifier",
    "majority_vote",
    "math_shepherd",
    "qwen_math_prm",
    "register_verifier",
    "split_steps",
    "toy_convention",
    "value_head",
]
