"""PRM training: soft-label cross-entropy at the step tags, as a ``transformers.Trainer``.

ER-PRM (arXiv 2412.11006) trains a causal LM to predict, at each step tag, the label token
``"+"`` with probability ``l_t`` (the step's label in [0, 1]) and ``"-"`` with ``1 - l_t``:

    loss = mean over steps of  -[ l log q+ + (1 - l) log q- ],   q = softmax(z+, z-)

with ``z`` the two label logits (rows of the LM head) at the tag position; only those rows are
computed (``ponder.ops.prm`` step logits), never the full-vocabulary logits. Hard labels
(Math-Shepherd's 0 / 1) are the ``eta -> inf`` case of the same loss. Value-head PRMs use the
same loss on ``sigmoid(value logit)``.

Data: the ER-PRM JSON(L) format, ``{"text": "<question> Step 1: ... ки\\nStep 2: ... ки",
"value": [l_1, ..., l_K]}`` (one tag per label), or ``{"question", "steps", "value"}`` records
that are formatted with the PRM's convention. Nothing is silently dropped or truncated: a record
whose tag count differs from its label count, or longer than ``max_length``, is an error.

    from transformers import TrainingArguments
    from ponder.rewards.train import PRMDataset, PRMDataCollator, PRMTrainer
    data = PRMDataset(records, tokenizer, toy_convention())
    trainer = PRMTrainer(model=model, args=TrainingArguments(..., remove_unused_columns=False),
                         train_dataset=data, data_collator=PRMDataCollator(tokenizer.pad_token_id),
                         label_ids=data.label_ids)
    trainer.train()
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..records import read_jsonl
from ._ops import gather_step_logits
from .model import PRMConvention, _token_id

__all__ = [  # noqa: F822 (PRMTrainer is built on first access, see __getattr__)
    "PRMDataCollator", "PRMDataset", "PRMTrainer", "prm_loss", "read_jsonl", "soft_label_loss",
    "step_metrics",
]


def soft_label_loss(logits: Tensor, labels: Tensor, valid: Tensor) -> Tensor:
    """Mean soft-label cross-entropy over the valid steps.

    logits: [B, S, 2] (positive, negative) or [B, S] (value logit); labels: [B, S] in [0, 1];
    valid: [B, S] bool. Computed as ``-(l logsigmoid(d) + (1 - l) logsigmoid(-d))`` with ``d``
    the logit difference (= the two-way softmax cross-entropy, stable for any ``d``).
    """
    d = logits[..., 0] - logits[..., 1] if logits.dim() == 3 else logits
    labels = labels.to(d.dtype)
    per_step = -(labels * F.logsigmoid(d) + (1 - labels) * F.logsigmoid(-d))
    n = valid.sum()
    return (per_step * valid).sum() / n.clamp(min=1)


class PRMDataset(torch.utils.data.Dataset):
    """Tokenised PRM examples: ``input_ids``, ``step_positions`` (the tag positions) and
    ``step_labels``.

    Parameters
    ----------
    records : iterable of dict
        ``{"text", "value"}`` (ER-PRM format, tags already in the text) or
        ``{"question", "steps", "value"}``.
    tokenizer
    convention : PRMConvention
        Gives the tag token and (two-label) the label tokens.
    max_length : int, optional
        Longest accepted example in tokens.
    """

    def __init__(self, records: Iterable[Mapping[str, Any]], tokenizer, convention: PRMConvention,
                 *, max_length: int | None = None):
        self.convention = convention
        self.tag_id = _token_id(tokenizer, convention.tag_token, "tag_token")
        self.label_ids = None
        if convention.kind == "two_label" and convention.positive is not None:
            self.label_ids = (_token_id(tokenizer, convention.positive, "positive label"),
                              _token_id(tokenizer, convention.negative, "negative label"))
        self.items: list[dict[str, list]] = []
        for i, rec in enumerate(records):
            values = rec.get("value")
            if not isinstance(values, Sequence) or isinstance(values, str) or not values:
                raise ValueError(f"PRMDataset: record {i} needs a non-empty list 'value'")
            labels = [float(v) for v in values]
            if any(not (0.0 <= v <= 1.0) for v in labels):  # NaN fails too
                raise ValueError(f"PRMDataset: record {i} has labels outside [0, 1]: {values}")
            if "text" in rec:
                text = rec["text"]
            elif "question" in rec and "steps" in rec:
                text = convention.format(rec["question"], rec["steps"], tokenizer)
            else:
                raise ValueError(f"PRMDataset: record {i} needs 'text' or 'question' + 'steps'")
            ids = tokenizer(text)["input_ids"]
            positions = [p for p, t in enumerate(ids) if t == self.tag_id]
            if len(positions) != len(labels):
                raise ValueError(
                    f"PRMDataset: record {i} has {len(positions)} step tags "
                    f"({convention.tag_token!r}) but {len(labels)} labels"
                )
            if max_length is not None and len(ids) > max_length:
                raise ValueError(f"PRMDataset: record {i} has {len(ids)} tokens > max_length="
                                 f"{max_length}")
            self.items.append({"input_ids": ids, "step_positions": positions,
                               "step_labels": labels})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list]:
        return self.items[i]


class PRMDataCollator:
    """Right-pads a batch: ``input_ids`` (with ``pad_id``), ``attention_mask``,
    ``step_positions`` [B, S_max] (-1 padding) and ``step_labels`` [B, S_max] (0 padding)."""

    def __init__(self, pad_id: int = 0):
        self.pad_id = int(pad_id)

    def __call__(self, features: Sequence[Mapping[str, list]]) -> dict[str, Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        steps = max(len(f["step_positions"]) for f in features)
        b = len(features)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        pos = torch.full((b, steps), -1, dtype=torch.long)
        lab = torch.zeros((b, steps), dtype=torch.float32)
        for r, f in enumerate(features):
            n, k = len(f["input_ids"]), len(f["step_positions"])
            ids[r, :n] = torch.tensor(f["input_ids"])
            mask[r, :n] = 1
            pos[r, :k] = torch.tensor(f["step_positions"])
            lab[r, :k] = torch.tensor(f["step_labels"])
        return {"input_ids": ids, "attention_mask": mask, "step_positions": pos,
                "step_labels": lab}


def prm_loss(model, inputs: Mapping[str, Tensor], *, label_ids: tuple[int, int] | None = None,
             value_head: str | None = None) -> Tensor:
    """The soft-label loss of ``model`` on a collated batch (see :func:`soft_label_loss`).

    Two-label PRMs take the ``label_ids`` rows (positive, negative) of the LM head; value PRMs
    the submodule named ``value_head`` (a ``Linear(H, 1)``).
    """
    base = getattr(model, "base_model", model)
    out = base(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
               use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    if value_head is not None:
        lin = model.get_submodule(value_head)
        head, bias = lin.weight.reshape(-1), lin.bias
        bias = None if bias is None else bias.reshape(())
    else:
        lm_head = model.get_output_embeddings()
        rows = list(label_ids)
        head = lm_head.weight[rows]
        bias = None if getattr(lm_head, "bias", None) is None else lm_head.bias[rows]
    positions = inputs["step_positions"]
    logits = gather_step_logits(hidden, positions, head, bias)
    return soft_label_loss(logits, inputs["step_labels"], positions >= 0)


def _make_trainer_class():
    from transformers import Trainer

    class PRMTrainer(Trainer):
        """``transformers.Trainer`` with the PRM soft-label loss at the step tags.

        Extra keyword arguments: ``label_ids=(positive_id, negative_id)`` for two-label PRMs,
        or ``value_head="name"`` (a ``Linear(H, 1)`` submodule of the model) for value PRMs.
        ``args.remove_unused_columns`` is turned off (the step columns are not model inputs).
        """

        def __init__(self, *args, label_ids: tuple[int, int] | None = None,
                     value_head: str | None = None, **kwargs):
            if (label_ids is None) == (value_head is None):
                raise ValueError("PRMTrainer: give exactly one of label_ids (two-label PRM) or "
                                 "value_head (value PRM)")
            super().__init__(*args, **kwargs)
            self.args.remove_unused_columns = False
            self.prm_label_ids = None if label_ids is None else tuple(int(i) for i in label_ids)
            self.prm_value_head = value_head

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = prm_loss(model, inputs, label_ids=self.prm_label_ids,
                            value_head=self.prm_value_head)
            return (loss, {"loss": loss}) if return_outputs else loss

    return PRMTrainer


def __getattr__(name: str):
    # The Trainer subclass is built on first use, so importing ponder.rewards never needs
    # transformers.
    if name == "PRMTrainer":
        cls = _make_trainer_class()
        globals()["PRMTrainer"] = cls
        return cls
    raise AttributeError(name)


def step_metrics(scores: Sequence[float], labels: Sequence[float],
                 threshold: float = 0.5) -> dict[str, float]:
    """Step-judging quality: ROC AUC (the probability that a random good step scores above a
    random bad one, ties counting 1/2) and accuracy at ``threshold``; labels >= 0.5 are good."""
    pairs = [(float(s), float(l) >= 0.5) for s, l in zip(scores, labels, strict=True)]
    if not pairs:
        raise ValueError("step_metrics: no steps")
    acc = sum((s >= threshold) == g for s, g in pairs) / len(pairs)
    pos = sum(g for _, g in pairs)
    neg = len(pairs) - pos
    auc = math.nan
    if pos and neg:
        # Mann-Whitney U from ranks (average ranks for ties).
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
        ranks = [0.0] * len(pairs)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and pairs[order[j + 1]][0] == pairs[order[i]][0]:
                j += 1
            for k in range(i, j + 1):
                ranks[order[k]] = (i + j) / 2 + 1
            i = j + 1
        rank_sum = sum(r for r, (_, g) in zip(ranks, pairs) if g)
        auc = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
    return {"auc": auc, "accuracy": acc, "n": len(pairs), "n_good": pos, "n_bad": neg}
