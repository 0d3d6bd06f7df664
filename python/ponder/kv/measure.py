"""Measuring ``generate``: decode time without prefill, and the cache's bytes.

    texts, (held, used), seconds, tokens = generate_measured(model, tokenizer, prompts,
                                                             batch_size=16, max_new_tokens=48)
    tokens / seconds      # decode tokens/s over the batches (prefill excluded)

Used by ``ponder think``, the demo's ThinK section and the benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

__all__ = ["DecodeClock", "generate_measured"]


class DecodeClock:
    """A logits processor that only timestamps: ``generate`` calls it once per forward, so the
    gaps between its ``times`` (``time.perf_counter`` seconds) after the first are the decode
    steps."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def generate_measured(model, tokenizer, prompts: Sequence[str], *, batch_size: int,
                      max_new_tokens: int, sample: bool = False, seed: int = 0,
                      step_seconds: list[float] | None = None):
    """``model.generate`` over ``prompts`` in batches (the tokenizer pads as it is set up to).

    Returns ``(texts, (held, used), decode_seconds, decode_tokens)``: the continuations, the
    largest batch's cache bytes (:func:`ponder.kv.cache_nbytes`, without and with ``used=True``),
    and the decode time and tokens summed over the batches (prefill excluded). Sampling
    (``sample=True``) seeds torch's default generator with ``seed`` plus the batch's start.
    With ``step_seconds`` (a list) the time of every decode step (one forward after the first,
    for a whole batch) is appended to it: its median is robust to the odd step a loaded machine
    delays, which a sum over a few steps is not.
    """
    from transformers import LogitsProcessorList

    from ._compat import output_cache
    from .cache import cache_nbytes

    texts, nbytes, decode_s, decode_tokens = [], (0, 0), 0.0, 0
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt",
                          padding=True).to(model.device)
        # Only what generate takes: some tokenizers add token_type_ids, which older
        # transformers' generate refuses for decoder-only models.
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        clock = DecodeClock()
        torch.manual_seed(seed + start)
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=sample,
            return_dict_in_generate=True, logits_processor=LogitsProcessorList([clock]),
            pad_token_id=tokenizer.pad_token_id,
        )
        new = out.sequences[:, batch["input_ids"].shape[1]:]
        texts.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
        cache = output_cache(out)
        nbytes = max(nbytes, (cache_nbytes(cache), cache_nbytes(cache, used=True)))
        if len(clock.times) > 1:  # the first call follows prefill: decode is what comes after
            decode_s += clock.times[-1] - clock.times[0]
            decode_tokens += (len(clock.times) - 1) * new.shape[0]
            if step_seconds is not None:
                step_seconds.extend(b - a for a, b in zip(clock.times, clock.times[1:]))
    return texts, nbytes, decode_s, decode_tokens
