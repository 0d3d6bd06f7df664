"""The scoring kernel ``ponder.ops.prm`` as ``rewards`` uses it.

``ponder.ops.prm`` (``score_steps`` and the differentiable ``step_logits``) is written on another
branch; until it is merged this module falls back to the same math in plain torch, so that
``rewards`` runs either way. Both read only the hidden rows at the step positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

try:  # pragma: no cover - depends on which branches are merged
    from ..ops import prm as _prm
except ImportError:  # pragma: no cover
    _prm = None

__all__ = ["gather_step_logits", "step_scores"]


def _gather(hidden: Tensor, step_index: Tensor) -> tuple[Tensor, Tensor]:
    valid = step_index >= 0
    idx = step_index.clamp(min=0)
    rows = torch.gather(hidden, 1, idx.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    return rows, valid


def gather_step_logits(hidden: Tensor, step_index: Tensor, head: Tensor,
                       bias: Tensor | None = None) -> Tensor:
    """Differentiable logits at the step positions.

    hidden [B, L, H]; step_index [B, S] int64 (-1 = padding); head [2, H] (positive row first)
    or [H] (value head); bias [2] or scalar. Returns [B, S, 2] (two-label) or [B, S] (value),
    fp32, zero at padding. Gradients flow into ``hidden`` and ``head``.
    """
    if _prm is not None and hasattr(_prm, "step_logits"):
        out = _prm.step_logits(hidden, step_index, head, bias)
        return out.float()
    rows, valid = _gather(hidden, step_index)
    logits = rows.float() @ head.float().T
    if bias is not None:
        logits = logits + bias.float()
    mask = valid.unsqueeze(-1) if logits.dim() == 3 else valid
    return logits * mask


def step_scores(hidden: Tensor, step_index: Tensor, head: Tensor,
                bias: Tensor | None = None) -> Tensor:
    """Per-step scores in [0, 1] (fp32, NaN at padding): softmax over the two label logits (the
    positive one's probability) or sigmoid of the value logit."""
    kind = "two_label" if head.dim() == 2 else "value"
    if _prm is not None and hasattr(_prm, "score_steps"):
        res = _prm.score_steps(hidden, step_index, head, bias=bias, kind=kind)
        scores = res.scores if hasattr(res, "scores") else res[0]
        scores = scores.float()
        return torch.where(step_index >= 0, scores, torch.full_like(scores, float("nan")))
    with torch.no_grad():
        logits = gather_step_logits(hidden, step_index, head, bias)
        score = torch.sigmoid(logits[..., 0] - logits[..., 1]) if kind == "two_label" \
            else torch.sigmoid(logits)
        return torch.where(step_index >= 0, score, torch.full_like(score, float("nan")))
