"""RSD: reward-guided speculative decoding (arXiv 2501.19324), batched over problems.

Step loop: the draft writes one reasoning step (up to ``step_delimiter``, EOS or a token cap) for
every unfinished problem; the PRM scores each prefix + new step (the score of the LAST step); a
step is kept with probability ``omega(r)`` (:func:`ponder.ops.speculative.accept_steps`; binary
``r >= delta`` by default), otherwise it is discarded and the target writes the step from the same
prefix. A problem ends at EOS, ``max_new_tokens`` or ``max_steps``. ``delta=-inf`` (binary) is
draft-only generation and ``delta=+inf`` target-only; neither calls the PRM (nor, for +inf, the
draft).

Text is kept as token ids, so the target continues exactly the tokens the draft wrote (the two
must share a tokenizer). The draft's and the target's KV caches are carried across steps
(``carry_cache=True``, :class:`_CarriedCache`): each model reads only the tokens written since
it last ran (the other model's steps), and a discarded draft step is masked out of the draft's
cache and cropped off its end. The PRM re-reads each prefix (it is a ``StepScorer`` over text).

FLOPs follow the paper's estimate, ~2 x parameters per generated token per model (the draft's
discarded tokens included) plus 2 x PRM parameters per token of each scored step; prefill of the
prefixes is not counted (with carried caches it would be computed once).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..ops.speculative import OMEGAS, accept_steps
from ._models import (
    check_pair,
    check_tokenizers,
    crop_cache,  # noqa: F401  (re-exported for step generators that carry caches)
    forward_cached,
    left_pad,
    model_device,
    num_parameters,
    positions,
    sample,
)


@runtime_checkable
class StepScorer(Protocol):
    """What RSD needs from a process reward model (e.g. ``ponder.rewards.ProcessRewardModel``)."""

    def score(
        self, questions: Sequence[str], steps: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """Per-step scores in [0, 1]: ``out[i][j]`` scores step j of candidate i."""
        ...


@dataclass
class RSDResult:
    """The completions (step texts joined by the delimiter, special tokens removed), the steps
    with who wrote them (``"draft"`` / ``"target"``), and the statistics (see :func:`rsd_generate`)."""

    texts: list[str]
    steps: list[list[tuple[str, str]]]
    stats: dict[str, float] = field(default_factory=dict)


class _NewSteps:
    """The steps being written, one per batch row: ``tokens[j]`` so far, whether the step ended
    with EOS (``ended_eos[j]``) and whether it goes on (``active[j]``: not ended by EOS, the
    delimiter or ``max_tokens[j]``)."""

    def __init__(self, tokenizer, delimiter: str, max_tokens: Sequence[int]):
        self.tokenizer, self.delimiter, self.max_tokens = tokenizer, delimiter, max_tokens
        self.tokens: list[list[int]] = [[] for _ in max_tokens]
        self.ended_eos = [False] * len(max_tokens)
        self.active = [m > 0 for m in max_tokens]

    def take(self, tok: Tensor, trace: _DraftTrace | None, rows: Sequence[int] | None,
             prefixes: Sequence[Sequence[int]], logits: Tensor, hidden: Tensor | None) -> None:
        """Append the sampled ``tok [n]`` to the active rows' steps; with ``trace``, record the
        predictions ``logits [n, 1, V]`` / ``hidden [n, 1, H]`` that drew them (row ``j`` is
        problem ``rows[j]``)."""
        eos = self.tokenizer.eos_token_id
        for j, t in enumerate(tok.tolist()):
            if not self.active[j]:
                continue
            new = self.tokens[j]
            if trace is not None:
                trace.put(rows[j], len(prefixes[j]) + len(new), logits[j, -1:], hidden[j, -1:])
            new.append(t)
            if t == eos:
                self.ended_eos[j], self.active[j] = True, False
            elif (len(new) >= self.max_tokens[j]
                  or self.tokenizer.decode(new).endswith(self.delimiter)):
                self.active[j] = False


@torch.inference_mode()
def _generate_steps(
    model,
    tokenizer,
    prefixes: Sequence[Sequence[int]],
    *,
    delimiter: str,
    max_tokens: Sequence[int],
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
    trace: _DraftTrace | None = None,
    rows: Sequence[int] | None = None,
) -> tuple[list[list[int]], list[bool]]:
    """One step per prefix, batched: new token ids (up to and including the delimiter or EOS)
    and whether the step ended with EOS. With ``trace``, the model's predictions for every
    position of row ``rows[i]``'s prefix and new tokens are written to it."""
    device = model_device(model)
    ids, mask = left_pad(prefixes, tokenizer.pad_token_id, device)
    hidden = None
    if trace is None:
        logits, cache = forward_cached(model, ids, mask, positions(mask), None, 1)
    else:
        width = ids.shape[1]
        logits, cache, hidden = forward_cached(model, ids, mask, positions(mask), None, width,
                                               with_hidden=True)
        for j, (i, p) in enumerate(zip(rows, prefixes)):
            # columns width - len(p) .. width - 1 read positions 0 .. len(p) - 1
            trace.put(i, 1, logits[j, width - len(p):], hidden[j, width - len(p):])
        logits, hidden = logits[:, -1:], hidden[:, -1:]
    n = len(prefixes)
    steps = _NewSteps(tokenizer, delimiter, max_tokens)
    new, ended_eos, active = steps.tokens, steps.ended_eos, steps.active
    while any(active):
        tok = sample(logits[:, -1].float(), temperature, top_k, top_p, generator)
        steps.take(tok, trace, rows, prefixes, logits, hidden)
        if not any(active):
            break
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], 1)
        out = forward_cached(model, tok[:, None], mask, positions(mask)[:, -1:], cache, 1,
                             with_hidden=trace is not None)
        logits, cache = out[0], out[1]
        hidden = out[2] if trace is not None else None
    return new, ended_eos


class _DraftTrace:
    """The draft's predictions at every position of each problem's text, kept from its own
    generation passes (nothing is recomputed for them): row ``i``'s ``logp[q]`` is the
    log-softmax of the logits that predicted problem ``i``'s token at position ``q`` and
    ``hidden[q]`` the last-layer hidden state that produced them (the state at position
    ``q - 1``); position 0 (nothing predicts it) holds zeros."""

    def __init__(self, rows: int):
        # per row: buffers with room to grow (doubling: one token's put copies nothing) and
        # how many positions of them are held
        self._logp: list[Tensor | None] = [None] * rows
        self._hidden: list[Tensor | None] = [None] * rows
        self._held = [0] * rows

    def view(self, i: int, n: int) -> tuple[Tensor, Tensor]:
        """Row ``i``'s ``logp [n, V]`` and ``hidden [n, H]`` for positions ``0 .. n - 1``
        (views: a later put overwrites them)."""
        if self._held[i] < n:
            raise RuntimeError(f"rsd_generate: the draft's trace of problem {i} covers "
                               f"{self._held[i]} of {n} positions")
        return self._logp[i][:n], self._hidden[i][:n]

    def put(self, i: int, start: int, logits: Tensor, hidden: Tensor) -> None:
        """Predictions ``logits [T, V]`` / ``hidden [T, H]`` for positions ``start ..
        start + T - 1``; anything held at or after ``start`` is replaced."""
        lp = logits.float().log_softmax(-1)
        hd = hidden.float()
        if self._logp[i] is None:
            self._logp[i] = lp.new_zeros((1, lp.shape[-1]))
            self._hidden[i] = hd.new_zeros((1, hd.shape[-1]))
            self._held[i] = 1
        if start > self._held[i]:  # the caches' bookkeeping guarantees this
            raise RuntimeError(f"_DraftTrace.put: no prediction for positions "
                               f"{self._held[i]}..{start - 1} of row {i}")
        end = start + lp.shape[0]
        room = self._logp[i].shape[0]
        if end > room:
            grown = max(end, 2 * room)
            self._logp[i] = torch.cat([self._logp[i][:start],
                                       lp.new_zeros((grown - start, lp.shape[-1]))], 0)
            self._hidden[i] = torch.cat([self._hidden[i][:start],
                                         hd.new_zeros((grown - start, hd.shape[-1]))], 0)
        self._logp[i][start:end] = lp
        self._hidden[i][start:end] = hd
        self._held[i] = end

    def truncate(self, i: int, length: int) -> None:
        """Forget the predictions for positions ``>= length`` (a discarded step's)."""
        self._held[i] = min(self._held[i], length)


@dataclass
class DraftPass:
    """What the draft computed while reading and writing one candidate (see
    :class:`DraftPassScorer`): ``ids [T]`` the question's and steps' token ids,
    ``logp [T, V]`` the log-softmax of the draft's logits that predicted each position (row 0
    zeros), ``hidden [T, H]`` the draft's last-layer hidden state that produced them, and
    ``spans`` each step's ``(start, end)`` positions in ``ids`` (its delimiter or EOS
    included); the last span is the step to score. ``logp`` and ``hidden`` are views of
    buffers that ``rsd_generate`` overwrites at its next step: copy them to keep them."""

    ids: Tensor
    logp: Tensor
    hidden: Tensor
    spans: list[tuple[int, int]]


@runtime_checkable
class DraftPassScorer(Protocol):
    """A PRM that can score a draft step from the draft's own generation pass
    (``rsd_generate(prm_from_draft=True)``): nothing is re-read, only its head runs."""

    def score_draft_pass(self, passes: Sequence[DraftPass]) -> list[float]:
        """The score in [0, 1] of each pass's last step."""
        ...

    def draft_pass_flops(self, tokens: int, steps: int) -> float:
        """The FLOPs of scoring ``steps`` steps of ``tokens`` tokens in all this way."""
        ...


class _CarriedCache:
    """One model's KV cache carried across the steps of a batch of problems.

    The cache holds every problem of the batch (finished ones included) and only grows at its
    end. A step runs on the rows it concerns only: their rows of the cache are taken out, the
    step appends columns to them, and they are put back, the other rows getting masked
    (attention mask 0) columns. ``fed[i]`` tokens of problem ``i``'s prefix are in the cache,
    in order, at unmasked columns; the prefix's last token is never fed ahead of time, so a
    step always starts by feeding at least one token (whose logits start the step). A discarded
    step is removed by masking its columns (:meth:`commit`), and trailing columns masked in
    every row are cropped off the cache.
    """

    def __init__(self, model, rows: int, pad_id: int):
        self.model = model
        self.device = model_device(model)
        self.pad_id = pad_id
        self.layers: list[tuple[Tensor, Tensor]] | None = None  # per layer (keys, values)
        self.mask = torch.zeros((rows, 0), dtype=torch.long, device=self.device)
        self.fed = [0] * rows
        self.step_cols: dict[int, list[int]] = {}

    def _take(self, index: Tensor):
        """A transformers cache holding rows ``index`` (None before the first step)."""
        if self.layers is None:
            return None
        from transformers import DynamicCache

        return DynamicCache([(k[index], v[index]) for k, v in self.layers])

    def _put(self, index: Tensor, cache, mask: Tensor) -> None:
        """Write rows ``index`` back (``cache``, ``mask``); the other rows get masked columns."""
        rows, width = self.mask.shape[0], mask.shape[1]
        grow = width - self.mask.shape[1]
        full = torch.zeros((rows, width), dtype=self.mask.dtype, device=self.device)
        full[:, :self.mask.shape[1]] = self.mask
        full[index] = mask
        self.mask = full
        layers = []
        for li, layer in enumerate(cache.layers):
            new_k, new_v = layer.keys, layer.values
            if self.layers is None:
                k = new_k.new_zeros((rows, *new_k.shape[1:]))
                v = new_v.new_zeros((rows, *new_v.shape[1:]))
            else:
                old_k, old_v = self.layers[li]
                pad = (*old_k.shape[:2], grow, old_k.shape[3])
                k = torch.cat([old_k, old_k.new_zeros(pad)], 2)
                v = torch.cat([old_v, old_v.new_zeros(pad)], 2)
            k[index], v[index] = new_k, new_v
            layers.append((k, v))
        self.layers = layers

    def _block(self, rows: Sequence[int], missing: Sequence[Sequence[int]]
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, mask columns and positions ``[n, width]`` of each row's ``missing``
        tokens right-aligned in one block (left-padded), positions continuing from ``fed``."""
        n, width = len(rows), max(len(m) for m in missing)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long, device=self.device)
        block = torch.zeros((n, width), dtype=torch.long, device=self.device)
        pos = torch.zeros((n, width), dtype=torch.long, device=self.device)
        for j, (i, m) in enumerate(zip(rows, missing)):
            ids[j, width - len(m):] = torch.as_tensor(m, dtype=torch.long)
            block[j, width - len(m):] = 1
            pos[j, width - len(m):] = torch.arange(self.fed[i], self.fed[i] + len(m))
        return ids, block, pos

    @torch.inference_mode()
    def generate(self, tokenizer, rows: Sequence[int], prefixes: Sequence[Sequence[int]], *,
                 delimiter: str, max_tokens: Sequence[int], temperature: float,
                 top_k: int | None, top_p: float | None, generator: torch.Generator | None,
                 trace: _DraftTrace | None = None) -> tuple[list[list[int]], list[bool]]:
        """:func:`_generate_steps` for batch rows ``rows`` (whose prefixes are ``prefixes``),
        reading and extending the carried cache; the same draws at the same seed. With
        ``trace``, the predictions for the positions read and written are written to it (the
        catch-up block then keeps the logits of all its positions, not only the last)."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)
        cache = self._take(index)
        mask = self.mask[index]
        # catch up: each row's tokens not in the cache yet, right-aligned in one block
        missing = [list(p[self.fed[i]:]) for i, p in zip(rows, prefixes)]
        ids, block, pos = self._block(rows, missing)
        width = ids.shape[1]
        for i, m in zip(rows, missing):
            self.fed[i] += len(m)
        mask = torch.cat([mask, block], 1)
        hidden = None
        if trace is None:
            logits, cache = forward_cached(self.model, ids, mask, pos, cache, 1)
        else:
            logits, cache, hidden = forward_cached(self.model, ids, mask, pos, cache, width,
                                                   with_hidden=True)
            for j, (i, m) in enumerate(zip(rows, missing)):
                # the block's columns read positions fed - len(m) .. fed - 1 and predict the next
                trace.put(i, self.fed[i] - len(m) + 1, logits[j, width - len(m):],
                          hidden[j, width - len(m):])
            logits, hidden = logits[:, -1:], hidden[:, -1:]
        steps = _NewSteps(tokenizer, delimiter, max_tokens)
        new, ended_eos, active = steps.tokens, steps.ended_eos, steps.active
        self.step_cols = {i: [] for i in rows}
        while any(active):
            tok = sample(logits[:, -1].float(), temperature, top_k, top_p, generator)
            steps.take(tok, trace, rows, prefixes, logits, hidden)
            if not any(active):
                break
            # feed the new token of the rows that go on (a finished row's last token is fed
            # at its next step, if the step is kept)
            col = mask.shape[1]
            go = torch.tensor(active, dtype=torch.long, device=self.device)[:, None]
            step_pos = torch.tensor([self.fed[i] + len(new[j]) - 1 for j, i in enumerate(rows)],
                                    dtype=torch.long, device=self.device)[:, None]
            for j, i in enumerate(rows):
                if active[j]:
                    self.step_cols[i].append(col)
            mask = torch.cat([mask, go], 1)
            out = forward_cached(self.model, tok[:, None], mask, step_pos * go, cache, 1,
                                 with_hidden=trace is not None)
            logits, cache = out[0], out[1]
            hidden = out[2] if trace is not None else None
        self._put(index, cache, mask)
        return new, ended_eos

    @torch.inference_mode()
    def read(self, rows: Sequence[int], texts: Sequence[Sequence[int]],
             step_lengths: Sequence[int], trace: _DraftTrace) -> None:
        """Read (without generating) each row's ``texts`` (its prefix and a new step of
        ``step_lengths[j]`` tokens at the end) from where the cache stops, writing the
        predictions to ``trace``; the step's columns wait for :meth:`commit` (kept: they count
        as prefix; discarded: masked out), the prefix's count as read."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.device)
        cache = self._take(index)
        mask = self.mask[index]
        missing = [list(t[self.fed[i]:]) for i, t in zip(rows, texts)]
        if min(len(m) - k for m, k in zip(missing, step_lengths)) < 0 or min(step_lengths) < 1:
            raise RuntimeError("_CarriedCache.read: a step is empty or already read")
        ids, block, pos = self._block(rows, missing)
        width = ids.shape[1]
        col0 = mask.shape[1]
        self.step_cols = {i: list(range(col0 + width - k, col0 + width))
                          for i, k in zip(rows, step_lengths)}
        mask = torch.cat([mask, block], 1)
        logits, cache, hidden = forward_cached(self.model, ids, mask, pos, cache, width,
                                               with_hidden=True)
        for j, (i, m) in enumerate(zip(rows, missing)):
            trace.put(i, self.fed[i] + 1, logits[j, width - len(m):], hidden[j, width - len(m):])
            self.fed[i] += len(m) - step_lengths[j]
        self._put(index, cache, mask)

    @torch.inference_mode()
    def commit(self, kept: dict[int, bool]) -> None:
        """After a step: rows whose step is kept count its fed tokens as prefix; the others'
        step columns are masked out, and columns masked in every row are cropped off the end."""
        for i, cols in self.step_cols.items():
            if kept.get(i, False):
                self.fed[i] += len(cols)
            elif cols:
                self.mask[i, cols] = 0
        self.step_cols = {}
        used = self.mask.any(0).nonzero()
        keep = int(used[-1]) + 1 if len(used) else 0
        if self.layers is not None and keep < self.mask.shape[1]:
            self.mask = self.mask[:, :keep]
            self.layers = [(k[:, :, :keep], v[:, :, :keep]) for k, v in self.layers]


def _question_text(problem) -> str:
    return problem if isinstance(problem, str) else problem.prompt


def rsd_generate(
    draft,
    target,
    prm: StepScorer | None,
    problems: Sequence,
    *,
    tokenizer,
    target_tokenizer=None,
    delta: float = 0.7,
    omega: str = "binary",
    step_delimiter: str = "\n\n",
    max_steps: int = 100,
    max_new_tokens: int = 256,
    max_step_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 64,
    verifier: Callable[[object, str], bool] | None = None,
    prm_parameters: int | None = None,
    generator: torch.Generator | int | None = None,
    carry_cache: bool = True,
    prm_from_draft: bool = False,
    prm_cache: bool = True,
) -> RSDResult:
    """Reward-guided speculative decoding over a batch of problems.

    Args:
        draft, target: transformers causal LMs sharing ``tokenizer``.
        prm: a :class:`StepScorer` (None only for ``delta = +-inf`` with binary omega).
        problems: prompts (str) or objects with a ``.prompt`` (e.g. ``ponder.toy.Problem``).
        tokenizer: the draft's tokenizer; target_tokenizer: the target's, checked equal.
        delta: the acceptance threshold; omega: one of ``"binary"``, ``"constant"``,
            ``"clipping"``, ``"sigmoid"``.
        step_delimiter: ends a step; max_steps / max_new_tokens / max_step_tokens: caps per
            problem (steps, tokens in all, tokens per step).
        temperature, top_k, top_p: sampling of both models (0: greedy).
        batch_size: problems per batch.
        verifier: ``verifier(problem, text) -> bool``; gives ``stats["accuracy"]``.
        prm_parameters: the PRM's parameter count for the FLOP estimate (default: its
            ``model``'s parameters if it has one, else 0).
        generator: seed for sampling and non-binary omega.
        carry_cache: carry the draft's and the target's KV caches across steps (a discarded
            draft step is masked out and cropped); False re-reads every prefix at every step
            (the first version). Both give the same tokens at the same seed (up to float
            rounding in attention).
        prm_from_draft: score each draft step from the draft's own generation pass (its
            logits and last-layer hidden states at the question's and steps' positions, kept
            as it reads and writes them) instead of calling ``prm.score`` on the text: ``prm``
            must be a :class:`DraftPassScorer` built on this draft (e.g.
            ``ponder.toy.prm_check`` PRMs on ``"draft"``). ``flops_prm`` is then only the
            scorer's own (``prm.draft_pass_flops``); ``prm_parameters`` is not used.
        prm_cache: with ``carry_cache``, a PRM that reads one LM of its own (a
            :class:`DraftPassScorer` with a ``pass_model``, e.g. a ``ponder.toy.prm_check``
            PRM on the target) keeps that LM's KV cache across steps too: it reads only the
            tokens written since its last call (the new step, and a target step before it)
            and scores from that pass; a discarded step is masked out of its cache. The same
            scores as re-reading (up to float rounding) and the same FLOP estimate (2 x PRM
            parameters per scored token), less time. False: ``prm.score`` re-reads the text.

    Returns:
        :class:`RSDResult`. ``stats``: ``problems``, ``draft_steps`` / ``target_steps`` (steps
        kept from each), ``proposed_draft_steps``, ``acceptance_rate`` (kept / proposed draft
        steps), ``draft_tokens`` (all generated, discarded included), ``discarded_draft_tokens``,
        ``target_tokens``, ``prm_tokens``, ``flops_draft`` / ``flops_target`` / ``flops`` (2 x
        params x tokens), ``flops_prm`` (2 x PRM params x scored tokens, or the draft-pass
        scorer's own FLOPs), ``wall_s`` (``prm_wall_s`` of it scoring and deciding), and
        ``accuracy`` with a verifier.
    """
    check_pair(draft, target)
    if target_tokenizer is not None:
        check_tokenizers(tokenizer, target_tokenizer)
    if omega not in OMEGAS:
        raise ValueError(f"omega must be one of {OMEGAS}, got {omega!r}")
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or math.isnan(delta):
        raise ValueError(f"delta must be a real number or +-inf, got {delta!r}")
    for name, v in (("max_steps", max_steps), ("max_new_tokens", max_new_tokens),
                    ("max_step_tokens", max_step_tokens), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    draft_only = omega == "binary" and delta == -math.inf
    target_only = omega == "binary" and delta == math.inf
    if not (draft_only or target_only):
        if not math.isfinite(delta):
            raise ValueError(f"delta = {delta} is only meaningful with omega='binary'")
        if prm is None or not callable(getattr(prm, "score", None)):
            raise TypeError("prm must have score(questions, steps) -> list[list[float]]")
        if prm_from_draft and not isinstance(prm, DraftPassScorer):
            raise TypeError("prm_from_draft=True needs a prm with score_draft_pass(passes) and "
                            "draft_pass_flops(tokens, steps) (a DraftPassScorer), got "
                            f"{type(prm).__name__}")
    scoring_pass = prm_from_draft and not (draft_only or target_only)
    prm_lm = getattr(prm, "pass_model", None)
    cached_prm = (carry_cache and prm_cache and not prm_from_draft and prm_lm is not None
                  and isinstance(prm, DraftPassScorer) and not (draft_only or target_only))
    if prm_parameters is None:
        inner = getattr(prm, "model", None)
        prm_parameters = num_parameters(inner) if isinstance(inner, torch.nn.Module) else 0
    seed = int(torch.randint(0, 2**62, ())) if generator is None else (
        generator if isinstance(generator, int) else
        int(torch.randint(0, 2**62, (), generator=generator)))
    draw = torch.Generator(device=model_device(draft)).manual_seed(seed)
    gen_kw = {"delimiter": step_delimiter, "temperature": temperature, "top_k": top_k, "top_p": top_p,
                  "generator": draw}
    stats = {"problems": len(problems), "draft_steps": 0, "target_steps": 0, "proposed_draft_steps": 0,
                 "draft_tokens": 0, "discarded_draft_tokens": 0, "target_tokens": 0, "prm_tokens": 0,
                 "flops_prm": 0.0, "prm_wall_s": 0.0}
    start_time = time.perf_counter()
    texts: list[str] = []
    all_steps: list[list[tuple[str, str]]] = []
    for lo in range(0, len(problems), batch_size):
        batch = problems[lo:lo + batch_size]
        questions = [_question_text(p) for p in batch]
        prefix = [list(tokenizer(q)["input_ids"]) for q in questions]
        written = [0] * len(batch)  # new tokens per problem
        steps: list[list[tuple[str, str]]] = [[] for _ in batch]
        step_ids: list[list[list[int]]] = [[] for _ in batch]
        done = [False] * len(batch)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        d_cache = _CarriedCache(draft, len(batch), pad) if carry_cache else None
        t_cache = _CarriedCache(target, len(batch), pad) if carry_cache else None
        trace = _DraftTrace(len(batch)) if scoring_pass else None
        p_cache = _CarriedCache(prm_lm, len(batch), pad) if cached_prm else None
        p_trace = _DraftTrace(len(batch)) if cached_prm else None
        prompt_len = [len(p) for p in prefix]
        while not all(done):
            live = [i for i in range(len(batch)) if not done[i]]
            caps = [min(max_step_tokens, max_new_tokens - written[i]) for i in live]
            keep = [False] * len(live)
            d_new: list[list[int]] = [[] for _ in live]
            d_eos = [False] * len(live)
            if not target_only:
                if d_cache is not None:
                    d_new, d_eos = d_cache.generate(tokenizer, live, [prefix[i] for i in live],
                                                    max_tokens=caps, trace=trace, **gen_kw)
                else:
                    d_new, d_eos = _generate_steps(
                        draft, tokenizer, [prefix[i] for i in live], max_tokens=caps,
                        trace=trace, rows=live, **gen_kw)
                stats["draft_tokens"] += sum(map(len, d_new))
                stats["proposed_draft_steps"] += len(live)
                t_prm = time.perf_counter()
                if draft_only:
                    keep = [True] * len(live)
                elif scoring_pass:
                    passes = [_draft_pass(trace, i, prefix[i] + d_new[j], prompt_len[i],
                                          [len(x) for x in step_ids[i]] + [len(d_new[j])])
                              for j, i in enumerate(live)]
                    rewards = torch.tensor([float(r) for r in prm.score_draft_pass(passes)],
                                           dtype=torch.float64)
                    stats["prm_tokens"] += sum(map(len, d_new))
                    stats["flops_prm"] += float(prm.draft_pass_flops(sum(map(len, d_new)),
                                                                     len(live)))
                    acc, _ = accept_steps(rewards, delta, omega,
                                          generator=int(torch.randint(0, 2**62, (),
                                                                      generator=draw)))
                    keep = acc.tolist()
                elif p_cache is not None:
                    texts_j = [prefix[i] + d_new[j] for j, i in enumerate(live)]
                    p_cache.read(live, texts_j, [len(x) for x in d_new], p_trace)
                    passes = [_draft_pass(p_trace, i, texts_j[j], prompt_len[i],
                                          [len(x) for x in step_ids[i]] + [len(d_new[j])])
                              for j, i in enumerate(live)]
                    rewards = torch.tensor([float(r) for r in prm.score_draft_pass(passes)],
                                           dtype=torch.float64)
                    stats["prm_tokens"] += sum(map(len, d_new))
                    stats["flops_prm"] += 2.0 * prm_parameters * sum(map(len, d_new))
                    acc, _ = accept_steps(rewards, delta, omega,
                                          generator=int(torch.randint(0, 2**62, (),
                                                                      generator=draw)))
                    keep = acc.tolist()
                    p_cache.commit({i: bool(keep[j]) for j, i in enumerate(live)})
                    for j, i in enumerate(live):
                        if not keep[j]:
                            p_trace.truncate(i, len(prefix[i]) + 1)
                else:
                    cand = [[s for s, _ in steps[i]] + [_clean(tokenizer, d_new[j],
                                                               step_delimiter)]
                            for j, i in enumerate(live)]
                    scores = prm.score([questions[i] for i in live], cand)
                    rewards = torch.tensor([float(s[-1]) for s in scores], dtype=torch.float64)
                    stats["prm_tokens"] += sum(map(len, d_new))
                    stats["flops_prm"] += 2.0 * prm_parameters * sum(map(len, d_new))
                    acc, _ = accept_steps(rewards, delta, omega,
                                          generator=int(torch.randint(0, 2**62, (),
                                                                      generator=draw)))
                    keep = acc.tolist()
                stats["prm_wall_s"] += time.perf_counter() - t_prm
            if d_cache is not None and not target_only:
                d_cache.commit({i: bool(keep[j]) for j, i in enumerate(live)})
            if trace is not None:
                for j, i in enumerate(live):
                    if not keep[j]:  # the prediction for the step's first position stays
                        trace.truncate(i, len(prefix[i]) + 1)
            redo = [i for j, i in enumerate(live) if not keep[j]]
            t_new, t_eos = [], []
            if redo:
                t_caps = [min(max_step_tokens, max_new_tokens - written[i]) for i in redo]
                if t_cache is not None:
                    t_new, t_eos = t_cache.generate(tokenizer, redo, [prefix[i] for i in redo],
                                                    max_tokens=t_caps, **gen_kw)
                    t_cache.commit({i: True for i in redo})
                else:
                    t_new, t_eos = _generate_steps(target, tokenizer, [prefix[i] for i in redo],
                                                   max_tokens=t_caps, **gen_kw)
                stats["target_tokens"] += sum(map(len, t_new))
            by_target = dict(zip(redo, zip(t_new, t_eos)))
            for j, i in enumerate(live):
                if keep[j]:
                    ids, eos, who = d_new[j], d_eos[j], "draft"
                    stats["draft_steps"] += 1
                else:
                    ids, eos = by_target[i]
                    who = "target"
                    stats["target_steps"] += 1
                    stats["discarded_draft_tokens"] += len(d_new[j])
                prefix[i] = prefix[i] + ids
                written[i] += len(ids)
                step_ids[i].append(ids)
                steps[i].append((_clean(tokenizer, ids, step_delimiter), who))
                if eos or written[i] >= max_new_tokens or len(steps[i]) >= max_steps:
                    done[i] = True
        for i in range(len(batch)):
            flat = [t for ids in step_ids[i] for t in ids]
            texts.append(tokenizer.decode(flat, skip_special_tokens=True))
            all_steps.append(steps[i])
    stats["wall_s"] = time.perf_counter() - start_time
    proposed = stats["proposed_draft_steps"]
    stats["acceptance_rate"] = stats["draft_steps"] / proposed if proposed else float("nan")
    stats["flops_draft"] = 2.0 * num_parameters(draft) * stats["draft_tokens"]
    stats["flops_target"] = 2.0 * num_parameters(target) * stats["target_tokens"]
    stats["flops"] = stats["flops_draft"] + stats["flops_target"] + stats["flops_prm"]
    if verifier is not None:
        stats["accuracy"] = sum(bool(verifier(p, t)) for p, t in zip(problems, texts)) / max(
            len(problems), 1)
    return RSDResult(texts, all_steps, stats)


def _draft_pass(trace: _DraftTrace, i: int, ids: Sequence[int], prompt_len: int,
                step_lengths: Sequence[int]) -> DraftPass:
    """Problem ``i``'s :class:`DraftPass` for the text ``ids`` (prompt, then steps of
    ``step_lengths`` tokens, the last one being scored)."""
    logp, hidden = trace.view(i, len(ids))
    spans, start = [], prompt_len
    for length in step_lengths:
        spans.append((start, start + length))
        start += length
    return DraftPass(torch.as_tensor(list(ids), dtype=torch.long), logp, hidden, spans)


def _clean(tokenizer, ids: Sequence[int], delimiter: str) -> str:
    """A step's text for the PRM: special tokens and the trailing delimiter removed."""
    text = tokenizer.decode(list(ids), skip_special_tokens=True)
    return text[: -len(delimiter)] if delimiter and text.endswith(delimiter) else text
