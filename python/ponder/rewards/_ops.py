"""The scoring kernel :mod:`ponder.ops.prm` as ``rewards`` uses it (scores for inference, logits
with autograd for training). Both read only the hidden rows at the step positions."""

from __future__ import annotations

from torch import Tensor

from ..ops import prm as _prm

__all__ = ["gather_step_logits", "step_scores"]


def gather_step_logits(hidden: Tensor, step_index: Tensor, head: Tensor,
                       bias: Tensor | None = None) -> Tensor:
    """Differentiable logits at the step positions (:func:`ponder.ops.prm.step_logits`).

    hidden [B, L, H]; step_index [B, S] int64 (-1 = padding at the end of a row); head [2, H]
    (positive row first) or [H] (value head); bias [2] or scalar. Returns [B, S, 2] or [B, S],
    fp32 (fp64 for fp64 hidden), 0 at padding; gradients flow into hidden, head and bias.
    """
    return _prm.step_logits(hidden, step_index, head, bias)


def step_scores(hidden: Tensor, step_index: Tensor, head: Tensor,
                bias: Tensor | None = None) -> Tensor:
    """Per-step scores in [0, 1] ([B, S], NaN at padding): the positive label's probability
    of the softmax over the two label logits, or sigmoid of the value logit."""
    return _prm.score_steps(hidden, step_index, head, bias).scores
