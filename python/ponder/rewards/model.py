"""``ProcessRewardModel``: score the steps of many candidate solutions with a PRM, in batches.

A PRM here is a transformers model plus a :class:`PRMConvention` that says how (question, steps)
become text and which positions carry the step scores:

- step-tag PRMs (Math-Shepherd, :func:`math_shepherd`): a tag (``" ки"``) after each step; the
  score is the softmax over the two label tokens (``"+"`` / ``"-"``) of the LM head at the tag,
  the positive probability;
- Qwen2.5-Math-PRM style (:func:`qwen_math_prm`): the chat template, ``"<extra_0>"`` after each
  step, and a two-label head (give its rows, positive first, as ``head``);
- value-head PRMs (Skywork style, :func:`value_head`): ``sigmoid(w . h + b)`` at the step-end
  token, with ``head=w`` ([H]) and ``bias=b``.

The base model runs for hidden states only (``model.base_model``, never the LM head over all
positions); :mod:`ponder.ops.prm` computes the scores from the rows at the tag positions.

    prm = ProcessRewardModel(model, tokenizer, math_shepherd())
    prm.score(["Q1", "Q1"], [["step a", "step b"], ["step a'"]])   # [[0.93, 0.12], [0.88]]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ._ops import step_scores

__all__ = [
    "AGGREGATES",
    "PRMConvention",
    "ProcessRewardModel",
    "aggregate",
    "math_shepherd",
    "qwen_math_prm",
    "toy_convention",
    "value_head",
]

AGGREGATES = ("min", "last", "product", "mean")


def aggregate(scores: Sequence[float], how: str = "min") -> float:
    """One number per solution from its step scores: ``min`` (ER-PRM's choice), ``last``,
    ``product`` or ``mean``. A solution with no steps gets NaN (ranked last by best-of-N)."""
    if how not in AGGREGATES:
        raise ValueError(f"aggregate: how must be one of {AGGREGATES}, got {how!r}")
    scores = [float(s) for s in scores]
    if not scores:
        return math.nan
    if how == "min":
        return min(scores)
    if how == "last":
        return scores[-1]
    if how == "product":
        return math.prod(scores)
    return math.fsum(scores) / len(scores)


@dataclass(frozen=True)
class PRMConvention:
    """How a PRM reads (question, steps).

    The text is ``question + question_separator + step_separator.join(step + step_tag)``
    (or, with ``chat_template``, the tokenizer's chat template with the question as the user
    turn and the tagged steps as the assistant turn). The scores are read at the positions of
    ``tag_token`` (one per step); occurrences of ``tag_token`` inside the question or a step are
    replaced by a space first, so that there is exactly one per step, and steps are stripped of
    surrounding whitespace (the question of trailing whitespace).

    Attributes
    ----------
    name : str
    kind : {"two_label", "value"}
        Softmax over two label rows of a head (``positive`` first) or sigmoid of a value head.
    step_tag : str
        Appended to each step (``" ки"``).
    tag_token : str
        The token whose positions are scored (``"ки"``): its id is the last id of
        ``tokenizer.encode(tag_token)`` unless it is a single vocabulary entry.
    question_separator, step_separator : str
    positive, negative : str or None
        The label tokens of a two-label PRM whose labels are LM-head rows (Math-Shepherd ``"+"``
        / ``"-"``); None when the head is given explicitly.
    chat_template : bool
        Format with ``tokenizer.apply_chat_template`` (Qwen2.5-Math-PRM).
    system_prompt : str or None
        The system turn of the chat template.
    """

    name: str
    kind: str
    step_tag: str
    tag_token: str
    question_separator: str = " "
    step_separator: str = "\n"
    positive: str | None = "+"
    negative: str | None = "-"
    chat_template: bool = False
    system_prompt: str | None = None

    def __post_init__(self):
        if self.kind not in ("two_label", "value"):
            raise ValueError(f"PRMConvention: kind must be 'two_label' or 'value', got {self.kind!r}")
        if not self.tag_token or self.tag_token not in self.step_tag:
            raise ValueError(
                f"PRMConvention: tag_token must be a non-empty part of step_tag, got "
                f"{self.tag_token!r} and {self.step_tag!r}"
            )

    def _clean(self, text: str) -> str:
        return text.replace(self.tag_token, " ")

    def format(self, question: str, steps: Sequence[str], tokenizer=None) -> str:
        """The text the PRM reads for ``question`` followed by ``steps`` (see the class doc)."""
        if not isinstance(question, str):
            raise TypeError(f"PRMConvention.format: question must be a str, got "
                            f"{type(question).__name__}")
        if isinstance(steps, str) or any(not isinstance(s, str) for s in steps):
            raise TypeError("PRMConvention.format: steps must be a sequence of str")
        # Stripped, so that "Q: 2+3=?\n\n" (a prompt) and "Q: 2+3=?" read the same.
        body = self.step_separator.join(self._clean(s).strip() + self.step_tag for s in steps)
        question = question.rstrip()
        if self.chat_template:
            if tokenizer is None:
                raise ValueError("PRMConvention.format: a chat-template convention needs tokenizer")
            messages = [{"role": "user", "content": self._clean(question)},
                        {"role": "assistant", "content": body}]
            if self.system_prompt is not None:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            return tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=False)
        return self._clean(question) + self.question_separator + body


def math_shepherd() -> PRMConvention:
    """Math-Shepherd (peiyi9979/math-shepherd-mistral-7b-prm) and ER-PRM's format:
    ``"<question> Step 1: ... ки\\nStep 2: ... ки"``, labels ``"+"`` / ``"-"`` of the LM head."""
    return PRMConvention("math-shepherd", "two_label", " ки", "ки", " ", "\n", "+", "-")


def qwen_math_prm(system_prompt: str = "Please reason step by step, and put your final answer "
                  "within \\boxed{}.") -> PRMConvention:
    """Qwen2.5-Math-PRM: chat template, ``"<extra_0>"`` after each step, a two-class head
    (pass its rows as ``head=``, positive first: ``head=w[[1, 0]]`` for Qwen's [negative,
    positive] order). Qwen's released head is an MLP: a linear head is what ponder's kernel
    scores, so use a model whose head is linear or a linearised copy."""
    return PRMConvention("qwen2.5-math-prm", "two_label", "<extra_0>", "<extra_0>", "", "",
                         None, None, chat_template=True, system_prompt=system_prompt)


def value_head(step_tag: str = "\n", tag_token: str | None = None,
               question_separator: str = "\n") -> PRMConvention:
    """A value-head PRM (Skywork-PRM style): ``sigmoid(w . h + b)`` at the step-end token
    (``"\\n"`` by default; newlines inside steps become spaces). Pass ``head=w`` ([H]) and
    ``bias=b`` to :class:`ProcessRewardModel`."""
    return PRMConvention("value-head", "value", step_tag, tag_token or step_tag,
                         question_separator, "", None, None)


def toy_convention() -> PRMConvention:
    """The toy world's PRM (:func:`ponder.toy.load_toy_prm`): the toy text format with ``" k"``
    after each step (``"k"`` never occurs in arithmetic text) and labels ``"+"`` / ``"-"``::

        Q: 12+34-5=?\\n\\n12+34=46 k\\n\\n46-5=41 k\\n\\nAnswer: 41 k
    """
    return PRMConvention("toy", "two_label", " k", "k", "\n\n", "\n\n", "+", "-")


def _token_id(tokenizer, text: str, what: str) -> int:
    vocab = tokenizer.get_vocab()
    if text in vocab:
        return int(vocab[text])
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise ValueError(f"ProcessRewardModel: the {what} {text!r} encodes to no token")
    return int(ids[-1])


class ProcessRewardModel:
    """A PRM: scores each step of candidate solutions, in padded, length-sorted batches.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM (two-label PRMs read ``positive`` / ``negative`` rows of its LM head) or a
        base model (with ``head`` given). Only ``model.base_model`` runs.
    tokenizer : transformers tokenizer
    convention : PRMConvention
    head : Tensor, optional
        [2, H] (positive row first) for two-label PRMs, [H] for value heads; by default the
        label rows of ``model``'s LM head.
    bias : Tensor, optional
        [2] or a scalar tensor (value heads); the LM head's bias rows by default, if it has one.
    batch_size : int
        Sequences per forward pass (the default of :meth:`score`).
    max_length : int, optional
        Longest accepted input in tokens (an error beyond it, never a silent truncation).
    """

    def __init__(self, model, tokenizer, convention: PRMConvention, *, head: Tensor | None = None,
                 bias: Tensor | None = None, batch_size: int = 16,
                 max_length: int | None = None):
        if not isinstance(convention, PRMConvention):
            raise TypeError(f"ProcessRewardModel: convention must be a PRMConvention, got "
                            f"{type(convention).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.convention = convention
        self.batch_size = _check_batch_size("ProcessRewardModel", batch_size)
        self.max_length = max_length
        self.tag_id = _token_id(tokenizer, convention.tag_token, "tag_token")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.label_ids: tuple[int, int] | None = None
        if head is None:
            if convention.kind != "two_label" or convention.positive is None:
                raise ValueError(
                    f"ProcessRewardModel: convention {convention.name!r} needs head= (the "
                    "two-label rows, positive first, or the value head [H])"
                )
            self.label_ids = (_token_id(tokenizer, convention.positive, "positive label"),
                              _token_id(tokenizer, convention.negative, "negative label"))
        else:
            want = 2 if convention.kind == "two_label" else 1
            if not isinstance(head, Tensor) or head.dim() != want:
                raise ValueError(
                    f"ProcessRewardModel: head must be a tensor of shape "
                    f"{'[2, H]' if want == 2 else '[H]'} for a {convention.kind} PRM, got "
                    f"{type(head).__name__ if not isinstance(head, Tensor) else tuple(head.shape)}"
                )
            if want == 2 and head.shape[0] != 2:
                raise ValueError(f"ProcessRewardModel: head must be [2, H], got {tuple(head.shape)}")
        self._head = head
        self._bias = bias

    # -- pieces ----------------------------------------------------------------------------

    @property
    def base(self):
        """The transformer without its LM head (``model.base_model``)."""
        return getattr(self.model, "base_model", self.model)

    def head_and_bias(self) -> tuple[Tensor, Tensor | None]:
        """The scoring head ([2, H] positive first, or [H]) and its bias, as the model holds
        them now (the LM head's label rows are read afresh, so training shows)."""
        if self._head is not None:
            return self._head, self._bias
        lm_head = self.model.get_output_embeddings()
        rows = list(self.label_ids)
        head = lm_head.weight[rows]
        bias = self._bias
        if bias is None and getattr(lm_head, "bias", None) is not None:
            bias = lm_head.bias[rows]
        return head, bias

    def encode(self, question: str, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of the formatted (question, steps) and the positions of the step tags."""
        text = self.convention.format(question, steps, self.tokenizer)
        ids = self.tokenizer(text)["input_ids"]
        positions = [i for i, t in enumerate(ids) if t == self.tag_id]
        if len(positions) != len(steps):
            raise ValueError(
                f"ProcessRewardModel: found {len(positions)} step tags ({self.convention.tag_token!r},"
                f" id {self.tag_id}) in the tokenised text of {len(steps)} steps; the tokenizer "
                "merges the tag with its neighbours: choose another tag_token or step_tag"
            )
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(f"ProcessRewardModel: an input has {len(ids)} tokens, more than "
                             f"max_length={self.max_length}")
        return ids, positions

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The base model's last hidden states [B, L, H] (after its final norm)."""
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    # -- scoring ---------------------------------------------------------------------------

    @torch.inference_mode()
    def _score_encoded(self, encoded: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        device = next(self.model.parameters()).device
        width = max(len(ids) for ids, _ in encoded)
        n_steps = max(len(pos) for _, pos in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        index = torch.full((len(encoded), max(n_steps, 1)), -1, dtype=torch.long)
        for row, (seq, pos) in enumerate(encoded):  # right padding: positions stay 0..n-1
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
            if pos:
                index[row, :len(pos)] = torch.tensor(pos)
        hidden = self.hidden_states(ids.to(device), mask.to(device))
        head, bias = self.head_and_bias()
        head = head.to(device=device, dtype=hidden.dtype)
        bias = None if bias is None else bias.to(device=device, dtype=hidden.dtype)
        scores = step_scores(hidden, index.to(device), head, bias).cpu()
        return [scores[row, :len(pos)].tolist() for row, (_, pos) in enumerate(encoded)]

    def score(self, questions: Sequence[str], steps: Sequence[Sequence[str]], *,
              batch_size: int | None = None, progress: bool = False) -> list[list[float]]:
        """Per-step scores in [0, 1] of each candidate.

        Parameters
        ----------
        questions : sequence of str
            ``questions[i]`` is candidate ``i``'s question (repeat it for several candidates).
        steps : sequence of sequence of str
            ``steps[i]``: candidate ``i``'s steps, in order (the answer line may be one).
        batch_size : int, optional
            Sequences per forward pass (``self.batch_size`` by default). Large candidate sets
            (best-of-64 of many questions) are scored chunk by chunk, sorted by length so that
            little padding is computed.
        progress : bool
            A tqdm bar over the chunks.

        Returns
        -------
        list of list of float
            ``[len(steps[i])]`` scores per candidate, in the input order; ``[]`` for a
            candidate without steps.
        """
        if isinstance(questions, str) or isinstance(steps, str):
            raise TypeError("ProcessRewardModel.score: questions and steps must be sequences "
                            "(one entry per candidate), not a str")
        if len(questions) != len(steps):
            raise ValueError(f"ProcessRewardModel.score: {len(questions)} questions but "
                             f"{len(steps)} step lists; pass one question per candidate")
        bs = self.batch_size if batch_size is None else _check_batch_size("score", batch_size)
        encoded = [self.encode(q, s) if len(s) else None for q, s in zip(questions, steps)]
        todo = sorted((i for i, e in enumerate(encoded) if e is not None),
                      key=lambda i: len(encoded[i][0]))
        out: list[list[float]] = [[] for _ in encoded]
        chunks = range(0, len(todo), bs)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="PRM scoring", unit="batch")
        for start in chunks:
            part = todo[start:start + bs]
            for i, s in zip(part, self._score_encoded([encoded[i] for i in part])):
                out[i] = s
        return out

    def score_aggregate(self, questions: Sequence[str], steps: Sequence[Sequence[str]],
                        how: str = "min", **kwargs) -> list[float]:
        """:func:`aggregate` of each candidate's :meth:`score` (NaN without steps)."""
        return [aggregate(s, how) for s in self.score(questions, steps, **kwargs)]

    def with_convention(self, **changes) -> ProcessRewardModel:
        """A copy reading the same model with some convention fields changed."""
        return ProcessRewardModel(self.model, self.tokenizer,
                                  replace(self.convention, **changes), head=self._head,
                                  bias=self._bias, batch_size=self.batch_size,
                                  max_length=self.max_length)


def _check_batch_size(fn: str, batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be an integer >= 1, got {batch_size!r}")
    return int(batch_size)
