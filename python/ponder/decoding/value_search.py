"""Value-guided step-level beam search (OREO's test-time search) and best-of-N by the value.

:func:`value_beam_search`, batched over problems. Each problem keeps ``B`` beams (prefixes that
end at a step boundary). Per step, every beam gets ``B`` sampled continuations of one step (up to
and including the step delimiter, given as token ids, or the end-of-sequence token) at
temperature 1; every candidate is scored by the value model at its **last** token (the original
code dropped the last position: not copied); finished candidates (EOS, or ``max_new_tokens``
reached) go to the problem's pool, and the ``B`` best unfinished ones are the next beams. A
problem stops when it has no unfinished beam or after ``max_steps`` steps; the pool's highest
value wins (the best unfinished beam when the pool is empty).

The value at the last token of ``prefix`` is ``V`` of the state after the prefix. A finished
candidate is scored without its EOS, i.e. at its last written token, the state a trained OREO
value model has seen (the state after EOS is terminal and never trained).

The values are read with :func:`ponder.ops.prm.step_logits` (kind ``"value"``) from the value
model's last hidden states at one position per candidate: no per-position head output or LM
logits are formed for scoring. Each step is generated with a fresh KV cache over the prefix
(prefill batched); caches are not carried across steps in this version.

The value model is duck-typed: ``value_model.hidden_states(input_ids, attention_mask) -> [B, L,
H]`` and ``value_model.head`` a bias-free ``Linear(H, 1)`` (``ponder.train.oreo.ValueModel``).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..ops.prm import step_logits
from ._models import forward_cached, left_pad, model_device, positions, sample

__all__ = ["ValueSearchResult", "score_values", "value_beam_search", "value_best_of_n"]


@dataclass
class ValueSearchResult:
    """Per problem: the chosen response's token ids (no EOS), its text, its value, whether it
    finished (EOS); and ``sampled_tokens``, the tokens sampled in total (the search's cost)."""

    ids: list[list[int]]
    texts: list[str]
    values: list[float]
    finished: list[bool]
    sampled_tokens: int


def _check_pos_int(where: str, name: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{where}: {name} must be an integer >= 1, got {v!r}")
    return int(v)


@torch.inference_mode()
def score_values(value_model, seqs: Sequence[Sequence[int]], pad_id: int, *,
                 batch_size: int = 256) -> list[float]:
    """``V`` at the last token of each token-id sequence (right padded, batched)."""
    device = model_device(value_model)
    w = value_model.head.weight.reshape(-1)
    out: list[float] = []
    for s in range(0, len(seqs), batch_size):
        part = seqs[s:s + batch_size]
        L = max(len(x) for x in part)
        ids = torch.full((len(part), L), pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, x in enumerate(part):
            ids[i, :len(x)] = torch.as_tensor(list(x), dtype=torch.long)
            mask[i, :len(x)] = 1
        h = value_model.hidden_states(ids, mask)
        last = (mask.sum(1) - 1)[:, None]
        v = step_logits(h, last, w.to(h.dtype) if h.dtype != w.dtype else w, kind="value")
        out.extend(v[:, 0].float().tolist())
    return out


@torch.inference_mode()
def _generate(policy, prefixes: Sequence[Sequence[int]], *, eos: int, pad: int,
              delimiter: Sequence[int], max_tokens: Sequence[int], temperature: float,
              top_p: float | None, generator: torch.Generator | None,
              batch_size: int) -> tuple[list[list[int]], list[bool]]:
    """One step (or, with an empty delimiter, the rest of the response) per prefix: the new
    token ids (up to and including the delimiter or EOS) and whether EOS ended it."""
    new_all: list[list[int]] = []
    eos_all: list[bool] = []
    d = list(delimiter)
    device = model_device(policy)
    for s in range(0, len(prefixes), batch_size):
        part = prefixes[s:s + batch_size]
        caps = max_tokens[s:s + batch_size]
        ids, mask = left_pad(part, pad, device)
        logits, cache = forward_cached(policy, ids, mask, positions(mask), None, 1)
        n = len(part)
        new: list[list[int]] = [[] for _ in range(n)]
        ended = [False] * n
        active = [caps[i] > 0 for i in range(n)]
        while any(active):
            tok = sample(logits[:, -1].float(), temperature, None, top_p, generator)
            toks = tok.tolist()
            for i in range(n):
                if not active[i]:
                    continue
                t = toks[i]
                new[i].append(t)
                if t == eos:
                    ended[i], active[i] = True, False
                elif len(new[i]) >= caps[i] or (d and new[i][-len(d):] == d):
                    active[i] = False
            if not any(active):
                break
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], 1)
            logits, cache = forward_cached(policy, tok[:, None], mask,
                                           positions(mask)[:, -1:], cache, 1)
        new_all.extend(new)
        eos_all.extend(ended)
    return new_all, eos_all


def _prompt_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    return [list(tokenizer(p)["input_ids"]) for p in prompts]


def _delimiter_ids(tokenizer, step_delimiter) -> list[int]:
    if isinstance(step_delimiter, str):
        return list(tokenizer(step_delimiter, add_special_tokens=False)["input_ids"])
    return [int(t) for t in step_delimiter]


def value_beam_search(
    policy,
    value_model,
    tokenizer,
    prompts: Sequence[str],
    *,
    beam_width: int = 3,
    samples_per_beam: int | None = None,
    max_steps: int = 20,
    step_delimiter: str | Sequence[int] = "\n\n",
    max_step_tokens: int = 64,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float | None = None,
    seed: int | None = None,
    batch_size: int = 256,
) -> ValueSearchResult:
    """Step-level beam search guided by ``value_model`` (module docstring), batched.

    Args:
        policy: a transformers causal LM (the OREO policy).
        value_model: ``hidden_states(ids, mask)`` and ``head`` (``ponder.train.oreo.ValueModel``).
        tokenizer: with ``eos_token_id`` and ``pad_token_id``; prompts get its special tokens.
        prompts: the problems' prompts.
        beam_width: ``B`` (the original's default 3; the paper reports 7).
        samples_per_beam: continuations per beam per step (default ``B``); the first step
            samples ``B * samples_per_beam`` from the prompt.
        max_steps: steps at most (20).
        step_delimiter: the text (tokenised without special tokens) or token ids ending a step.
        max_step_tokens, max_new_tokens: caps per step and per response (tokens).
        temperature, top_p: sampling (T = 1, no top-p: the original).
        seed: seeds a ``torch.Generator`` (the same seed and inputs give the same result).
        batch_size: sequences per forward.
    """
    where = "value_beam_search"
    B = _check_pos_int(where, "beam_width", beam_width)
    S = B if samples_per_beam is None else _check_pos_int(where, "samples_per_beam",
                                                             samples_per_beam)
    max_steps = _check_pos_int(where, "max_steps", max_steps)
    max_step_tokens = _check_pos_int(where, "max_step_tokens", max_step_tokens)
    max_new_tokens = _check_pos_int(where, "max_new_tokens", max_new_tokens)
    if isinstance(prompts, str):
        raise TypeError(f"{where}: prompts must be a sequence of str")
    if not temperature > 0:
        raise ValueError(f"{where}: temperature must be > 0, got {temperature}")
    delim = _delimiter_ids(tokenizer, step_delimiter)
    if not delim:
        raise ValueError(f"{where}: step_delimiter must be non-empty")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    gen = None
    if seed is not None:
        gen = torch.Generator(device=model_device(policy)).manual_seed(int(seed))
    heads = _prompt_ids(tokenizer, prompts)
    P = len(prompts)
    beams: list[list[list[int]]] = [[[]] * B for _ in range(P)]  # response ids per beam
    pool: list[list[tuple[float, list[int], bool]]] = [[] for _ in range(P)]
    best_open: list[tuple[float, list[int]] | None] = [None] * P
    sampled = 0
    for _ in range(max_steps):
        jobs = [(p, r) for p in range(P) for r in beams[p] for _ in range(S)]
        if not jobs:
            break
        caps = [min(max_step_tokens, max_new_tokens - len(r)) for _, r in jobs]
        new, ended = _generate(policy, [heads[p] + r for p, r in jobs], eos=eos, pad=pad,
                               delimiter=delim, max_tokens=caps, temperature=temperature,
                               top_p=top_p, generator=gen, batch_size=batch_size)
        sampled += sum(len(x) for x in new)
        cands = []
        for (p, r), x, e in zip(jobs, new, ended):
            resp = r + (x[:-1] if e else x)
            done = e or len(r) + len(x) >= max_new_tokens
            cands.append((p, resp, done, e))
        values = score_values(value_model, [heads[p] + resp for p, resp, _, _ in cands], pad,
                              batch_size=batch_size)
        open_c: list[list[tuple[float, list[int]]]] = [[] for _ in range(P)]
        for (p, resp, done, e), v in zip(cands, values):
            if done:
                pool[p].append((v, resp, e))
            else:
                open_c[p].append((v, resp))
        for p in range(P):
            open_c[p].sort(key=lambda t: -t[0])  # stable: ties keep the sampling order
            beams[p] = [resp for _, resp in open_c[p][:B]]
            if open_c[p]:
                best_open[p] = open_c[p][0]
    ids, texts, vals, fin = [], [], [], []
    for p in range(P):
        if pool[p]:
            v, resp, e = max(pool[p], key=lambda t: t[0])
        elif best_open[p] is not None:
            (v, resp), e = best_open[p], False
        else:  # pragma: no cover - max_steps >= 1 always samples
            v, resp, e = float("nan"), [], False
        ids.append(resp)
        texts.append(tokenizer.decode(resp, skip_special_tokens=True))
        vals.append(v)
        fin.append(e)
    return ValueSearchResult(ids, texts, vals, fin, sampled)


def value_best_of_n(
    policy,
    value_model,
    tokenizer,
    prompts: Sequence[str],
    *,
    n: int,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float | None = None,
    seed: int | None = None,
    batch_size: int = 256,
) -> ValueSearchResult:
    """``n`` full responses per prompt, the one with the highest value at its last token (EOS
    excluded) wins: the baseline the beam search is compared with at equal samples."""
    where = "value_best_of_n"
    n = _check_pos_int(where, "n", n)
    max_new_tokens = _check_pos_int(where, "max_new_tokens", max_new_tokens)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    pad = eos if pad is None else pad
    gen = None
    if seed is not None:
        gen = torch.Generator(device=model_device(policy)).manual_seed(int(seed))
    heads = _prompt_ids(tokenizer, prompts)
    jobs = [p for p in range(len(prompts)) for _ in range(n)]
    new, ended = _generate(policy, [heads[p] for p in jobs], eos=eos, pad=pad, delimiter=(),
                           max_tokens=[max_new_tokens] * len(jobs), temperature=temperature,
                           top_p=top_p, generator=gen, batch_size=batch_size)
    resps = [x[:-1] if e else x for x, e in zip(new, ended)]
    values = score_values(value_model, [heads[p] + r for p, r in zip(jobs, resps)], pad,
                          batch_size=batch_size)
    ids, texts, vals, fin = [], [], [], []
    for p in range(len(prompts)):
        rows = [(values[i], resps[i], ended[i]) for i in range(p * n, (p + 1) * n)]
        v, r, e = max(rows, key=lambda t: t[0])
        ids.append(r)
        texts.append(tokenizer.decode(r, skip_special_tokens=True))
        vals.append(v)
        fin.append(e)
    return ValueSearchResult(ids, texts, vals, fin, sum(len(x) for x in new))
