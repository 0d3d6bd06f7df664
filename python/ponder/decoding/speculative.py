"""Token-level speculative decoding with transformers models and their KV caches.

Each round the draft writes K tokens (K cheap forwards), the target scores all of them in one
forward, and :func:`ponder.ops.speculative.accept_tokens` keeps a prefix and adds one target
token. Both caches are then cut back to the committed text with the Cache API
(``DynamicCache.crop``), so no token is ever recomputed.

Ragged acceptance in a batch: rows accept different numbers of tokens, but every row of a
transformers cache has one length. All rows advance by the smallest number of tokens any
unfinished row emitted, ``m = min_b(accepted_b + 1)``; a row that emitted more keeps its first m
tokens and drops the rest. This stays lossless: token j of row b is kept only when the row
accepted its first j draft tokens, an event decided before token j is drawn, and given that
event token j has exactly the target's distribution (the speculative-sampling guarantee); the
other rows are independent of it. The price is throughput at large batch sizes, never the
distribution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..validation import resolve_seed
from ..ops.speculative import accept_tokens
from ._models import (
    check_k,
    check_pair,
    crop_cache,
    forward_cached,
    model_device,
    positions,
    sample,
)


@dataclass
class SpeculativeOutput:
    """``sequences: [B, L + T]`` the prompts followed by the new tokens (``pad_token_id`` after a
    row's EOS or where it stopped); ``stats``: rounds, draft tokens proposed and accepted, target
    and draft forwards, the acceptance rate (accepted / proposed, rows still running)."""

    sequences: Tensor
    stats: dict[str, float] = field(default_factory=dict)


def _forward(model, seq: Tensor, mask: Tensor, cached: int, cache, keep_logits: int):
    """Run ``model`` on the tokens of ``seq`` not yet in ``cache`` (positions >= ``cached``)."""
    return forward_cached(
        model, seq[:, cached:], mask, positions(mask)[:, cached:], cache, keep_logits
    )


@torch.inference_mode()
def speculative_generate(
    draft,
    target,
    input_ids: Tensor,
    *,
    k: int = 4,
    max_new_tokens: int = 64,
    attention_mask: Tensor | None = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    generator: torch.Generator | int | None = None,
    backend: str | None = None,
) -> SpeculativeOutput:
    """Generate from ``target`` with ``draft`` proposing ``k`` tokens per round.

    Lossless: at ``temperature=0`` the output equals the target's greedy output; otherwise each
    token has the target's distribution at that temperature / top-k / top-p.

    Args:
        draft, target: transformers causal LMs with the same vocabulary (and tokenizer).
        input_ids: ``[B, L]`` prompts, left padded when ``attention_mask`` marks padding.
        k: draft tokens per round (>= 1).
        max_new_tokens: cap on new tokens per row.
        attention_mask: ``[B, L]`` 1 for tokens, 0 for (left) padding; default all ones.
        temperature, top_k, top_p: the sampling distribution (temperature 0: greedy).
        eos_token_id: a row stops after emitting it (None: never).
        pad_token_id: written after a row stops.
        generator: int seed, ``torch.Generator`` or None (torch's default generator).
        backend: the accept_tokens backend (default by device).

    Returns:
        :class:`SpeculativeOutput`.
    """
    check_pair(draft, target)
    k = check_k(k)
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a [B, L] tensor of token ids")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = model_device(target)
    seq = input_ids.to(device)
    batch, prompt_len = seq.shape
    mask = (torch.ones_like(seq) if attention_mask is None else attention_mask.to(device)).long()
    seed = resolve_seed("speculative_generate", generator)
    draw = torch.Generator(device=device).manual_seed(seed)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    t_cache = d_cache = None
    t_len = d_len = 0  # positions held by each cache
    stats = {"rounds": 0, "proposed": 0, "accepted": 0, "target_forwards": 0, "draft_forwards": 0}
    while seq.shape[1] - prompt_len < max_new_tokens and not bool(finished.all()):
        start = seq.shape[1]
        cur, cur_mask = seq, mask
        d_logits, d_tokens = [], []
        for _ in range(k):
            logits, d_cache = _forward(draft, cur, cur_mask, d_len, d_cache, 1)
            d_len = cur.shape[1]
            last = logits[:, -1].float()
            tok = sample(last, temperature, top_k, top_p, draw)
            d_logits.append(last)
            d_tokens.append(tok)
            cur = torch.cat([cur, tok[:, None]], 1)
            cur_mask = torch.cat([cur_mask, torch.ones_like(tok)[:, None]], 1)
        logits, t_cache = _forward(target, cur, cur_mask, t_len, t_cache, k + 1)
        t_logits = logits.float()  # predictions for positions start .. start + k
        drafts = torch.stack(d_tokens, 1)
        round_seed = int(torch.randint(0, 2**62, (), generator=draw, device=device))
        tokens, n_acc = accept_tokens(
            drafts, t_logits, torch.stack(d_logits, 1) if temperature > 0 else None,
            temperature, top_k, top_p, generator=round_seed, backend=backend,
        )
        live = ~finished
        m = int((n_acc[live] + 1).min())
        m = min(m, max_new_tokens - (start - prompt_len))
        new = tokens[:, :m].clone()
        new[finished] = pad_token_id
        if eos_token_id is not None:
            is_eos = (new == eos_token_id) & live[:, None]
            after = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
            new[after] = pad_token_id
            finished |= is_eos.any(1)
        seq = torch.cat([seq, new], 1)
        mask = torch.cat([mask, torch.ones_like(new)], 1)
        # Both caches keep exactly the committed tokens but the last (fed next round).
        keep = seq.shape[1] - 1
        crop_cache(t_cache, keep)
        t_len = keep
        if d_len > keep:
            crop_cache(d_cache, keep)
            d_len = keep
        stats["rounds"] += 1
        stats["proposed"] += k * int(live.sum())
        stats["accepted"] += int(n_acc[live].sum())
        stats["target_forwards"] += 1
        stats["draft_forwards"] += k
    stats["acceptance_rate"] = stats["accepted"] / max(stats["proposed"], 1)
    return SpeculativeOutput(seq, stats)
