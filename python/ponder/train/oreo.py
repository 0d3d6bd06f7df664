"""OREO: offline reasoning optimisation with a soft-Bellman value model (arXiv 2412.16145).

The method (docs/oreo.md, METHODS.md "OREO"). A response is a sequence of actions in a token-level
MDP with a sparse final reward ``R`` and a KL regulariser of weight ``beta`` towards the frozen
reference (the SFT policy). With the per-token log-ratios ``r_i = log pi(a_i|s_i) - log
pi_ref(a_i|s_i)`` and their reversed cumulative sum ``A_t = sum_{i >= t} r_i``:

- value (critic) loss, at every state where an action starts:
  ``(V(s_t) + beta * sg(A_t) - R)^2``;
- policy (actor) loss, for an action ``k`` covering the tokens ``[t_k, t_{k+1})``:
  ``(sg(V(s_{t_k})) + beta * (G_k + sg(A_{t_{k+1}})) - R)^2`` with ``G_k = sum_{i in k} r_i``,
  so that only the action's own log-ratios carry gradient. An action is one token (``level=
  "token"``), one reasoning step (``"step"``: steps end with a delimiter given as token ids), or
  the whole response (``"response"``);
- a KL regulariser of weight ``alpha`` on the policy: the exact full-vocabulary ``KL(pi ||
  pi_ref)`` per response token (:func:`ponder.ops.lm_head.kl_to_reference`, the original's
  ``--unbiased_kl``) or the k3 estimator ``exp(ref - logp) + (logp - ref) - 1`` on the data's
  tokens.

The policy's and the reference's token log-probs come from
:func:`ponder.ops.lm_head.token_logprobs` on the last hidden states: no ``[B, L, V]`` logits or
log-softmax is formed in a training step.

Averaging (``averaging``): ``"token"`` (default) divides each loss's sum of terms by the number
of terms in the whole optimiser batch (all accumulation steps, all processes), so gradient
accumulation and data parallelism give exactly the update of one big batch; ``"sequence"`` is
the original's per-sequence mean over its terms, then a mean over the global batch's sequences.

The positions convention. For ``input_ids [B, L]`` the hidden state at position ``j - 1`` is the
state ``s_j`` before token ``j``: it gives ``log pi(x_j | x_<j)`` and ``V(s_j)``. All per-token
tensors of the losses are ``[B, L - 1]``, aligned on the predicted token ``x_j`` (``j >= 1``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..ops.lm_head import kl_to_reference, kl_to_reference_sum, token_logprobs

__all__ = [
    "LEVELS",
    "OREOCollator",
    "OREOConfig",
    "OREOLosses",
    "OREOModels",
    "OREOTrainer",
    "ValueModel",
    "action_starts",
    "collect",
    "encode_example",
    "k3_kl",
    "kl_token_weights",
    "load_value_model",
    "loss_counts",
    "oreo_losses",
    "read_jsonl",
    "reversed_cumsum",
    "rows_to_dataset",
    "save_value_model",
]

LEVELS = ("token", "step", "response")
AVERAGING = ("token", "sequence")
KL_KINDS = ("exact", "k3", "none")


@dataclass
class OREOConfig:
    """OREO's hyper-parameters (defaults: the paper and the original scripts).

    Attributes
    ----------
    beta : float
        The KL weight of the soft Bellman equation (0.03).
    alpha : float
        The KL regulariser's weight on the policy loss (0.01, the original scripts with the
        exact KL; the paper reports 0.1 for step level and 0.3 for response level).
    kl : str
        ``"exact"`` (full vocabulary, :func:`ponder.ops.lm_head.kl_to_reference`), ``"k3"`` (the
        estimator on the data's tokens) or ``"none"``.
    level : str
        ``"token"``, ``"step"`` or ``"response"``: what one action is.
    step_delimiter : tuple of int
        The token ids that end a step (``level="step"``); a step ends with its delimiter.
    reward_scale, reward_shift : float
        ``R = reward * reward_scale + reward_shift``: (1, 0) keeps the data's {0, 1} rewards (the
        paper and the scripts); (2, -1) is the original's argparse default (+-1).
    averaging : str
        ``"token"`` (a mean over the global batch's terms) or ``"sequence"`` (the original).
    value_states : str
        Where the value loss is taken: ``"starts"`` (the states where an action starts: every
        response token at token level, each step's first token at step level; the MDP's states)
        or ``"all"`` (every response token, whatever the level).
    fused : bool
        With ``kl="exact"``: compute the KL term, a weighted sum of per-token KLs with weights
        known before the forward, with the fused scalar loss
        :func:`ponder.ops.lm_head.kl_to_reference_sum` (its gradient computed in the forward:
        4 matrix products against the per-token op's 6). ``False``: the per-token
        :func:`ponder.ops.lm_head.kl_to_reference`, then the sum (the same loss and gradients
        up to rounding). The policy's log-probabilities always use the per-token op (see
        docs/oreo.md, "Which fused ops").
    """

    beta: float = 0.03
    alpha: float = 0.01
    kl: str = "exact"
    level: str = "token"
    step_delimiter: tuple[int, ...] = ()
    reward_scale: float = 1.0
    reward_shift: float = 0.0
    averaging: str = "token"
    value_states: str = "starts"
    fused: bool = True

    def __post_init__(self):
        if self.level not in LEVELS:
            raise ValueError(f"OREOConfig: level must be one of {LEVELS}, got {self.level!r}")
        if self.averaging not in AVERAGING:
            raise ValueError(f"OREOConfig: averaging must be one of {AVERAGING}, got "
                             f"{self.averaging!r}")
        if self.kl not in KL_KINDS:
            raise ValueError(f"OREOConfig: kl must be one of {KL_KINDS}, got {self.kl!r}")
        if self.value_states not in ("starts", "all"):
            raise ValueError(f"OREOConfig: value_states must be 'starts' or 'all', got "
                             f"{self.value_states!r}")
        if not isinstance(self.fused, bool):
            raise TypeError(f"OREOConfig: fused must be a bool, got {type(self.fused).__name__}")
        self.step_delimiter = tuple(int(t) for t in self.step_delimiter)
        if self.level == "step" and not self.step_delimiter:
            raise ValueError("OREOConfig: level='step' needs step_delimiter, the token ids that "
                             "end a step (e.g. the ids of '\\n\\n')")
        for name in ("beta", "alpha"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"OREOConfig: {name} must be a finite number >= 0, got {v!r}")
        if self.beta == 0:
            raise ValueError("OREOConfig: beta must be > 0 (the soft Bellman equation's weight)")


# ------------------------------------------------------------------------------------------------
# The losses (pure tensor functions)


def reversed_cumsum(x: Tensor, mask: Tensor) -> Tensor:
    """``out[b, t] = sum_{i >= t} x[b, i] * mask[b, i]`` along the last dimension ``[B, T]``."""
    x = x * mask
    return x.flip(-1).cumsum(-1).flip(-1)


def action_starts(targets: Tensor, mask: Tensor, level: str,
                  delimiter: Sequence[int] = ()) -> Tensor:
    """Which response tokens start an action, ``[B, T]`` bool (on ``mask``'s True tokens only).

    ``targets [B, T]`` are the predicted token ids (``input_ids[:, 1:]``) and ``mask [B, T]`` bool
    marks the response tokens (contiguous per row). Token level: every response token. Response
    level: the first response token of each row. Step level: the first response token and each
    response token right after a complete ``delimiter`` (a sequence of token ids, matched on the
    ids: never through character offsets).
    """
    if level not in LEVELS:
        raise ValueError(f"action_starts: level must be one of {LEVELS}, got {level!r}")
    mask = mask.bool()
    prev = torch.zeros_like(mask)
    prev[:, 1:] = mask[:, :-1]
    first = mask & ~prev
    if level == "token":
        return mask.clone()
    if level == "response":
        return first
    d = len(delimiter)
    if d == 0:
        raise ValueError("action_starts: level='step' needs a non-empty delimiter")
    T = targets.shape[1]
    ends = torch.zeros_like(mask)  # ends[:, j]: the delimiter ends at token j
    if T >= d:
        hit = torch.ones(targets.shape[0], T - d + 1, dtype=torch.bool, device=targets.device)
        for k, tok in enumerate(delimiter):
            hit &= targets[:, k:T - d + 1 + k] == int(tok)
        ends[:, d - 1:] = hit
    # the whole delimiter must lie in the response (a delimiter at the end of the prompt is not
    # a step of the response: the first response token starts a step anyway)
    inside = mask.clone()
    for k in range(1, d):
        inside[:, k:] &= mask[:, :-k] if k < T else False
    after = torch.zeros_like(mask)
    after[:, 1:] = (ends & inside)[:, :-1]
    return first | (after & mask)


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """The k3 estimator of ``KL(pi || pi_ref)`` on sampled tokens: ``exp(ref - logp) + (logp -
    ref) - 1`` (>= 0, unbiased)."""
    d = ref_logp - logp
    return torch.expm1(d) - d


@dataclass
class OREOLosses:
    """What :func:`oreo_losses` returns: the scalar losses (``policy`` includes ``alpha * kl``)
    and per-batch diagnostics."""

    value: Tensor
    policy: Tensor
    kl: Tensor
    values: Tensor  # [B, T] the values used (detached)


def loss_counts(mask: Tensor, starts: Tensor, config: OREOConfig) -> Tensor:
    """``[4]`` float64 counts of the terms in a (micro-)batch: value terms, policy terms, KL
    terms (response tokens), sequences. Summed over the global batch they are the
    ``normalizer`` of :func:`oreo_losses` for ``averaging="token"``."""
    mask = mask.bool()
    vstates = starts if config.value_states == "starts" else mask
    seqs = mask.any(1)
    return torch.stack([vstates.sum(), starts.sum(), mask.sum(), seqs.sum()]).double()


def _reduce(term: Tensor, where: Tensor, config: OREOConfig, count: Tensor | float,
            n_seq: Tensor | float) -> Tensor:
    """Sum of ``term`` over ``where`` divided by the global ``count`` (token averaging), or the
    per-sequence mean summed and divided by the global number of sequences."""
    term = torch.where(where, term, torch.zeros_like(term))
    if config.averaging == "token":
        return term.sum() / max(float(count), 1.0)
    per = where.sum(1)
    seq_mean = term.sum(1) / per.clamp_min(1)
    return seq_mean.sum() / max(float(n_seq), 1.0)


def kl_token_weights(mask: Tensor, config: OREOConfig,
                     normalizer: Tensor | Sequence[float] | None = None) -> Tensor:
    """``[B, T]`` float32 weights ``w`` with ``sum(w * kl)`` equal to the KL loss that
    :func:`oreo_losses` takes from a per-token ``kl`` (``config.averaging``, the global
    ``normalizer`` of :func:`loss_counts`; default this batch's): ``mask / n_kl`` for token
    averaging, ``mask / (tokens of the row * n_seq)`` for sequence averaging. They are the
    ``weights`` of :func:`ponder.ops.lm_head.kl_to_reference_sum`, known before the forward."""
    mask = mask.bool()
    if normalizer is None:
        normalizer = loss_counts(mask, mask, config)
    n_kl, n_seq = float(normalizer[2]), float(normalizer[3])
    m = mask.float()
    if config.averaging == "token":
        return m / max(n_kl, 1.0)
    per = mask.sum(1, keepdim=True).clamp_min(1).float()
    return m / (per * max(n_seq, 1.0))


def oreo_losses(
    logp: Tensor,
    ref_logp: Tensor,
    values: Tensor,
    reward: Tensor,
    mask: Tensor,
    starts: Tensor,
    config: OREOConfig,
    *,
    kl: Tensor | None = None,
    kl_loss: Tensor | None = None,
    normalizer: Tensor | Sequence[float] | None = None,
) -> OREOLosses:
    """OREO's value and policy losses on one batch, ``[B, T]`` tensors aligned on the tokens.

    Args:
        logp: ``[B, T]`` the policy's ``log pi(x_t | s_t)`` (with gradient).
        ref_logp: ``[B, T]`` the reference's (no gradient is taken through it).
        values: ``[B, T]`` ``V(s_t)`` from the value model (with gradient).
        reward: ``[B]`` the data's rewards (mapped by ``reward_scale``/``reward_shift``).
        mask: ``[B, T]`` bool, the response tokens (the actions' tokens).
        starts: ``[B, T]`` bool, the tokens where an action starts (:func:`action_starts`).
        config: :class:`OREOConfig`.
        kl: ``[B, T]`` the exact KL per token when ``config.kl == "exact"`` (with gradient).
        kl_loss: instead of ``kl``, the KL term already reduced: a scalar equal to
            ``sum(kl_token_weights(mask, config, normalizer) * kl)``, e.g. from the fused
            :func:`ponder.ops.lm_head.kl_to_reference_sum` with those weights.
        normalizer: the global batch's :func:`loss_counts` (default: this batch's).

    Returns:
        :class:`OREOLosses`. ``value`` has gradient to ``values`` only; ``policy`` to ``logp``
        (and ``kl``) only: the value, the reference and the future log-ratios are detached.
    """
    shape = tuple(values.shape)
    for name, t in (("logp", logp), ("ref_logp", ref_logp), ("mask", mask), ("starts", starts),
                    ("kl", kl)):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"oreo_losses: {name} must have the shape of values {shape}, got "
                             f"{tuple(t.shape)}")
    if values.dim() != 2 or tuple(reward.shape) != (shape[0],):
        raise ValueError(f"oreo_losses: values must be [B, T] and reward [B], got {shape} and "
                         f"{tuple(reward.shape)}")
    mask = mask.bool()
    starts = starts.bool() & mask
    if normalizer is None:
        normalizer = loss_counts(mask, starts, config)
    n_value, n_policy, n_kl, n_seq = [float(x) for x in normalizer]
    R = (reward.to(values.dtype) * config.reward_scale + config.reward_shift)[:, None]
    beta = config.beta
    r = (logp - ref_logp.detach()).to(values.dtype)
    adv = reversed_cumsum(r, mask)               # A_t, with gradient through every r_i, i >= t
    adv_sg = adv.detach()

    vstates = starts if config.value_states == "starts" else mask
    value_term = (values + beta * adv_sg - R) ** 2
    value_loss = _reduce(value_term, vstates, config, n_value, n_seq)

    # Action k covers [t_k, t_{k+1}): G_k = A_{t_k} - A_{t_{k+1}} carries the gradient of its own
    # tokens only; A_{t_{k+1}} = sg(A_{t_k} - G_k).
    group = (starts.long().cumsum(1) - 1).clamp_min(0)
    G = torch.zeros(r.shape, dtype=r.dtype, device=r.device).scatter_add(
        1, group, torch.where(mask, r, torch.zeros_like(r)))
    G_at = G.gather(1, group)                    # at each token: its action's G (with gradient)
    future = adv_sg - G_at.detach()
    policy_term = (values.detach() + beta * (G_at + future) - R) ** 2
    policy_loss = _reduce(policy_term, starts, config, n_policy, n_seq)

    if config.kl == "exact":
        if (kl is None) == (kl_loss is None):
            raise ValueError("oreo_losses: config.kl == 'exact' needs kl (the per-token exact KL "
                             "[B, T]) or kl_loss (the reduced KL, a scalar): exactly one of them")
        if kl_loss is not None:
            if kl_loss.dim() != 0:
                raise ValueError(f"oreo_losses: kl_loss must be a scalar, got shape "
                                 f"{tuple(kl_loss.shape)}")
            kl_loss = kl_loss.to(values.dtype)
        else:
            kl_loss = _reduce(kl.to(values.dtype), mask, config, n_kl, n_seq)
    else:
        if kl_loss is not None:
            raise ValueError(f"oreo_losses: kl_loss is for config.kl == 'exact', not "
                             f"{config.kl!r}")
        if config.kl == "k3":
            kl_term = k3_kl(logp.to(values.dtype), ref_logp.detach().to(values.dtype))
        else:
            kl_term = torch.zeros_like(r)
        kl_loss = _reduce(kl_term, mask, config, n_kl, n_seq)
    return OREOLosses(value=value_loss, policy=policy_loss + config.alpha * kl_loss,
                      kl=kl_loss.detach(), values=values.detach())


# ------------------------------------------------------------------------------------------------
# The value model


class ValueModel(nn.Module):
    """A transformer backbone (no LM head) and a bias-free ``Linear(hidden, 1)`` value head.

    ``forward(input_ids, attention_mask) -> [B, L]`` values, ``V(s_{j+1})`` at position ``j``
    (the state after token ``j``). :meth:`from_policy` copies the SFT policy's backbone and
    zero-initialises the head, so the initial values are 0 everywhere.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int | None = None):
        super().__init__()
        self.backbone = backbone
        h = hidden_size if hidden_size is not None else backbone.config.hidden_size
        self.head = nn.Linear(h, 1, bias=False)
        nn.init.zeros_(self.head.weight)

    @classmethod
    def from_policy(cls, policy: nn.Module) -> ValueModel:
        """A value model whose backbone is a copy of ``policy``'s decoder (a
        ``transformers`` causal LM) and whose head is zero."""
        import copy

        backbone = copy.deepcopy(policy.get_decoder())
        return cls(backbone, policy.config.hidden_size)

    @property
    def config(self):
        return self.backbone.config

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``[B, L, H]`` the backbone's last hidden states."""
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                             use_cache=False).last_hidden_state

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        h = self.hidden_states(input_ids, attention_mask)
        return self.head(h.to(self.head.weight.dtype)).squeeze(-1)


_HEAD_FILE = "value_head.safetensors"


def save_value_model(model: ValueModel, folder: str | Path, *,
                     dtype: torch.dtype | None = None) -> None:
    """Write a value model: the backbone with ``save_pretrained`` (``config.json`` and
    ``model.safetensors``) and the head in ``value_head.safetensors``. ``dtype`` converts a copy
    (e.g. fp16 for shipping)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    backbone = model.backbone
    if dtype is not None:
        import copy

        backbone = copy.deepcopy(backbone).to(dtype)
    backbone.save_pretrained(folder)
    w = model.head.weight.detach()
    save_file({"weight": (w if dtype is None else w.to(dtype)).contiguous().cpu()},
              str(folder / _HEAD_FILE))


def load_value_model(folder: str | Path, *, dtype: torch.dtype = torch.float32) -> ValueModel:
    """Read what :func:`save_value_model` wrote (offline)."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    folder = Path(folder)
    if not (folder / _HEAD_FILE).is_file():
        raise FileNotFoundError(f"load_value_model: {folder} has no {_HEAD_FILE} (not a value "
                                "model written by save_value_model)")
    backbone = AutoModel.from_pretrained(folder, dtype=dtype, local_files_only=True)
    model = ValueModel(backbone)
    model.head.weight.data.copy_(load_file(str(folder / _HEAD_FILE))["weight"].to(dtype))
    return model


class OREOModels(nn.Module):
    """The policy and the value model as one module, so that one data-parallel wrapper (DDP,
    FSDP through accelerate) synchronises both. ``forward`` returns the policy's last hidden
    states ``[B, L, H]`` and the values ``[B, L]``; the LM head is applied by the fused ops."""

    def __init__(self, policy: nn.Module, value: ValueModel):
        super().__init__()
        self.policy = policy
        self.value = value
        self.config = policy.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                targets: Tensor | None = None, mask: Tensor | None = None,
                ref_hidden: Tensor | None = None, ref_head: tuple | None = None,
                kl_weights: Tensor | None = None):
        """Without ``targets``: ``(hidden [B, L, H], values [B, L])``. With ``targets [B, L-1]``
        and ``mask [B, L-1]``: ``(logp [B, L-1], kl, values [B, L])``, the fused LM-head ops
        applied here, inside the forward, so that data-parallel wrappers see every use of the LM
        head. ``ref_hidden [B, L-1, H_ref]`` and ``ref_head = (weight, bias)`` give the exact
        KL: ``kl`` is ``[B, L-1]`` per token, or, with ``kl_weights [B, L-1]``
        (:func:`kl_token_weights`), the scalar ``sum(kl_weights * KL)`` from the fused
        :func:`ponder.ops.lm_head.kl_to_reference_sum`; None without ``ref_hidden``."""
        h = self.policy.get_decoder()(input_ids=input_ids, attention_mask=attention_mask,
                                      use_cache=False).last_hidden_state
        v = self.value(input_ids, attention_mask)
        if targets is None:
            return h, v
        B, L, H = h.shape
        flat = h[:, :-1].reshape(-1, H)
        fmask = mask.reshape(-1)
        w, b = _lm_head(self.policy)
        logp = token_logprobs(flat, w, targets.reshape(-1), b, mask=fmask).view(B, L - 1)
        kl = None
        if ref_hidden is not None:
            rh = ref_hidden.reshape(-1, ref_hidden.shape[-1])
            if kl_weights is not None:
                kl = kl_to_reference_sum(flat, w, rh, ref_head[0], kl_weights.reshape(-1), b,
                                         ref_head[1], mask=fmask)
            else:
                kl = kl_to_reference(flat, w, rh, ref_head[0], b, ref_head[1],
                                     mask=fmask).view(B, L - 1)
        return logp, kl, v


def _lm_head(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


# ------------------------------------------------------------------------------------------------
# Data


def encode_example(tokenizer, prompt: str, response: str, reward: float, *,
                   max_length: int | None = None) -> dict[str, Any]:
    """One training example: ``prompt + response + EOS`` as token ids, the response mask and the
    reward. The prompt and the response are tokenised separately (so the action boundary is a
    token boundary); the prompt gets the tokenizer's special tokens (e.g. BOS), the response
    none. ``max_length`` truncates from the right (the EOS may then be cut)."""
    p = tokenizer(prompt)["input_ids"]
    r = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is None:
        raise ValueError("encode_example: the tokenizer has no eos_token_id")
    ids = list(p) + list(r) + [tokenizer.eos_token_id]
    act = [0] * len(p) + [1] * (len(r) + 1)
    if max_length is not None:
        ids, act = ids[:max_length], act[:max_length]
    if sum(act) == 0:
        raise ValueError(f"encode_example: no response token left (prompt of {len(p)} tokens, "
                         f"max_length {max_length})")
    return {"input_ids": ids, "action_mask": act, "reward": float(reward)}


class OREOCollator:
    """Pads :func:`encode_example` rows on the right into ``input_ids``, ``attention_mask``,
    ``action_mask`` ``[B, L]`` (int64) and ``reward`` ``[B]`` (float32)."""

    def __init__(self, pad_token_id: int):
        self.pad = int(pad_token_id)

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        L = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), L), self.pad, dtype=torch.long)
        att = torch.zeros((len(rows), L), dtype=torch.long)
        act = torch.zeros((len(rows), L), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n] = torch.tensor(r["input_ids"])
            att[i, :n] = 1
            act[i, :n] = torch.tensor(r["action_mask"])
        reward = torch.tensor([float(r["reward"]) for r in rows], dtype=torch.float32)
        return {"input_ids": ids, "attention_mask": att, "action_mask": act, "reward": reward}


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The complete rows of a JSONL file (a torn last line, without its newline, is skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


# ------------------------------------------------------------------------------------------------
# The trainer


def _batch_terms(inputs: Mapping[str, Tensor], config: OREOConfig) -> tuple[Tensor, Tensor,
                                                                              Tensor]:
    """``targets, mask, starts`` ``[B, L - 1]`` of a collated batch."""
    ids = inputs["input_ids"]
    targets = ids[:, 1:]
    mask = inputs["action_mask"][:, 1:].bool() & inputs["attention_mask"][:, 1:].bool()
    starts = action_starts(targets, mask, config.level, config.step_delimiter)
    return targets, mask, starts


def _oreo_forward(models: nn.Module, ref: nn.Module,
                  inputs: Mapping[str, Tensor], config: OREOConfig,
                  normalizer=None) -> OREOLosses:
    """One batch through the (possibly wrapped) models, the reference and the fused ops."""
    ids, att = inputs["input_ids"], inputs["attention_mask"]
    targets, mask, starts = _batch_terms(inputs, config)
    B, T = targets.shape
    flat_mask = mask.reshape(-1)
    with torch.no_grad():
        ref_hidden = ref.get_decoder()(input_ids=ids, attention_mask=att,
                                       use_cache=False).last_hidden_state[:, :-1]
        rw, rb = _lm_head(ref)
        ref_logp = token_logprobs(ref_hidden.reshape(-1, ref_hidden.shape[-1]), rw,
                                  targets.reshape(-1), rb, mask=flat_mask).view(B, T)
    exact = config.kl == "exact"
    fused = exact and config.fused
    # The KL term is a weighted sum of per-token KLs whose weights depend only on the mask and
    # the counts: the fused scalar loss fits. The policy's log-probabilities stay per token:
    # the policy loss squares a sum of them, so its per-token gradient depends on their values.
    kl_w = kl_token_weights(mask, config, normalizer) if fused else None
    logp, kl, values = models(ids, att, targets=targets, mask=mask,
                              ref_hidden=ref_hidden if exact else None,
                              ref_head=(rw, rb) if exact else None, kl_weights=kl_w)
    return oreo_losses(logp, ref_logp, values[:, :-1].float(), inputs["reward"], mask, starts,
                       config, kl=None if fused else kl, kl_loss=kl if fused else None,
                       normalizer=normalizer)


def _transformers_trainer():
    try:
        from transformers import Trainer, TrainerCallback
    except ImportError as err:  # pragma: no cover - the train extra
        raise ImportError("ponder.train.oreo needs transformers: pip install 'ponder[train]'") \
            from err
    return Trainer, TrainerCallback


Trainer, TrainerCallback = _transformers_trainer()


def _load_saved(module: nn.Module, folder: Path, what: str) -> None:
    """Load what ``save_pretrained`` wrote into ``module``: a peft adapter
    (``adapter_model.safetensors``) or the full weights (``model.safetensors``; a missing
    ``lm_head`` is a tied head)."""
    from safetensors.torch import load_file

    adapter = folder / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(module, load_file(str(adapter)))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"OREOTrainer: the adapter in {folder} does not match {what} "
                             f"(unexpected {unexpected[:5]})")
        return
    state = load_file(str(folder / "model.safetensors"))
    missing, unexpected = module.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise ValueError(f"OREOTrainer: checkpoint {folder} does not match {what} "
                         f"(missing {missing[:5]}, unexpected {unexpected[:5]})")


class _CriticStep(TrainerCallback):
    """Steps the critic's optimizer just before the Trainer steps the actor's (and its
    scheduler after), so both follow the Trainer's accumulation and checkpoints."""

    def __init__(self, trainer: OREOTrainer):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.critic_optimizer.step()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.critic_scheduler.step()
        self.trainer.critic_optimizer.zero_grad(set_to_none=True)


class OREOTrainer(Trainer):
    """OREO as a ``transformers.Trainer``: per optimiser step, a critic step, then an actor step.

    Parameters
    ----------
    policy : transformers causal LM
        The policy, initialised from the SFT model (trained).
    value_model : ValueModel
        The critic (trained); :meth:`ValueModel.from_policy` by default.
    ref_model : transformers causal LM
        The frozen reference (the SFT model); a frozen copy of ``policy`` by default.
    oreo : OREOConfig
        The method's hyper-parameters.
    args : transformers.TrainingArguments
        ``learning_rate`` is the actor's; ``critic_learning_rate`` the critic's (default the
        same). Both use AdamW with betas (``adam_beta1``, ``adam_beta2``) and the same schedule.
    train_dataset : rows of :func:`encode_example`.

    The two losses are computed in one pass from the same parameters: the critic's loss uses the
    policy's log-ratios (detached) and the actor's uses the values from before the critic step
    (detached), so stepping the critic first and the actor second is exactly the original's
    order. Loss scaling is explicit: each micro-batch's loss is its sum of terms divided by the
    optimiser batch's global count (all accumulation steps, all processes, gathered before the
    first micro-batch) and multiplied by the number of processes (DDP averages gradients), so
    ``k`` accumulation steps of batch ``b`` give the update of one batch of ``k * b``. The
    Trainer's own accumulation scaling is turned off (``loss_is_scaled_for_ga``).

    Checkpoints hold the policy (``save_pretrained``), the value model (``value/``), both
    optimizers and both schedulers (``critic_optimizer.pt``, ``critic_scheduler.pt``);
    ``train(resume_from_checkpoint=...)`` restores all of them.

    Precision: float32 or bfloat16 (``bf16=True``); fp16 with a gradient scaler is not supported
    (the critic's optimizer is stepped outside accelerate's scaler). The logged ``value_loss``,
    ``policy_loss`` and ``kl`` are the main process's share scaled to the global batch (exact on
    one process).
    """

    def __init__(self, policy, value_model: ValueModel | None = None, ref_model=None, *,
                 oreo: OREOConfig | None = None, critic_learning_rate: float | None = None,
                 args=None, train_dataset=None, processing_class=None, data_collator=None,
                 callbacks=None, **kwargs):
        import copy

        if value_model is None:
            value_model = ValueModel.from_policy(policy)
        if ref_model is None:
            ref_model = copy.deepcopy(policy)
        ref_model.eval()
        for p in ref_model.parameters():
            p.requires_grad_(False)
        self.oreo = oreo if oreo is not None else OREOConfig()
        self.ref_model = ref_model
        self.critic_learning_rate = critic_learning_rate
        self.critic_optimizer = None
        self.critic_scheduler = None
        if data_collator is None:
            pad = getattr(processing_class, "pad_token_id", None)
            if pad is None:
                pad = policy.config.pad_token_id or 0
            data_collator = OREOCollator(pad)
        if args is not None:
            if getattr(args, "fp16", False):
                raise ValueError("OREOTrainer: fp16 (with a gradient scaler) is not supported; "
                                 "use bf16=True or float32")
            args.remove_unused_columns = False
        super().__init__(model=OREOModels(policy, value_model), args=args,
                         train_dataset=train_dataset, processing_class=processing_class,
                         data_collator=data_collator, callbacks=callbacks, **kwargs)
        self.loss_is_scaled_for_ga = True
        self.add_callback(_CriticStep(self))
        self.ref_model.to(self.args.device)
        self._last_metrics: dict[str, list[float]] = {"value_loss": [], "policy_loss": [],
                                                      "kl": []}

    @property
    def policy(self):
        return self.model.policy

    @property
    def value_model(self):
        return self.model.value

    # optimisers -------------------------------------------------------------------------------
    def _adamw(self, params, lr):
        a = self.args
        return torch.optim.AdamW(params, lr=lr, betas=(a.adam_beta1, a.adam_beta2),
                                 eps=a.adam_epsilon, weight_decay=a.weight_decay)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            models = self.model
            self.optimizer = self._adamw([p for p in models.policy.parameters()
                                          if p.requires_grad], self.args.learning_rate)
            lr = self.critic_learning_rate or self.args.learning_rate
            self.critic_optimizer = self._adamw([p for p in models.value.parameters()
                                                 if p.requires_grad], lr)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        from transformers import get_scheduler

        sched = super().create_scheduler(num_training_steps, optimizer)
        if self.critic_scheduler is None:
            self.critic_scheduler = get_scheduler(
                self.args.lr_scheduler_type, optimizer=self.critic_optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs)
        return sched

    def _clip_grad_norm(self, model):
        """Clip the actor's and the critic's gradients separately (two optimisers); return the
        actor's norm."""
        models = self.accelerator.unwrap_model(model)
        torch.nn.utils.clip_grad_norm_(models.value.parameters(), self.args.max_grad_norm)
        return torch.nn.utils.clip_grad_norm_(models.policy.parameters(), self.args.max_grad_norm)

    # loss scaling -----------------------------------------------------------------------------
    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        counts = torch.zeros(4, dtype=torch.float64)
        for inputs in batches:
            _, mask, starts = _batch_terms(inputs, self.oreo)
            counts += loss_counts(mask, starts, self.oreo).cpu()
        counts = counts.to(device)
        if self.args.world_size > 1:
            counts = self.accelerator.reduce(counts, reduction="sum")
        return batches, counts

    def training_step(self, model, inputs, num_items_in_batch=None):
        model.train()
        inputs = self._prepare_inputs(inputs)
        if num_items_in_batch is None:
            _, mask, starts = _batch_terms(inputs, self.oreo)
            num_items_in_batch = loss_counts(mask, starts, self.oreo)
        with self.compute_loss_context_manager():
            out = _oreo_forward(model, self.ref_model, inputs, self.oreo,
                                normalizer=num_items_in_batch)
        world = max(self.args.world_size, 1)
        loss = (out.value + out.policy) * world
        self.accelerator.backward(loss)
        for k, v in (("value_loss", out.value), ("policy_loss", out.policy), ("kl", out.kl)):
            self._last_metrics[k].append(float(v.detach()) * world)
        return loss.detach()

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        for k, vals in self._last_metrics.items():
            if vals and "loss" in logs:
                # the micro-batch values are shares of the step's loss: sum per step, then mean
                steps = max(1, len(vals) // max(1, self.args.gradient_accumulation_steps))
                logs[k] = round(sum(vals) / steps, 6)
                vals.clear()
        super().log(logs, *args, **kwargs)

    # checkpoints ------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        models = self.accelerator.unwrap_model(self.model)
        models.policy.save_pretrained(output_dir)
        save_value_model(models.value, Path(output_dir) / "value")
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        from safetensors.torch import load_file

        models = self.accelerator.unwrap_model(self.model)
        folder = Path(resume_from_checkpoint)
        _load_saved(models.policy, folder, "the policy")
        _load_saved(models.value.backbone, folder / "value", "the value model")
        head = load_file(str(folder / "value" / _HEAD_FILE))["weight"]
        with torch.no_grad():
            models.value.head.weight.copy_(head.to(models.value.head.weight.dtype))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            torch.save(self.critic_optimizer.state_dict(),
                       os.path.join(output_dir, "critic_optimizer.pt"))
            torch.save(self.critic_scheduler.state_dict(),
                       os.path.join(output_dir, "critic_scheduler.pt"))

    def _load_optimizer_and_scheduler(self, checkpoint) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        opt = os.path.join(checkpoint, "critic_optimizer.pt")
        if os.path.isfile(opt):
            self.critic_optimizer.load_state_dict(torch.load(opt, map_location=self.args.device,
                                                             weights_only=True))
            self.critic_scheduler.load_state_dict(torch.load(
                os.path.join(checkpoint, "critic_scheduler.pt"), weights_only=True))


# ------------------------------------------------------------------------------------------------
# Data collection


def _truncate_torn(path: Path) -> list[dict[str, Any]]:
    """Read the JSONL at ``path`` and cut it back to its last complete question group: a torn
    last line, or a last question with fewer rows than its ``group_size`` says, is removed from
    the file (that question is collected again). Returns the rows kept."""
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, ends = [], []
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        line = data[pos:nl]
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        ends.append(nl + 1)
        pos = nl + 1
    keep = len(rows)
    if rows:
        last = rows[-1]["question_id"]
        first = keep
        while first > 0 and rows[first - 1]["question_id"] == last:
            first -= 1
        if keep - first != int(rows[-1].get("group_size", keep - first)):
            keep = first
    cut = ends[keep - 1] if keep else 0
    if cut != len(data):
        with open(path, "r+b") as f:
            f.truncate(cut)
    return rows[:keep]


def collect(
    generator,
    questions: Sequence[Mapping[str, Any]],
    verify: Callable[[Mapping[str, Any], str], bool],
    path: str | Path,
    *,
    k: int = 8,
    rounds: int = 16,
    max_right: int = 4,
    max_wrong: int = 4,
    temperature: float = 1.0,
    top_p: float = 0.9,
    max_new_tokens: int = 256,
    chunk: int = 64,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, int]:
    """Sample ``k`` responses per question per round, verify them, keep a balanced set and append
    it to the JSONL at ``path`` (the original's data format plus bookkeeping fields).

    Args:
        generator: a :class:`ponder.generation.TextGenerator` (the SFT policy).
        questions: rows with ``"id"`` (unique) and ``"prompt"``; ``verify`` sees the whole row.
        verify: ``verify(question, response) -> bool``.
        path: the JSONL file; rows ``{"prompt", "response", "reward", "question_id",
            "group_size"}``, a question's rows written together.
        k, rounds: samples per question per round, and at most this many rounds (a question stops
            once it has ``max_right`` right and ``max_wrong`` wrong distinct responses).
        temperature, top_p, max_new_tokens: sampling (defaults: T = 1, top-p 0.9).
        chunk: questions sampled together (one seed per chunk and round: ``seed``, the chunk's
            first question's index and the round).
        progress: called with ``(done, total)`` questions after each chunk.

    Resumable: questions already in the file are skipped; a torn last line or an incomplete last
    question (fewer rows than its ``group_size``) is cut off and collected again. A run that is
    not interrupted is deterministic given ``seed``; after an interruption inside a chunk, the
    chunk's remaining questions are sampled in a smaller batch (other samples, no duplicates).

    Returns:
        ``{"questions", "skipped", "rows", "right", "wrong"}`` for this call.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    done_ids = {r["question_id"] for r in _truncate_torn(path)}
    ids = [q["id"] for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError("collect: question ids must be unique")
    todo = [(i, q) for i, q in enumerate(questions) if q["id"] not in done_ids]
    stats = {"questions": 0, "skipped": len(questions) - len(todo), "rows": 0, "right": 0,
             "wrong": 0}
    with open(path, "a", encoding="utf-8") as f:
        for c0 in range(0, len(todo), chunk):
            part = todo[c0:c0 + chunk]
            right: list[list[str]] = [[] for _ in part]
            wrong: list[list[str]] = [[] for _ in part]
            for rnd in range(rounds):
                active = [j for j in range(len(part))
                          if len(right[j]) < max_right or len(wrong[j]) < max_wrong]
                if not active:
                    break
                outs = generator.generate([part[j][1]["prompt"] for j in active], n=k,
                                          max_new_tokens=max_new_tokens,
                                          temperature=temperature, top_p=top_p,
                                          seed=seed * 1_000_003 + part[0][0] * 101 + rnd)
                for j, samples in zip(active, outs):
                    for s in samples:
                        s = str(s)
                        if s in right[j] or s in wrong[j]:
                            continue
                        ok = bool(verify(part[j][1], s))
                        bucket, cap = (right[j], max_right) if ok else (wrong[j], max_wrong)
                        if len(bucket) < cap:
                            bucket.append(s)
            lines = []
            for j, (_, q) in enumerate(part):
                kept = [(s, 1.0) for s in right[j]] + [(s, 0.0) for s in wrong[j]]
                for s, rew in kept:
                    lines.append(json.dumps({"prompt": q["prompt"], "response": s,
                                             "reward": rew, "question_id": q["id"],
                                             "group_size": len(kept)}) + "\n")
                stats["right"] += len(right[j])
                stats["wrong"] += len(wrong[j])
                stats["rows"] += len(kept)
            f.write("".join(lines))
            f.flush()
            stats["questions"] += len(part)
            if progress is not None:
                progress(stats["skipped"] + stats["questions"], len(questions))
    return stats


def rows_to_dataset(tokenizer, rows: Iterable[Mapping[str, Any]], *,
                    max_length: int | None = None) -> list[dict[str, Any]]:
    """:func:`encode_example` on JSONL rows ``{"prompt", "response", "reward"}``."""
    return [encode_example(tokenizer, r["prompt"], r["response"], r["reward"],
                           max_length=max_length) for r in rows]
