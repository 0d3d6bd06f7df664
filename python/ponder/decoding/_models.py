"""What the decoders share: checks that two models can speculate for each other, sampling from
warped logits, left-padded batches with positions, and parameter counts for FLOP estimates."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..ops.speculative import keep_thresholds


def vocab_size(model, name: str) -> int:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if not isinstance(size, int):
        raise TypeError(f"{name} must be a transformers causal LM with config.vocab_size")
    return size


def check_pair(draft, target) -> int:
    """The shared vocabulary size of a draft and a target model (ValueError if they differ)."""
    vd, vt = vocab_size(draft, "draft"), vocab_size(target, "target")
    if vd != vt:
        raise ValueError(
            f"draft and target have different vocabularies ({vd} vs {vt} tokens): speculative "
            "decoding needs one tokenizer for both"
        )
    return vt


def check_tokenizers(draft_tokenizer, target_tokenizer) -> None:
    """ValueError unless both tokenizers map every string to the same ids."""
    if draft_tokenizer is target_tokenizer:
        return
    if draft_tokenizer.get_vocab() != target_tokenizer.get_vocab():
        raise ValueError("draft and target tokenizers differ: their vocabularies are not equal")


def check_k(k: object) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (draft tokens per round) must be an int >= 1, got {k!r}")
    return k


def num_parameters(model) -> int:
    """Parameters of a model (embeddings included), for ~2 x params FLOPs per token."""
    return sum(p.numel() for p in model.parameters())


def sample(
    logits: Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Tensor:
    """One token per row of ``logits: [B, V]``: argmax at temperature 0, else a draw from
    softmax(logits / T) restricted to top-k / top-p (the warping accept_tokens applies)."""
    if temperature == 0.0:
        return logits.argmax(-1)
    logits = logits.float()
    thr = keep_thresholds(logits, temperature, top_k, top_p)
    s = logits / temperature
    if thr is not None:
        s = s.masked_fill(logits < thr[:, None], float("-inf"))
    return torch.multinomial(torch.softmax(s, -1), 1, generator=generator).squeeze(-1)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[Tensor, Tensor]:
    """``(input_ids [B, L], attention_mask [B, L])`` with the sequences right-aligned."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), length), dtype=torch.long, device=device)
    for row, s in enumerate(seqs):
        if s:
            ids[row, length - len(s):] = torch.as_tensor(list(s), dtype=torch.long)
            mask[row, length - len(s):] = 1
    return ids, mask


def positions(mask: Tensor) -> Tensor:
    """Position ids for a left-padded attention mask: 0 at each row's first real token."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def _takes(fn, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return False


def forward_cached(model, input_ids: Tensor, mask: Tensor, pos: Tensor, cache, keep_logits: int,
                   *, with_hidden: bool = False):
    """One forward of a transformers causal LM reusing ``cache``; returns ``(logits of the last
    ``keep_logits`` positions, cache)``, and with ``with_hidden`` a third item: the last layer's
    hidden states ``[B, keep_logits, H]`` (``hidden_states[-1]``) at the same positions. Works
    with the ``cache=`` (transformers >= 5.2x) and the older ``past_key_values=`` keyword."""
    key = "cache" if _takes(model.forward, "cache") else "past_key_values"
    extra = {"output_hidden_states": True} if with_hidden else {}
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=pos,
        use_cache=True,
        logits_to_keep=keep_logits,
        **{key: cache},
        **extra,
    )
    # Newer outputs name it ``cache`` (reading ``past_key_values`` logs a deprecation).
    new_cache = out.get("cache")
    if new_cache is None:
        new_cache = out.past_key_values
    if with_hidden:
        return out.logits[:, -keep_logits:], new_cache, out.hidden_states[-1][:, -keep_logits:]
    return out.logits[:, -keep_logits:], new_cache


def crop_cache(cache, keep: int) -> None:
    """Cut a transformers cache back to its first ``keep`` positions (``Cache.crop``, whose
    argument is the new length in older transformers and minus the tokens to drop in newer)."""
    held = cache.get_seq_length()
    if held <= keep:
        return
    if _takes(cache.crop, "tokens_to_remove"):
        cache.crop(-(held - keep))
    else:
        cache.crop(keep)
