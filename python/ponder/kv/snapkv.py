"""SnapKV token eviction (arXiv 2404.14469), run once after prefill and before ThinK's pruning.

The last ``W`` prompt queries (the observation window) vote for the earlier tokens: their softmax
attention to each prefix token, summed over the window and averaged over the query heads of a KV
head's GQA group, max-pooled along the tokens (kernel 7) so neighbours of a chosen token come
along. Each KV head keeps its ``budget - W`` best prefix tokens plus the whole window.

This runs once per layer per prompt on ``W`` queries, so it is plain torch (no kernel): its cost
is ``O(W * L)``, next to the ``O(L^2)`` prefill it follows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .settings import SNAPKV_POOL_KERNEL

__all__ = ["snapkv_keep", "snapkv_scores"]


def snapkv_scores(q_window: Tensor, k: Tensor, valid: Tensor | None, scale: float) -> Tensor:
    """The pooled SnapKV vote of each prefix token (``L - W`` of them), per KV head.

    Args:
        q_window: ``[B, Hq, W, D]`` the last ``W`` prompt queries (after RoPE).
        k: ``[B, Hkv, L, D]`` the prompt keys (after RoPE), ``L > W``.
        valid: optional bool ``[B, L]``, False at padding (never voted for, never voting).
        scale: the attention logit scale (``1/sqrt(D)``).

    Returns:
        float32 ``[B, Hkv, L - W]``; ``-inf`` at padding.
    """
    batch, hq, win, dim = q_window.shape
    hkv, length = k.shape[1], k.shape[2]
    group = hq // hkv
    qf = q_window.float().reshape(batch, hkv, group * win, dim)
    logits = (qf @ k.float().transpose(-1, -2)) * scale  # [B, Hkv, G * W, L]
    # Query w of the window sits at position L - W + w and sees keys t <= L - W + w.
    q_pos = torch.arange(length - win, length, device=k.device).repeat(group)  # [G * W]
    seen = torch.arange(length, device=k.device)[None, :] <= q_pos[:, None]  # [G * W, L]
    seen = seen[None, None].expand(batch, hkv, -1, -1)
    if valid is not None:
        seen = seen & valid[:, None, None, :]
    logits = logits.masked_fill(~seen, float("-inf"))
    # A padded query sees nothing: its row is all -inf, softmax gives NaN; it casts no vote.
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    prefix = length - win
    votes = probs[..., :prefix].reshape(batch, hkv, group, win, prefix).sum(3).mean(2)
    pooled = F.max_pool1d(
        votes.reshape(batch * hkv, 1, prefix), SNAPKV_POOL_KERNEL, stride=1,
        padding=SNAPKV_POOL_KERNEL // 2,
    ).reshape(batch, hkv, prefix)
    if valid is not None:
        pooled = pooled.masked_fill(~valid[:, None, :prefix], float("-inf"))
    return pooled


def snapkv_keep(
    q_window: Tensor, k: Tensor, valid: Tensor | None, budget: int, scale: float
) -> Tensor:
    """The prompt positions each KV head keeps: ``[B, Hkv, budget]`` int64, ascending.

    The best ``budget - W`` prefix tokens by :func:`snapkv_scores` (ties to the earlier token,
    padding last) and the ``W`` window tokens. Needs ``W <= budget < L``.
    """
    batch, _, win, _ = q_window.shape
    hkv, length = k.shape[1], k.shape[2]
    if not win <= budget < length:
        raise ValueError(f"snapkv_keep: need window {win} <= budget {budget} < length {length}")
    scores = snapkv_scores(q_window, k, valid, scale)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    chosen = order[..., : budget - win].sort(dim=-1).values
    window = torch.arange(length - win, length, device=k.device).expand(batch, hkv, win)
    return torch.cat([chosen, window], dim=-1)
