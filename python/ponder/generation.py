"""The ``Generator`` protocol: batched sampling with stop strings, for data collection.

ER-PRM rollouts, OREO samples, BOLT bootstrapping and Auto-CEI expert iteration all need "N
completions of each of these prompts". They ask a :class:`Generator` for them, so the backend
can change (transformers on the CPU by default; a vLLM backend on GPU clusters) without touching
the methods.

    gen = TransformersGenerator(model, tokenizer, batch_size=64)
    outs = gen.generate(["Q: 2+3=?\\n\\n"], n=4, max_new_tokens=32, temperature=1.0, seed=0)
    outs[0]          # four completions of the first prompt (the prompt not included)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

__all__ = ["Generator", "TransformersGenerator", "truncate_at_stop"]


@runtime_checkable
class Generator(Protocol):
    """Anything that samples completions of text prompts."""

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> list[list[str]]:
        """``n`` completions of each prompt: ``out[i][j]`` is the ``j``-th of ``prompts[i]``.

        A completion excludes the prompt, ends at the end-of-sequence token (not included),
        after ``max_new_tokens`` tokens, or just before the first of the ``stop`` strings.
        ``temperature == 0`` is greedy (the ``n`` completions are then equal). The same
        ``seed`` and arguments give the same completions.
        """
        ...


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any ``stop`` string."""
    cut = len(text)
    for s in stop:
        if s:
            at = text.find(s)
            if 0 <= at < cut:
                cut = at
    return text[:cut]


class TransformersGenerator:
    """:class:`Generator` on a transformers causal LM (``model.generate``, left padding).

    Parameters
    ----------
    model : transformers.PreTrainedModel
    tokenizer : transformers tokenizer
        Needs a pad token (its eos token is used otherwise).
    batch_size : int
        Sequences per ``generate`` call (prompts x n are flattened and chunked).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 64):
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
                or batch_size < 1:
            raise ValueError(f"TransformersGenerator: batch_size must be an integer >= 1, got "
                             f"{batch_size!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
    ) -> list[list[str]]:
        if isinstance(prompts, str):
            raise TypeError("TransformersGenerator.generate: prompts must be a sequence of str")
        for name, value in (("n", n), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"TransformersGenerator.generate: {name} must be an integer "
                                 f">= 1, got {value!r}")
        if not (temperature >= 0.0) or not (0.0 < top_p <= 1.0):
            raise ValueError(f"TransformersGenerator.generate: need temperature >= 0 and "
                             f"0 < top_p <= 1, got {temperature} and {top_p}")
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(self.model.parameters()).device
        flat = [p for p in prompts for _ in range(n)]
        texts: list[str] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[]):  # seeded sampling leaves torch's RNG alone
                for b, start in enumerate(range(0, len(flat), self.batch_size)):
                    if seed is not None:
                        torch.manual_seed(int(seed) * 1_000_003 + b)
                    batch = tok(flat[start:start + self.batch_size], return_tensors="pt",
                                padding=True, padding_side="left").to(device)
                    sampling = {"do_sample": True, "temperature": float(temperature),
                                "top_p": float(top_p), "top_k": 0} if temperature > 0 \
                        else {"do_sample": False}
                    ids = self.model.generate(**batch, max_new_tokens=int(max_new_tokens),
                                              eos_token_id=tok.eos_token_id, pad_token_id=pad,
                                              **sampling)
                    new = ids[:, batch["input_ids"].shape[1]:]
                    texts.extend(tok.batch_decode(new, skip_special_tokens=True))
        finally:
            self.model.train(was_training)
        texts = [truncate_at_stop(t, stop) for t in texts]
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
