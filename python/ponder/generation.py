"""The ``TextGenerator`` protocol: batched sampling with stop strings, for data collection.

ER-PRM rollouts, OREO samples, BOLT bootstrapping and Auto-CEI expert iteration all need "N
completions of each of these prompts". They ask a :class:`TextGenerator` for them, so the backend
can change (transformers on the CPU by default; a vLLM backend on GPU clusters) without touching
the methods.

    gen = TransformersGenerator(model, tokenizer, batch_size=64)
    outs = gen.generate(["Q: 2+3=?\\n\\n"], n=4, max_new_tokens=32, temperature=1.0, seed=0)
    outs[0]          # four completions of the first prompt (the prompt not included)
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

__all__ = ["TextGenerator", "TransformersGenerator", "truncate_at_stop"]


@runtime_checkable
class TextGenerator(Protocol):
    """Anything that samples completions of text prompts: a :meth:`generate` method.

    A backend may subclass this class and implement only ``_sample(flat, *, max_new_tokens,
    temperature, top_p, seed) -> list[str]`` (one completion of each prompt in ``flat``, the
    prompt excluded): the :meth:`generate` here checks the arguments, repeats each prompt ``n``
    times and cuts the completions at the stop strings.
    """

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        max_new_tokens: int = 256,
        temperature: float = 1.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | Sequence[int] | None = None,
    ) -> list[list[str]]:
        """``n`` completions of each prompt: ``out[i][j]`` is the ``j``-th of ``prompts[i]``.

        A completion excludes the prompt, ends at the end-of-sequence token (not included),
        after ``max_new_tokens`` tokens, or just before the first of the ``stop`` strings.
        ``temperature == 0`` is greedy (the ``n`` completions are then equal). The same
        ``seed`` and arguments give the same completions. ``seed`` may also be one seed per
        prompt: each prompt's completions then depend on its own seed only, not on the other
        prompts of the call (here each prompt is sampled on its own, since batching prompts
        together changes their padding and so their numerics).
        """
        where = f"{type(self).__name__}.generate"
        if isinstance(prompts, str):
            raise TypeError(f"{where}: prompts must be a sequence of str")
        for name, value in (("n", n), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{where}: {name} must be an integer >= 1, got {value!r}")
        if not (temperature >= 0.0) or not (0.0 < top_p <= 1.0):
            raise ValueError(f"{where}: need temperature >= 0 and 0 < top_p <= 1, got "
                             f"{temperature} and {top_p}")
        options = {"max_new_tokens": int(max_new_tokens), "temperature": float(temperature),
                   "top_p": float(top_p)}
        if seed is None or isinstance(seed, numbers.Integral):
            texts = self._sample([p for p in prompts for _ in range(n)], seed=seed, **options)
        else:
            seeds = list(seed)
            if len(seeds) != len(prompts) or not all(
                    isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
                raise ValueError(f"{where}: seed must be None, an int or one int per prompt "
                                 f"({len(prompts)}), got {seed!r}")
            texts = [t for p, s in zip(prompts, seeds)
                     for t in self._sample([p] * n, seed=int(s), **options)]
        texts = [truncate_at_stop(t, stop) for t in texts]
        return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any ``stop`` string."""
    cut = len(text)
    for s in stop:
        if s:
            at = text.find(s)
            if 0 <= at < cut:
                cut = at
    return text[:cut]


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int | None):
    """Yield ``seed_batch(b)``, which seeds the generators ``model.generate`` draws from on
    ``device`` for batch ``b``; every generator is as the caller had it afterwards.

    transformers samples from torch's default generators and takes no generator of its own, so
    those are forked and seeded: the CPU's and, for a CUDA model, that device's only
    (``torch.manual_seed`` would reset every CUDA device's generator).
    """
    if seed is None:  # unseeded: draw from the caller's generators as they are
        yield lambda b: None
        return
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []

    def seed_batch(b: int) -> None:
        value = int(seed) * 1_000_003 + b
        torch.default_generator.manual_seed(value)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(value)

    with torch.random.fork_rng(devices=cuda):
        yield seed_batch


class TransformersGenerator(TextGenerator):
    """:class:`TextGenerator` on a transformers causal LM (``model.generate``, left padding).

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
    def _sample(self, flat: list[str], *, max_new_tokens: int, temperature: float, top_p: float,
                seed: int | None) -> list[str]:
        """One completion of each prompt in ``flat``, ``batch_size`` prompts a ``generate``."""
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(self.model.parameters()).device
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} \
            if temperature > 0 else {"do_sample": False}
        texts: list[str] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with _seeded(device, seed) as seed_batch:
                for b, start in enumerate(range(0, len(flat), self.batch_size)):
                    seed_batch(b)
                    batch = tok(flat[start:start + self.batch_size], return_tensors="pt",
                                padding=True, padding_side="left").to(device)
                    ids = self.model.generate(**batch, max_new_tokens=max_new_tokens,
                                              eos_token_id=tok.eos_token_id, pad_token_id=pad,
                                              **sampling)
                    new = ids[:, batch["input_ids"].shape[1]:]
                    texts.extend(tok.batch_decode(new, skip_special_tokens=True))
        finally:
            self.model.train(was_training)
        return texts
