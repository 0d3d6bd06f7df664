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
import functools
import numbers
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch

__all__ = ["Completion", "TextGenerator", "TransformersGenerator", "truncate_at_stop"]


class Completion(str):
    """A completion (a ``str``) that also carries its tokens and their log-probabilities.

    What :meth:`TextGenerator.generate` returns with ``logprobs=True``: it compares, joins and
    prints as the text, so every caller that takes ``str`` completions takes it unchanged.

    Attributes
    ----------
    tokens : tuple of str
        The sampled tokens as the backend decoded them (``len(tokens) == len(token_logprobs)``).
    token_logprobs : tuple of float
        ``log p(token | prompt, earlier tokens)`` of each, under the model's own distribution (the
        server's convention: before temperature and top-p). A completion cut at a stop string
        keeps the tokens that start before the cut.
    """

    tokens: tuple[str, ...]
    token_logprobs: tuple[float, ...]

    def __new__(cls, text: str, tokens: Sequence[str], token_logprobs: Sequence[float]):
        if len(tokens) != len(token_logprobs):
            raise ValueError(f"Completion: {len(tokens)} tokens but {len(token_logprobs)} "
                             "log-probs")
        self = super().__new__(cls, text)
        self.tokens = tuple(tokens)
        self.token_logprobs = tuple(float(x) for x in token_logprobs)
        return self

    def cut(self, length: int) -> Completion:
        """The first ``length`` characters, with the tokens that start before them."""
        keep, start = 0, 0
        for token in self.tokens:
            if start >= length:
                break
            keep += 1
            start += len(token)
        return Completion(str(self)[:length], self.tokens[:keep], self.token_logprobs[:keep])

    def __reduce__(self):  # pickles (and so crosses process boundaries) with its tokens
        return (Completion, (str(self), self.tokens, self.token_logprobs))


@runtime_checkable
class TextGenerator(Protocol):
    """Anything that samples completions of text prompts: a :meth:`generate` method.

    A backend may subclass this class and implement only ``_sample(flat, *, max_new_tokens,
    temperature, top_p, seed) -> list[str]`` (one completion of each prompt in ``flat``, the
    prompt excluded): the :meth:`generate` here checks the arguments, repeats each prompt ``n``
    times and cuts the completions at the stop strings. A backend that does better with the
    whole call at once (many requests in flight on a server) implements ``_sample_groups(prompts,
    n, seed, *, max_new_tokens, temperature, top_p, stop, logprobs) -> out[i][j]`` instead, with
    the arguments checked and ``seed`` None, an int or a list of one int per prompt; one that
    returns log-probs sets ``returns_logprobs = True``. (Neither is declared here: a protocol's
    members are what ``isinstance(x, TextGenerator)`` checks, and that is ``generate`` only.)
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
        logprobs: bool = False,
    ) -> list[list[str]]:
        """``n`` completions of each prompt: ``out[i][j]`` is the ``j``-th of ``prompts[i]``.

        A completion excludes the prompt, ends at the end-of-sequence token (not included),
        after ``max_new_tokens`` tokens, or just before the first of the ``stop`` strings.
        ``temperature == 0`` is greedy (the ``n`` completions are then equal). The same
        ``seed`` and arguments give the same completions. ``seed`` may also be one seed per
        prompt: each prompt's completions then depend on its own seed only, not on the other
        prompts of the call (here each prompt is sampled on its own, since batching prompts
        together changes their padding and so their numerics). With ``logprobs=True`` each
        completion is a :class:`Completion` (a ``str`` with its tokens' log-probs); a backend
        without them (``returns_logprobs`` false) refuses it.
        """
        where = f"{type(self).__name__}.generate"
        if isinstance(prompts, str):
            raise TypeError(f"{where}: prompts must be a sequence of str")
        prompts = list(prompts)
        for name, value in (("n", n), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{where}: {name} must be an integer >= 1, got {value!r}")
        # A finite temperature: inf would flatten every distribution to uniform (or NaN logits)
        # without a word.
        if not (0.0 <= temperature < float("inf")) or not (0.0 < top_p <= 1.0):
            raise ValueError(f"{where}: need a finite temperature >= 0 and 0 < top_p <= 1, got "
                             f"temperature={temperature} and top_p={top_p}")
        if isinstance(stop, str):
            raise TypeError(f"{where}: stop must be a sequence of str (a list of one string "
                            f"for one stop string), got {stop!r}")
        if logprobs and not getattr(self, "returns_logprobs", False):
            raise ValueError(f"{where}: {type(self).__name__} does not return log-probs "
                             "(TransformersGenerator and OpenAIGenerator do)")
        if seed is not None and not (isinstance(seed, numbers.Integral)
                                     and not isinstance(seed, bool)):
            seeds = list(seed) if not isinstance(seed, (str, bytes)) else None
            if seeds is None or len(seeds) != len(prompts) or not all(
                    isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
                raise ValueError(f"{where}: seed must be None, an int or one int per prompt "
                                 f"({len(prompts)}), got {seed!r}")
            seed = [int(s) for s in seeds]
        elif seed is not None:
            seed = int(seed)
        groups = getattr(self, "_sample_groups", None)
        if groups is None:
            groups = functools.partial(_sample_each, self)
        out = groups(prompts, int(n), seed, max_new_tokens=int(max_new_tokens),
                     temperature=float(temperature), top_p=float(top_p), stop=tuple(stop),
                     logprobs=bool(logprobs))
        return [[truncate_at_stop(t, stop) for t in row] for row in out]


def _sample_each(backend, prompts: list[str], n: int, seed: int | list[int] | None, *,
                 max_new_tokens: int, temperature: float, top_p: float, stop: tuple[str, ...],
                 logprobs: bool) -> list[list[str]]:
    """The default of a backend without ``_sample_groups``: its ``_sample`` on all prompts at
    once (each repeated ``n`` times), or on each prompt with its own seed. ``stop`` is applied
    by :meth:`TextGenerator.generate` afterwards; ``logprobs=True`` reaches ``_sample`` only when
    the backend says it returns them."""
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    if logprobs:  # only then: a backend's _sample need not take the argument otherwise
        options["logprobs"] = True
    if not isinstance(seed, list):
        texts = backend._sample([p for p in prompts for _ in range(n)], seed=seed, **options)
    else:
        texts = [t for p, s in zip(prompts, seed)
                 for t in backend._sample([p] * n, seed=s, **options)]
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]


def truncate_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any ``stop`` string (a
    :class:`Completion` keeps the tokens that start before the cut)."""
    cut = len(text)
    for s in stop:
        if s:
            at = text.find(s)
            if 0 <= at < cut:
                cut = at
    if cut == len(text):
        return text
    return text.cut(cut) if isinstance(text, Completion) else text[:cut]


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

    returns_logprobs = True

    @torch.inference_mode()
    def _sample(self, flat: list[str], *, max_new_tokens: int, temperature: float, top_p: float,
                seed: int | None, logprobs: bool = False) -> list[str]:
        """One completion of each prompt in ``flat``, ``batch_size`` prompts a ``generate``;
        with ``logprobs``, :class:`Completion` objects (the raw logits' log-softmax at each
        sampled token, the end-of-sequence token and padding left out)."""
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(self.model.parameters()).device
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} \
            if temperature > 0 else {"do_sample": False}
        if logprobs:
            sampling.update(output_logits=True, return_dict_in_generate=True)
        special = set(tok.all_special_ids)
        texts: list[str] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with _seeded(device, seed) as seed_batch:
                for b, start in enumerate(range(0, len(flat), self.batch_size)):
                    seed_batch(b)
                    batch = tok(flat[start:start + self.batch_size], return_tensors="pt",
                                padding=True, padding_side="left").to(device)
                    out = self.model.generate(**batch, max_new_tokens=max_new_tokens,
                                              eos_token_id=tok.eos_token_id, pad_token_id=pad,
                                              **sampling)
                    ids = out.sequences if logprobs else out
                    new = ids[:, batch["input_ids"].shape[1]:]
                    decoded = tok.batch_decode(new, skip_special_tokens=True)
                    if not logprobs:
                        texts.extend(decoded)
                        continue
                    # [rows, steps]: log p of each generated token under the raw logits
                    lp = torch.stack([torch.log_softmax(step.float(), -1) for step in out.logits],
                                     1).gather(2, new[:, :, None])[:, :, 0]
                    for row, text in enumerate(decoded):
                        keep = []
                        for t, token in enumerate(new[row].tolist()):
                            if token == tok.eos_token_id:
                                break
                            if token not in special:
                                keep.append((tok.decode([token]), float(lp[row, t])))
                        texts.append(Completion(text, [k for k, _ in keep], [v for _, v in keep]))
        finally:
            self.model.train(was_training)
        return texts
