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
logits are formed for scoring.

KV caches are carried across steps (``reuse_cache=True``, transformers dynamic caches): the
prompt is prefilled once per problem; after each step the kept beams' keys and values are copied
out of the step's batch, and the next step feeds each beam's last token only. The value model's
caches are carried too when it has a transformers ``backbone`` and a bias-free ``head``
(``ponder.train.oreo.ValueModel``): a candidate's value is read after feeding only its new
tokens to its beam's cache (the prompts are read once). ``reuse_cache=False``
recomputes every prefix at every step; both give the same result at a fixed seed, up to the
rounding of the logits and values.

The value model is duck-typed: ``value_model.hidden_states(input_ids, attention_mask) -> [B, L,
H]`` and ``value_model.head`` a bias-free ``Linear(H, 1)`` (``ponder.train.oreo.ValueModel``);
one without a transformers ``backbone`` reads each candidate's whole sequence at every step.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..ops.prm import step_logits
from ._models import _takes, forward_cached, left_pad, model_device, positions, sample

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
    token ids (up to and including the delimiter or EOS) and whether EOS ended it. Each prefix
    is prefilled in full (no cache carried in)."""
    srcs = [_Source(list(x)) for x in prefixes]
    rows = _sample_steps(policy, srcs, [1] * len(srcs), eos=eos, pad=pad, delimiter=delimiter,
                         max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                         generator=generator, batch_size=batch_size, reuse=False)
    return [r.new for r in rows], [r.ended for r in rows]


@dataclass
class _Source:
    """A prefix to continue: its token ids and, when carried from the previous step, the policy's
    keys and values of ``ids[:-1]`` (per layer ``(K, V)``, each ``[heads, len(ids) - 1,
    head_dim]``); the last token is fed to the next forward."""

    ids: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None


@dataclass
class _Row:
    """One sampled continuation: its tokens, whether EOS ended it, and where the keys and values
    of ``(prefix + new)[:-1]`` lie in its batch's cache (``layers``: per layer ``(K, V)``
    ``[rows, heads, L, head_dim]``, or None when the cache is not a plain dynamic cache)."""

    new: list[int]
    ended: bool
    layers: list[tuple[torch.Tensor, torch.Tensor]] | None
    row: int
    start: int
    length: int

    def kv(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """This row's keys and values of ``(prefix + new)[:-1]``, copied out of the batch."""
        if self.layers is None:
            return None
        a, b = self.start, self.start + self.length
        return [(k[self.row, :, a:b].clone(), v[self.row, :, a:b].clone())
                for k, v in self.layers]


def _dynamic_layers(cache) -> list | None:
    """The layers of a transformers dynamic cache holding full keys and values (``.keys``,
    ``.values`` ``[batch, heads, L, head_dim]``), or None for any other cache (sliding-window,
    quantised, static, legacy tuples): those are not carried across steps."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - transformers without cache layers
        return None
    if any(type(layer) is not DynamicLayer or getattr(layer, "keys", None) is None
           for layer in layers):
        return None
    return list(layers)


def _cache_from(kvs: Sequence[list[tuple[torch.Tensor, torch.Tensor]]], device):
    """A dynamic cache of the sources' keys and values, left-padded to a common length, and its
    attention mask ``[n, L]``."""
    from transformers.cache_utils import DynamicCache

    lens = [kv[0][0].shape[1] for kv in kvs]
    width = max(lens)
    mask = torch.zeros((len(kvs), width), dtype=torch.long, device=device)
    data = []
    for layer in range(len(kvs[0])):
        k0, v0 = kvs[0][layer]
        K = k0.new_zeros((len(kvs), k0.shape[0], width, k0.shape[2]))
        V = v0.new_zeros((len(kvs), v0.shape[0], width, v0.shape[2]))
        for i, kv in enumerate(kvs):
            n = lens[i]
            if n:
                K[i, :, width - n:] = kv[layer][0]
                V[i, :, width - n:] = kv[layer][1]
        data.append((K, V))
    for i, n in enumerate(lens):
        mask[i, width - n:] = 1
    return DynamicCache(data), mask


def _chunks(copies: Sequence[int], batch_size: int) -> list[tuple[int, int]]:
    """Consecutive runs of sources with at most ``batch_size`` rows (copies) each (at least one
    source per run)."""
    out, a, rows = [], 0, 0
    for i, c in enumerate(copies):
        if rows and rows + c > batch_size:
            out.append((a, i))
            a, rows = i, 0
        rows += c
    if a < len(copies):
        out.append((a, len(copies)))
    return out


@torch.inference_mode()
def _sample_steps(policy, sources: Sequence[_Source], copies: Sequence[int], *, eos: int,
                  pad: int, delimiter: Sequence[int], max_tokens: Sequence[int],
                  temperature: float, top_p: float | None, generator: torch.Generator | None,
                  batch_size: int, reuse: bool) -> list[_Row]:
    """``copies[i]`` continuations of each source, rows in order (source by source), in batches
    of at most ``batch_size`` rows (whole sources). ``max_tokens`` is per source.

    ``reuse=False``: every row prefills its whole prefix (no cache carried in). ``reuse=True``:
    each source is prefilled once (its prompt) or continued from its carried keys and values
    (one token fed), then repeated for its copies; the rows' caches are kept for
    :meth:`_Row.kv`. The rows, the batches and the random draws are the same either way, so
    at a fixed seed both give the same tokens (up to the rounding of the logits)."""
    out: list[_Row] = []
    d = list(delimiter)
    device = model_device(policy)
    for a, b in _chunks(copies, batch_size):
        part = sources[a:b]
        reps = torch.as_tensor(list(copies[a:b]), device=device)
        caps = [c for c, k in zip(max_tokens[a:b], copies[a:b]) for _ in range(k)]
        plen = [len(s.ids) for s, k in zip(part, copies[a:b]) for _ in range(k)]
        logits = cache = None
        if reuse and part[0].kv is not None:
            if any(s.kv is None for s in part):  # pragma: no cover - the search never mixes
                raise ValueError("_sample_steps: sources with and without a carried cache")
            cache, past = _cache_from([s.kv for s in part], device)
            mask = torch.cat([past, torch.ones((len(part), 1), dtype=past.dtype,
                                               device=device)], 1)
            last = torch.as_tensor([[s.ids[-1]] for s in part], device=device)
            logits, cache = forward_cached(policy, last, mask, positions(mask)[:, -1:], cache, 1)
        elif reuse:
            ids, mask = left_pad([s.ids for s in part], pad, device)
            logits, cache = forward_cached(policy, ids, mask, positions(mask), None, 1)
            if _dynamic_layers(cache) is None:  # a cache we cannot repeat: prefill every row
                logits = cache = None
        if cache is not None:
            # one forward per source, then repeated for its copies
            idx = torch.repeat_interleave(torch.arange(len(part), device=device), reps)
            logits, mask = logits[idx], mask[idx]
            for layer in _dynamic_layers(cache):
                layer.keys, layer.values = layer.keys[idx], layer.values[idx]
        else:
            seqs = [s.ids for s, k in zip(part, copies[a:b]) for _ in range(k)]
            ids, mask = left_pad(seqs, pad, device)
            logits, cache = forward_cached(policy, ids, mask, positions(mask), None, 1)
        width0 = mask.shape[1]  # the prefixes end here: row i's prefix is its last plen[i]
        n = len(caps)
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
        layers = _dynamic_layers(cache) if reuse else None
        if layers is not None:
            layers = [(layer.keys, layer.values) for layer in layers]
        for i in range(n):
            # (prefix + new)[:-1] was forwarded: the prefix at [width0 - plen, width0), then
            # every new token but the last (each forwarded while its row was active)
            out.append(_Row(new[i], ended[i], layers, i, width0 - plen[i],
                            plen[i] + len(new[i]) - 1))
    return out


def _value_backbone(value_model):
    """The value model's transformers backbone when its values can be read with carried caches:
    ``value_model.backbone`` a ``transformers.PreTrainedModel`` (its ``last_hidden_state`` is what
    ``hidden_states`` returns, as in ``ponder.train.oreo.ValueModel``) and ``value_model.head``
    a bias-free ``Linear(H, 1)``; else None (any other value model is scored from the full
    sequences by :func:`score_values`)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is needed for the policy anyway
        return None
    backbone, head = getattr(value_model, "backbone", None), getattr(value_model, "head", None)
    if isinstance(backbone, PreTrainedModel) and isinstance(head, torch.nn.Linear) and \
            head.bias is None and head.out_features == 1:
        return backbone
    return None


@dataclass
class _Scored:
    """A candidate's value and where the value model's keys and values of its whole sequence
    lie in the scoring batch's cache (as :class:`_Row`)."""

    value: float
    layers: list[tuple[torch.Tensor, torch.Tensor]] | None
    row: int
    start: int
    length: int

    kv = _Row.kv


@torch.inference_mode()
def _score_carried(value_model, backbone, items, pad: int, batch_size: int) -> list[_Scored]:
    """Values at the last token of candidates given as ``(past_kv, new_ids, value_if_empty)``:
    ``past_kv`` the value model's keys and values of the candidate's beam (all its tokens), or
    None (then ``new_ids`` is the whole sequence); the new tokens are fed after the carried
    ones. A candidate with no new token is its beam: ``value_if_empty``. All items carry a past,
    or none does."""
    device = model_device(value_model)
    w = value_model.head.weight.reshape(-1)
    key = "cache" if _takes(backbone.forward, "cache") else "past_key_values"
    out: list[_Scored] = []
    for s in range(0, len(items), batch_size):
        part = items[s:s + batch_size]
        width = max(1, max(len(x[1]) for x in part))
        new = torch.full((len(part), width), pad, dtype=torch.long, device=device)
        new_mask = torch.zeros_like(new)
        for i, (_, x, _) in enumerate(part):  # right-padded after the carried tokens
            new[i, :len(x)] = torch.as_tensor(list(x), dtype=torch.long)
            new_mask[i, :len(x)] = 1
        if part[0][0] is None:
            cache, mask, wp, held = None, new_mask, 0, [0] * len(part)
        else:
            cache, past = _cache_from([x[0] for x in part], device)
            wp = past.shape[1]
            held = past.sum(1).tolist()
            mask = torch.cat([past, new_mask], 1)
        pos = positions(mask)[:, -width:]
        o = backbone(input_ids=new, attention_mask=mask, position_ids=pos, use_cache=True,
                     **{key: cache})
        cache = o.get("cache")
        if cache is None:
            cache = o.past_key_values
        h = o.last_hidden_state
        lens = [len(x[1]) for x in part]
        last = torch.as_tensor([max(n - 1, 0) for n in lens], device=device)[:, None]
        v = step_logits(h, last, w.to(h.dtype) if h.dtype != w.dtype else w, kind="value")
        vals = v[:, 0].float().tolist()
        layers = _dynamic_layers(cache)
        if layers is not None:
            layers = [(layer.keys, layer.values) for layer in layers]
        for i, n in enumerate(lens):
            val = vals[i] if n else float(part[i][2])
            out.append(_Scored(val, layers, i, wp - held[i], held[i] + n))
    return out


def _prompt_ids(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    return [list(tokenizer(p)["input_ids"]) for p in prompts]


def _delimiter_ids(tokenizer, step_delimiter) -> list[int]:
    if isinstance(step_delimiter, str):
        return list(tokenizer(step_delimiter, add_special_tokens=False)["input_ids"])
    return [int(t) for t in step_delimiter]


def _sampling_setup(where: str, policy, tokenizer, prompts: Sequence[str], temperature: float,
                    seed: int | None):
    """Checks shared by the searches, then ``(eos, pad, generator or None, prompt ids)``; the pad
    id falls back to EOS."""
    if isinstance(prompts, str):
        raise TypeError(f"{where}: prompts must be a sequence of str")
    if not temperature > 0:
        raise ValueError(f"{where}: temperature must be > 0, got {temperature}")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    gen = None
    if seed is not None:
        gen = torch.Generator(device=model_device(policy)).manual_seed(int(seed))
    return eos, eos if pad is None else pad, gen, _prompt_ids(tokenizer, prompts)


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
    reuse_cache: bool = True,
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
        batch_size: sequences per forward (a beam's samples are never split across batches,
            so a batch may exceed it when ``B * samples_per_beam`` does).
        reuse_cache: carry the policy's keys and values of each kept beam to the next step
            (only its last token is fed again; the prompt is prefilled once per problem), with
            a transformers dynamic cache; ``False`` prefills every candidate's whole prefix at
            every step. At a fixed seed both give the same result up to the rounding of the
            logits (the same rows, batches and random draws).
    """
    where = "value_beam_search"
    B = _check_pos_int(where, "beam_width", beam_width)
    S = B if samples_per_beam is None else _check_pos_int(where, "samples_per_beam",
                                                             samples_per_beam)
    max_steps = _check_pos_int(where, "max_steps", max_steps)
    max_step_tokens = _check_pos_int(where, "max_step_tokens", max_step_tokens)
    max_new_tokens = _check_pos_int(where, "max_new_tokens", max_new_tokens)
    if not isinstance(reuse_cache, bool):
        raise TypeError(f"{where}: reuse_cache must be a bool, got {type(reuse_cache).__name__}")
    eos, pad, gen, heads = _sampling_setup(where, policy, tokenizer, prompts, temperature, seed)
    delim = _delimiter_ids(tokenizer, step_delimiter)
    if not delim:
        raise ValueError(f"{where}: step_delimiter must be non-empty")
    P = len(prompts)
    # Per problem, the beams: (response ids, the policy's carried keys and values, the value
    # model's carried keys and values, the beam's value); None where nothing is carried.
    # The first step samples B x S continuations of the prompt (one source, B * S copies).
    beams: list[list[tuple]] = [[([], None, None, float("nan"))] for _ in range(P)]
    backbone = _value_backbone(value_model) if reuse_cache else None
    first = True
    pool: list[list[tuple[float, list[int], bool]]] = [[] for _ in range(P)]
    best_open: list[tuple[float, list[int]] | None] = [None] * P
    sampled = 0
    for _ in range(max_steps):
        jobs = [(p, *beam) for p in range(P) for beam in beams[p]]
        if not jobs:
            break
        copies = [B * S if first else S] * len(jobs)
        caps = [min(max_step_tokens, max_new_tokens - len(job[1])) for job in jobs]
        rows = _sample_steps(policy, [_Source(heads[p] + r, kv) for p, r, kv, _, _ in jobs],
                             copies, eos=eos, pad=pad, delimiter=delim, max_tokens=caps,
                             temperature=temperature, top_p=top_p, generator=gen,
                             batch_size=batch_size, reuse=reuse_cache)
        src = [j for j, c in enumerate(copies) for _ in range(c)]
        sampled += sum(len(x.new) for x in rows)
        cands = []
        for j, row in zip(src, rows):
            p, r = jobs[j][0], jobs[j][1]
            x, e = row.new, row.ended
            resp = r + (x[:-1] if e else x)
            done = e or len(r) + len(x) >= max_new_tokens
            cands.append((p, resp, done, e, row, j))
        if backbone is not None:
            if first:  # the value model reads each prompt once: it is the first beams' prefix
                heads_sc = _score_carried(value_model, backbone,
                                          [(None, heads[p], 0.0) for p, *_ in jobs], pad,
                                          batch_size)
                jobs = [(p, r, kv, sc.kv(), sc.value)
                        for (p, r, kv, _, _), sc in zip(jobs, heads_sc)]
                del heads_sc
            # the value model continues each beam's carried cache with the new tokens
            items = [(jobs[j][3], resp[len(jobs[j][1]):], jobs[j][4])
                     for p, resp, _, _, _, j in cands]
            scored = _score_carried(value_model, backbone, items, pad, batch_size)
        else:
            values = score_values(value_model, [heads[p] + resp for p, resp, *_ in cands], pad,
                                  batch_size=batch_size)
            scored = [_Scored(v, None, 0, 0, 0) for v in values]
        first = False
        open_c: list[list[tuple[float, list[int], _Row, _Scored]]] = [[] for _ in range(P)]
        for (p, resp, done, e, row, _), sc in zip(cands, scored):
            if done:
                pool[p].append((sc.value, resp, e))
            else:
                open_c[p].append((sc.value, resp, row, sc))
        for p in range(P):
            open_c[p].sort(key=lambda t: -t[0])  # stable: ties keep the sampling order
            # only the kept beams' keys and values are copied out of the step's batches
            beams[p] = [(resp, row.kv() if reuse_cache else None, sc.kv(), v)
                        for v, resp, row, sc in open_c[p][:B]]
            if open_c[p]:
                best_open[p] = open_c[p][0][:2]
        del rows, cands, open_c, scored  # the step's batch caches
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
    eos, pad, gen, heads = _sampling_setup(where, policy, tokenizer, prompts, temperature, seed)
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
