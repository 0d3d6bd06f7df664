"""The step-checking toy PRM: a small learned head on a frozen toy LM's token log-probabilities.

The first toy PRM (:mod:`ponder.toy.prm`, a fine-tuned target with two extra layers) judged steps
from priors across problems and did not check the arithmetic within a problem: best-of-8 by its
score picked a right answer less often than majority vote. The toy target does know the
arithmetic (its own minimum token log-probability picks right 72.7% of the time), so this PRM
reads that signal directly:

- a frozen toy LM (``"target"`` by default; ``"draft"`` for a nearly free PRM) reads the solution
  *without* the step tags (the text it was trained on), giving each written token its
  log-probability, the best token's log-probability and whether the written token is the LM's
  top choice;
- per step (the tokens of the step's line, up to its tag), seven features are pooled: the
  minimum, mean and sum of the token log-probs, the number of tokens that are not the LM's top
  choice, the minimum margin (written minus best log-prob), the minimum over the steps so far
  (the prefix), and the step's length;
- a small MLP (``features -> width``, tanh; its output concatenated with the features) is the
  "hidden state" at the tag, and a value head ``sigmoid(w . h + b)`` scores the step
  (:func:`ponder.rewards.value_head`-style, computed by :mod:`ponder.ops.prm`).

Only the MLP and the head are trained (by :class:`ponder.rewards.PRMTrainer` with
``value_head="head"``, on ER-PRM labels from :func:`ponder.rewards.collect_rollouts`); the
shipped folder holds them (a few hundred parameters) and names the LM they read. Scoring costs
one forward pass of that LM per scored token (the head is ~10^3 FLOPs per step).

Scoring without the forward: the features are the LM's own log-probs of the written tokens, so
a PRM on the draft can score a step from what the draft computed while writing it
(:meth:`CheckPRM.score_draft_pass` on a ``ponder.decoding.DraftPass``; RSD does this with
``rsd_generate(prm_from_draft=True)``): :meth:`LogProbFeatures.pass_features` pools the same
numbers from the pass, and only the head runs. RSD also carries the PRM's own LM cache
(``CheckPRM.pass_model``) when the PRM re-reads. ``hidden=True`` adds the LM's last-layer
states (the mean over the step's line and the state at its least likely token) to the features;
on the toy world they did not judge better (bench/speculative.md).

    from ponder.toy import load_toy_prm
    prm = load_toy_prm()                       # this PRM, on the toy target
    prm.score(["Q: 12+34-5=?"], [["12+34=46", "46-5=41", "Answer: 41"]])
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..rewards import ProcessRewardModel

__all__ = [
    "FEATURES",
    "CheckPRM",
    "LogProbFeatures",
    "StepCheckPRM",
    "as_prm",
    "build_check_prm",
    "check_convention",
    "load_check_prm",
    "save_check_prm",
]

FEATURES = ("min", "mean", "sum", "misses", "margin", "prefix_min", "length")
_FLOOR = -30.0  # token log-probs are clamped here (a zero-probability token stays finite)


class LogProbFeatures(nn.Module):
    """Per-position features from frozen LMs' token log-probabilities (see the module doc).

    ``forward(input_ids [B, L], attention_mask [B, L])`` returns ``(hidden [B, L, D],)`` with
    ``D = F * len(lms) + width``; rows at step-tag positions hold the step's features, other
    rows are zero. The LMs never see the tags: each row is compacted (tags and the space before
    them dropped), run, and its log-probs put back at the original positions.
    """

    def __init__(self, lms: dict[str, nn.Module], *, tag_id: int, space_id: int, newline_id: int,
                 width: int = 16, hidden: int = 0, special_ids: Sequence[int] = ()):
        super().__init__()
        if hidden and len(lms) != 1:
            raise ValueError(f"LogProbFeatures: hidden-state features need exactly one LM, got "
                             f"{list(lms)}")
        self.lms = nn.ModuleDict(lms)
        for lm in self.lms.values():
            lm.requires_grad_(False)
            lm.eval()
        self.tag_id, self.space_id, self.newline_id = int(tag_id), int(space_id), int(newline_id)
        self.special_ids = frozenset(int(t) for t in special_ids)
        self.hidden = int(hidden)
        self.n_raw = len(FEATURES) * len(lms) + 2 * self.hidden
        self.mlp = nn.Linear(self.n_raw, width)
        self.width = int(width)
        self.out_dim = self.n_raw + width

    def train(self, mode: bool = True):
        super().train(mode)
        for lm in self.lms.values():  # the LMs stay frozen, in eval mode
            lm.eval()
        return self

    def enable_cache(self, on: bool = True) -> None:
        """Remember each row's features by its tokens (the LMs are frozen, so they never change):
        training then runs the LMs once per distinct example instead of once per epoch."""
        self._cache = {} if on else None

    @torch.no_grad()
    def step_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The raw features ``[B, L, n_raw]`` (zero away from the tags)."""
        cache = getattr(self, "_cache", None)
        if cache is None:
            return self._step_features(input_ids, attention_mask)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        lens = mask.sum(1).tolist()
        keys = [tuple(input_ids[r, :n].tolist()) for r, n in enumerate(lens)]
        todo = [r for r, k in enumerate(keys) if k not in cache]
        if todo:
            f = self._step_features(input_ids[todo], mask[todo])
            for j, r in enumerate(todo):
                cache[keys[r]] = f[j, :lens[r]].clone()
        out = torch.zeros(*input_ids.shape, self.n_raw)
        for r, k in enumerate(keys):
            out[r, :lens[r]] = cache[k]
        return out.to(input_ids.device)

    def _step_features(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        ids = input_ids
        mask = torch.ones_like(ids, dtype=torch.bool) if attention_mask is None \
            else attention_mask.bool()
        is_tag = (ids == self.tag_id) & mask
        before_tag = torch.zeros_like(is_tag)
        before_tag[:, :-1] = is_tag[:, 1:] & (ids[:, :-1] == self.space_id)
        keep = mask & ~is_tag & ~before_tag
        lengths = keep.sum(1)
        width = int(lengths.max())
        # positions of the kept tokens first, in order (a stable sort of "dropped" flags)
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :width]
        comp = ids.gather(1, order)
        comp_mask = torch.arange(width, device=ids.device)[None] < lengths[:, None]
        comp = comp.masked_fill(~comp_mask, 0)
        feats = []
        for lm in self.lms.values():
            out = lm(input_ids=comp, attention_mask=comp_mask.long(), use_cache=False,
                     **({"output_hidden_states": True} if self.hidden else {}))
            logp = out.logits.float().log_softmax(-1)
            tok = torch.zeros(comp.shape, dtype=torch.float32, device=ids.device)
            best = torch.zeros_like(tok)
            miss = torch.zeros_like(tok)
            tok[:, 1:] = logp[:, :-1].gather(-1, comp[:, 1:, None])[..., 0]
            top = logp[:, :-1].max(-1)
            best[:, 1:] = top.values
            miss[:, 1:] = (top.indices != comp[:, 1:]).float()
            per_token = []
            for x in (tok.clamp(min=_FLOOR), best.clamp(min=_FLOOR), miss):
                full = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
                full.scatter_(1, order, x * comp_mask)
                per_token.append(full)
            hid = None
            if self.hidden:  # the state that predicted each token: the one at the position before
                h = torch.zeros(*comp.shape, self.hidden, dtype=torch.float32, device=ids.device)
                h[:, 1:] = out.hidden_states[-1][:, :-1].float()
                hid = torch.zeros(*ids.shape, self.hidden, dtype=torch.float32,
                                  device=ids.device)
                hid.scatter_(1, order[..., None].expand(-1, -1, self.hidden),
                             h * comp_mask[..., None])
            feats.append(self._pool(ids, keep, is_tag, *per_token, hid=hid))
        return torch.cat(feats, -1)

    def _pool(self, ids: Tensor, keep: Tensor, is_tag: Tensor, tok: Tensor, best: Tensor,
              miss: Tensor, hid: Tensor | None = None) -> Tensor:
        b, n = ids.shape
        n_h = 0 if hid is None else hid.shape[-1]
        out = torch.zeros(b, n, len(FEATURES) + 2 * n_h, dtype=torch.float32, device=ids.device)
        hsum = torch.zeros(b, n_h, device=ids.device)
        hmin = torch.zeros(b, n_h, device=ids.device)
        tmin = torch.full((b,), math.inf, device=ids.device)
        newline = ids == self.newline_id
        count = torch.zeros(b, device=ids.device)
        s = torch.zeros(b, device=ids.device)
        mn = torch.zeros(b, device=ids.device)
        margin = torch.zeros(b, device=ids.device)
        misses = torch.zeros(b, device=ids.device)
        prefix = torch.zeros(b, device=ids.device)
        for j in range(n):  # a running reduction over each line (steps never contain "\n")
            reset = newline[:, j]
            count = torch.where(reset, 0.0, count)
            s = torch.where(reset, 0.0, s)
            mn = torch.where(reset, 0.0, mn)
            margin = torch.where(reset, 0.0, margin)
            misses = torch.where(reset, 0.0, misses)
            c = keep[:, j] & ~reset & (j > 0)
            if n_h:  # the mean state over the line, and the state at its least likely token
                hsum = torch.where(reset[:, None], 0.0, hsum) + torch.where(c[:, None],
                                                                            hid[:, j], 0.0)
                low = c & (tok[:, j] < tmin)
                hmin = torch.where(reset[:, None], 0.0, hmin)
                hmin = torch.where(low[:, None], hid[:, j], hmin)
                tmin = torch.where(reset, math.inf, tmin)
                tmin = torch.where(low, tok[:, j], tmin)
            count = count + c
            s = s + torch.where(c, tok[:, j], 0.0)
            mn = torch.where(c, torch.minimum(mn, tok[:, j]), mn)
            margin = torch.where(c, torch.minimum(margin, tok[:, j] - best[:, j]), margin)
            misses = misses + torch.where(c, miss[:, j], 0.0)
            t = is_tag[:, j]
            if bool(t.any()):
                prefix = torch.where(t, torch.minimum(prefix, mn), prefix)
                row = torch.stack([mn / 5, s / count.clamp(min=1) / 5, s / 20, misses, margin / 5,
                                   prefix / 5, count / 10], -1)
                if n_h:
                    row = torch.cat([row, hsum / count.clamp(min=1)[:, None], hmin], -1)
                out[:, j] = torch.where(t[:, None], row, 0.0)
        return out

    @torch.no_grad()
    def pass_features(self, ids: Tensor, logp: Tensor, hidden: Tensor | None,
                      spans: Sequence[tuple[int, int]]) -> Tensor:
        """The raw features ``[len(spans), n_raw]`` of each step from an LM's own pass over the
        text (``ponder.decoding.DraftPass``: ``ids [T]``, the log-probs ``logp [T, V]`` that
        predicted each position, the hidden states ``hidden [T, H]`` that produced them, the
        steps' ``(start, end)`` spans): the same numbers :meth:`step_features` computes by
        re-reading the tagged text (up to float rounding), without running the LM. Like that
        text, a step is its tokens without special tokens and with its delimiter and the
        whitespace around it stripped; the features pool its last line."""
        if len(self.lms) != 1:
            raise ValueError(f"pass_features: features of one LM only, this reads {list(self.lms)}")
        if self.hidden and (hidden is None or hidden.shape[-1] != self.hidden):
            raise ValueError(f"pass_features: hidden must be [T, {self.hidden}], got "
                             f"{None if hidden is None else tuple(hidden.shape)}")
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        blank = {self.newline_id, self.space_id}
        rows, prefix = [], 0.0
        for start, end in spans:
            pos = [q for q in range(start, end) if ids[q] not in self.special_ids]
            while pos and ids[pos[-1]] in blank:
                pos.pop()
            while pos and ids[pos[0]] in blank:
                pos.pop(0)
            lines = [k for k, q in enumerate(pos) if ids[q] == self.newline_id]
            line = [q for q in pos[lines[-1] + 1:] if q > 0] if lines else \
                [q for q in pos if q > 0]
            index = torch.as_tensor(line, dtype=torch.long)
            lp = logp[index].float()
            written = torch.as_tensor([ids[q] for q in line], dtype=torch.long)
            tok = lp.gather(-1, written[:, None])[:, 0] if line else lp.new_zeros(0)
            top = lp.max(-1) if line else None
            best = top.values.clamp(min=_FLOOR) if line else lp.new_zeros(0)
            misses = float((top.indices != written).sum()) if line else 0.0
            tok = tok.clamp(min=_FLOOR)
            count = len(line)
            total = float(tok.sum())
            mn = min(0.0, float(tok.min())) if count else 0.0
            margin = min(0.0, float((tok - best).min())) if count else 0.0
            prefix = min(prefix, mn)
            row = [mn / 5, total / max(count, 1) / 5, total / 20, misses, margin / 5,
                   prefix / 5, count / 10]
            row = torch.tensor(row, dtype=torch.float32)
            if self.hidden:
                h = hidden[index].float()
                mean = h.sum(0) / max(count, 1)
                low = h[int(tok.argmin())] if count else h.new_zeros(self.hidden)
                row = torch.cat([row, mean, low])
            rows.append(row)
        if not rows:
            return torch.zeros(0, self.n_raw)
        return torch.stack(rows)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **_: Any):
        f = self.step_features(input_ids, attention_mask)
        return (torch.cat([f, torch.tanh(self.mlp(f))], -1),)


class StepCheckPRM(nn.Module):
    """:class:`LogProbFeatures` plus a value head ``head`` (``Linear(D, 1)``); ``base_model`` is
    the feature module (what :class:`ponder.rewards.ProcessRewardModel` and ``prm_loss`` run)."""

    def __init__(self, features: LogProbFeatures):
        super().__init__()
        self.features = features
        self.head = nn.Linear(features.out_dim, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()

    @property
    def base_model(self) -> LogProbFeatures:
        return self.features

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **_: Any):
        return self.features(input_ids, attention_mask)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def lm_parameters(self) -> int:
        return sum(p.numel() for p in self.features.lms.parameters())


def check_convention():
    """The toy convention with a value head (``" k"`` tags, ``sigmoid(w . h + b)``)."""
    from ..rewards import toy_convention

    return replace(toy_convention(), name="toy-check", kind="value", positive=None,
                   negative=None)


def build_check_prm(lms: Sequence[str] = ("target",), *, width: int = 16,
                    weights_dir: str | Path | None = None, seed: int = 0, hidden: bool = False):
    """A fresh (untrained head) :class:`StepCheckPRM` on the shipped toy LMs ``lms`` and the toy
    tokenizer; ``hidden`` adds the LM's last-layer states to the features (one LM only): their
    mean over the step's line and the state at its least likely token."""
    from .models import load_toy_model

    models, tok = {}, None
    for name in lms:
        models[name], tok = load_toy_model(name, weights_dir=weights_dir)
    vocab = tok.get_vocab()
    torch.manual_seed(seed)
    n_hidden = int(next(iter(models.values())).config.hidden_size) if hidden else 0
    feats = LogProbFeatures(models, tag_id=vocab["k"], space_id=vocab[" "],
                            newline_id=vocab["\n"], width=width, hidden=n_hidden,
                            special_ids=tok.all_special_ids)
    return StepCheckPRM(feats), tok


def save_check_prm(model: StepCheckPRM, folder: str | Path, recipe: dict[str, Any] | None = None
                   ) -> None:
    """Write the trained part (MLP and head, fp16 safetensors) and ``config.json`` (the LMs read,
    the width) to ``folder``; ``recipe`` (if given) to ``recipe.json``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous()
             for k, v in model.state_dict().items() if not k.startswith("features.lms.")}
    save_file(state, str(folder / "head.safetensors"))
    config = {"kind": "toy-step-check", "lms": list(model.features.lms.keys()),
              "width": model.features.width, "features": list(FEATURES)}
    if model.features.hidden:
        config["hidden"] = ["mean", "at_min"]
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    if recipe is not None:
        (folder / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")


def load_check_prm(folder: str | Path, *, weights_dir: str | Path | None = None,
                   batch_size: int = 64):
    """The :class:`ponder.rewards.ProcessRewardModel` of a folder written by
    :func:`save_check_prm` (the LMs it names are read from ``weights_dir``, the shipped toy
    weights by default)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "head.safetensors").is_file():
        raise FileNotFoundError(f"load_check_prm: {folder} has no config.json + head.safetensors")
    config = json.loads((folder / "config.json").read_text())
    if config.get("kind") != "toy-step-check":
        raise ValueError(f"load_check_prm: {folder}/config.json is not a toy step-check PRM")
    model, tok = build_check_prm(config["lms"], width=config["width"], weights_dir=weights_dir,
                                 hidden=bool(config.get("hidden")))
    state = {k: v.float() for k, v in load_file(str(folder / "head.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("features.lms.") for k in missing):
        raise ValueError(f"load_check_prm: {folder} does not match the model: missing "
                         f"{[k for k in missing if not k.startswith('features.lms.')]}, "
                         f"unexpected {unexpected}")
    model.eval()
    return as_prm(model, tok, batch_size=batch_size)


class CheckPRM(ProcessRewardModel):
    """The :class:`ponder.rewards.ProcessRewardModel` of a :class:`StepCheckPRM`: reads the value
    head from the model at each call (so that training shows)."""

    def head_and_bias(self):
        lin = self.model.head
        return lin.weight.reshape(-1), lin.bias.reshape(())

    # -- scoring from the draft's own pass (ponder.decoding.DraftPassScorer) -----------------

    @property
    def pass_model(self):
        """The LM whose passes :meth:`score_draft_pass` reads (None with several LMs): RSD
        carries its KV cache across steps (``rsd_generate(prm_cache=True)``)."""
        lms = self.model.features.lms
        return next(iter(lms.values())) if len(lms) == 1 else None

    @torch.inference_mode()
    def score_draft_pass(self, passes) -> list[float]:
        """The last step's score of each ``ponder.decoding.DraftPass``, from the pass's
        log-probs (and hidden states) instead of re-reading the text: the same score as
        :meth:`score` when the pass is the same LM's over the same tokens (it must be: a PRM
        on the target given the draft's pass would judge with the wrong features)."""
        feats = self.model.features
        rows = []
        for p in passes:
            f = feats.pass_features(p.ids, p.logp, p.hidden if feats.hidden else None, p.spans)
            if not len(f):
                raise ValueError("score_draft_pass: a pass has no step to score")
            rows.append(f[-1])
        if not rows:
            return []
        f = torch.stack(rows)
        h = torch.cat([f, torch.tanh(feats.mlp(f))], -1)
        return torch.sigmoid(self.model.head(h))[:, 0].tolist()

    def draft_pass_flops(self, tokens: int, steps: int) -> float:
        """FLOPs of :meth:`score_draft_pass` over ``steps`` steps of ``tokens`` tokens: per
        token a log-softmax over the vocabulary (~3 V, generous: the draft computed the logits
        anyway) and the pooling (~2 per feature); per step the MLP and the head (2 x their
        weights)."""
        feats = self.model.features
        vocab = int(next(iter(feats.lms.values())).config.vocab_size)
        per_token = 3 * vocab + 2 * (len(FEATURES) + 2 * feats.hidden)
        per_step = 2 * (feats.mlp.weight.numel() + feats.mlp.bias.numel()
                        + self.model.head.weight.numel() + 1) + 2 * feats.width
        return float(tokens * per_token + steps * per_step)


def as_prm(model: StepCheckPRM, tok, *, batch_size: int = 64) -> CheckPRM:
    """A :class:`ponder.rewards.ProcessRewardModel` scoring with ``model``'s current head."""
    lin = model.head
    return CheckPRM(model, tok, check_convention(), head=lin.weight.reshape(-1),
                    bias=lin.bias.reshape(()), batch_size=batch_size)
