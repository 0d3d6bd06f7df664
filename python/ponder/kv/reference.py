"""A plain-torch reference of the whole ThinK method (docs/think.md), the oracle of the tests.

It shares no code with :mod:`ponder.kv.cache`: it keeps transformers' dense ``DynamicCache`` and
applies ThinK as masks in an eager fp32 attention, the way the method is written down:

- prefill: ordinary causal attention (padding excluded);
- after prefill, per layer, KV head ``h`` and batch row: SnapKV (optional) chooses the prompt
  tokens kept; ``score[j] = mean_w q[w, j]^2 * mean_t k[t, j]^2`` over the real (unpadded) window
  queries of the head's GQA group and the kept real keys; the ``T = D - floor(lambda * D)``
  best channels are kept (ties to the lower channel);
- decode: ``logit[t] = (q[kept] . k[t, kept]) / sqrt(D)`` for the pruned prompt tokens (all kept
  tokens but the last ``recent``), ``q . k[t] / sqrt(D)`` for the last ``recent`` kept prompt
  tokens and all generated ones; evicted and padded tokens are excluded; one softmax; ``@ V``;
- with ``fold_block``: the tokens are in "stored order" (kept prompt tokens, then generated
  ones); the full-width ones are the last ``n_recent``, which grows by one a token and drops by
  ``fold_block`` (those become pruned) whenever it reaches ``recent + fold_block``.

Zeroing the pruned channels of a key gives the same logit as dropping them, which is all this
reference does (and all the original code and kvpress do: they save no memory; ponder's cache
does). Loops over batch rows and heads keep it readable; it is for tiny test models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from ._compat import cache_kwarg
from .settings import SNAPKV_POOL_KERNEL, ThinKSettings

__all__ = ["REFERENCE_ATTN_NAME", "think_generate_reference"]

REFERENCE_ATTN_NAME = "ponder_think_reference"
_ACTIVE: list[ThinKSettings] = []  # the settings of the reference generate() running now
_SETTING_NAMES = tuple(field.name for field in dataclasses.fields(ThinKSettings))


def _eager(q, k, v, visible, scale, softcap=None):
    """fp32 softmax attention; ``visible [B, Hq, S, N]`` bool. Rows that see nothing give 0.
    ``softcap``: logits become ``softcap * tanh(logits / softcap)`` (Gemma2)."""
    logits = (q.float() @ k.float().transpose(-1, -2)) * scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.masked_fill(~visible, float("-inf"))
    probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
    return probs @ v.float().masked_fill(~visible.any(dim=2)[..., None], 0.0)


def _snapkv_keep_row(qw, k, valid, budget, scale):
    """SnapKV for one (row, KV head): qw ``[G, W, D]`` window queries, k ``[L, D]``, valid ``[L]``.

    Returns the kept positions (sorted).
    """
    group, win, _ = qw.shape
    length = k.shape[0]
    votes = torch.zeros(length - win)
    for g in range(group):
        for w in range(win):
            pos = length - win + w
            if not valid[pos]:
                continue  # a padded query casts no vote
            logits = (qw[g, w].float() @ k[: pos + 1].float().T) * scale
            logits = logits.masked_fill(~valid[: pos + 1], float("-inf"))
            votes += torch.softmax(logits, dim=0)[: length - win]
    votes /= group
    pooled = F.max_pool1d(votes[None, None], SNAPKV_POOL_KERNEL, 1, SNAPKV_POOL_KERNEL // 2)[0, 0]
    pooled = pooled.masked_fill(~valid[: length - win], float("-inf"))
    order = sorted(range(length - win), key=lambda t: (-pooled[t].item(), t))
    return sorted(order[: budget - win]) + list(range(length - win, length))


def _prefill_state(module, q, k, valid, st: ThinKSettings, scale):
    """The per-layer ThinK decisions after prefill (see the module docstring)."""
    batch, hq, length, dim = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    keep_t = dim - math.floor(st.prune_ratio * dim + 1e-9)
    win = min(st.window, length)
    kept = torch.zeros(batch, hkv, length, dtype=torch.bool)  # token kept (and real)
    stored = []  # per (b, h): the kept prompt positions, ascending (padding included)
    channels = torch.zeros(batch, hkv, dim, dtype=torch.bool)
    for b in range(batch):
        for h in range(hkv):
            qw = q[b, h * group:(h + 1) * group, length - win:]  # [G, W, D]
            if st.evict == "snapkv" and length > st.token_budget:
                positions = _snapkv_keep_row(qw, k[b, h], valid[b], st.token_budget, scale)
            else:
                positions = list(range(length))
            stored.append(positions)
            for t in positions:
                kept[b, h, t] = bool(valid[b, t])
            real_q = valid[b, length - win:]
            q_term = qw[:, real_q].float().pow(2).mean(dim=(0, 1))
            k_term = k[b, h, kept[b, h]].float().pow(2).mean(dim=0)
            score = q_term * k_term
            best = sorted(range(dim), key=lambda j: (-score[j].item(), j))[:keep_t]
            channels[b, h, best] = True
    n_stored = len(stored[0])  # the same for every head (the budget, or the whole prompt)
    # The last `recent` stored tokens (padding included: it is stored too) are full width.
    n_recent = min(st.recent, n_stored)
    module._think_reference = {
        "length": length, "kept": kept, "channels": channels, "n_recent": n_recent,
        "stored": torch.tensor(stored).reshape(batch, hkv, n_stored),
        "n_pruned": n_stored - n_recent,
    }


def _reference_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                         **kwargs):
    st = _ACTIVE[-1]
    batch, hq, s_len, dim = query.shape
    hkv, n = key.shape[1], key.shape[2]
    group = hq // hkv
    # The model's scale (Gemma's query_pre_attn_scalar, Granite's multiplier), else 1/sqrt(D):
    # the full D, whatever is pruned.
    scale = scaling if scaling is not None else 1.0 / math.sqrt(dim)
    softcap = kwargs.get("softcap")
    kv_head = torch.arange(hq) // group
    k_full, v_full = key[:, kv_head], value[:, kv_head]  # [B, Hq, N, D]
    if kwargs.get("sliding_window") is not None:
        # A sliding-window layer stays dense (ponder's choice, docs/think.md): transformers'
        # mask says which keys each query sees (None: plain causal, the window does not bite).
        if attention_mask is None:
            causal = torch.arange(n)[None, :] <= (n - s_len + torch.arange(s_len))[:, None]
            visible = causal[None, None].expand(batch, hq, s_len, n)
        else:
            visible = attention_mask[..., -n:].expand(batch, hq, s_len, n)
        out = _eager(query, k_full, v_full, visible, scale, softcap)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    if s_len == n:  # prefill of a fresh cache: plain causal attention, then decide
        if attention_mask is None:
            valid = torch.ones(batch, n, dtype=torch.bool)
        else:
            valid = attention_mask[:, 0, -1, -n:].expand(batch, n).clone()
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        visible = causal[None, None] & valid[:, None, None, :]
        out = _eager(query, k_full, v_full, visible.expand(batch, hq, n, n), scale, softcap)
        _prefill_state(module, query, key, valid, st, scale)
        return out.to(query.dtype).transpose(1, 2).contiguous(), None
    state = module._think_reference
    length = state["length"]
    for _ in range(s_len):  # the new tokens arrive full width, one by one, folding on the way
        state["n_recent"] += 1
        if st.fold_block is not None and state["n_recent"] == st.recent + st.fold_block:
            state["n_recent"] -= st.fold_block
            state["n_pruned"] += st.fold_block
    kept = torch.cat([state["kept"], torch.ones(batch, hkv, n - length, dtype=torch.bool)], 2)
    order = torch.cat([state["stored"], torch.arange(length, n).expand(batch, hkv, -1)], 2)
    pruned = torch.zeros(batch, hkv, n, dtype=torch.bool)
    pruned.scatter_(2, order[..., : state["n_pruned"]], True)
    # Pruned tokens lose their dropped channels: zeroed, they add nothing to q . k.
    chan = state["channels"][:, :, None, :].to(key.dtype)
    k_eff = torch.where(pruned[..., None], key * chan, key)[:, kv_head]
    causal = torch.arange(n)[None, :] <= (n - s_len + torch.arange(s_len))[:, None]  # [S, N]
    visible = kept[:, kv_head, None, :] & causal[None, None]
    out = _eager(query, k_eff, v_full, visible, scale, softcap)
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


AttentionInterface.register(REFERENCE_ATTN_NAME, _reference_attention)
AttentionMaskInterface.register(REFERENCE_ATTN_NAME, sdpa_mask)


@contextlib.contextmanager
def _reference_attention_on(model, settings: ThinKSettings):
    previous = model.config._attn_implementation
    _ACTIVE.append(settings)
    model.set_attn_implementation(REFERENCE_ATTN_NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
        _ACTIVE.pop()


@torch.no_grad()
def think_generate_reference(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    settings: ThinKSettings | None = None,
    **kwargs,
):
    """``model.generate`` with ThinK applied by the plain-torch reference (CPU, tiny models).

    Same arguments as :func:`ponder.kv.apply_think` (``settings`` and the
    :class:`ThinKSettings` fields by name; ``backend`` is accepted and unused: the reference is
    plain torch) plus ``generate``'s; returns what ``generate`` returns. The model's attention
    implementation is restored afterwards.
    """
    fields = {k: kwargs.pop(k) for k in _SETTING_NAMES if k in kwargs}
    settings = ThinKSettings.resolve(settings, **fields)
    with _reference_attention_on(model, settings):
        return model.generate(
            input_ids=input_ids, attention_mask=attention_mask,
            **{cache_kwarg(model): DynamicCache()}, **kwargs,
        )
