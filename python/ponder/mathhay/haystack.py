"""Haystacks: a task's relevant documents among shuffled irrelevant ones, the whole prompt cut to
a token budget under a chosen tokenizer.

The prompt (:func:`render_prompt`) is the instructions, the documents (each under a ``Document
k: title`` header) and the question. :func:`build_haystack` fills it to the budget:

1. the irrelevant documents (every document that is not one of the task's) are shuffled with a
   seed (2024, the original's);
2. whole documents are taken while the *full prompt* (instructions, relevant documents and
   question included) stays within the budget; the next document is then cut at a word
   boundary to the longest prefix that still fits, so the prompt has at most ``budget`` tokens
   and one more word would overflow it (token counts are not additive under BPE, so every
   check counts the whole rendered prompt);
3. the relevant documents go in as a block at a document boundary: ``"first"``, ``"middle"``,
   ``"last"``, or a percentile ``0..100`` (the boundary nearest that fraction of the irrelevant
   tokens). The original spliced them into the middle of a word; here they never split a
   document.

Tokenizers: a transformers tokenizer (``encode(text, add_special_tokens=False)``), a tiktoken
``Encoding``, any ``callable(text) -> list | int``, or the default :class:`RegexTokenizer` (words,
numbers and punctuation marks: offline, deterministic, about 1.2 tokens per English word).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..validation import check_int

__all__ = ["PLACEMENTS", "BudgetTooSmall", "RegexTokenizer", "build_haystack", "check_placement",
           "parse_prompt", "render_prompt", "token_counter"]

PLACEMENTS = ("first", "middle", "last")
INSTRUCTIONS = ("Read the documents below, then answer the question at the end. The numbers you "
                "need are in the documents.")
ANSWER_FORMAT = ('Answer with a JSON object of the form {"reasoning": "<your steps>", "answer": '
                 '<a number>} and nothing else.')


class BudgetTooSmall(ValueError):
    """The task's relevant documents and question alone exceed the budget."""


class RegexTokenizer:
    """Words, numbers and single punctuation marks as tokens: a tokenizer that needs nothing."""

    name = "regex"
    _TOKEN = re.compile(r"\w+|[^\w\s]")

    def encode(self, text: str) -> list[str]:
        return self._TOKEN.findall(text)


def token_counter(tokenizer: Any = None) -> Callable[[str], int]:
    """``text -> number of tokens`` for a transformers tokenizer, a tiktoken encoding, a
    :class:`RegexTokenizer` (the default) or a callable returning tokens or a count."""
    if tokenizer is None:
        tokenizer = RegexTokenizer()
    encode = getattr(tokenizer, "encode", None)
    if encode is not None:
        module = type(tokenizer).__module__
        if module.startswith("transformers"):
            return lambda text: len(encode(text, add_special_tokens=False))
        if module.startswith("tokenizers"):  # a raw tokenizers.Tokenizer: an Encoding back
            return lambda text: len(encode(text, add_special_tokens=False).ids)
        if module.startswith("tiktoken"):
            return lambda text: len(encode(text, disallowed_special=()))
        return lambda text: len(encode(text))
    if callable(tokenizer):
        def count(text: str) -> int:
            out = tokenizer(text)
            return out if isinstance(out, int) else len(out)
        return count
    raise TypeError("token_counter: tokenizer must be a transformers tokenizer, a tiktoken "
                    f"Encoding, or a callable text -> tokens; got {type(tokenizer).__name__}")


def _document_block(k: int, doc: Mapping[str, Any]) -> str:
    return f"Document {k}: {doc.get('title', '')}\n{doc['text']}"


def render_prompt(question: str, documents: Sequence[Mapping[str, Any]]) -> str:
    """The evaluation prompt: instructions, the documents in order, the question, the answer
    format."""
    blocks = [_document_block(k + 1, d) for k, d in enumerate(documents)]
    return "\n\n".join([INSTRUCTIONS, *blocks, f"Question: {question}", ANSWER_FORMAT]) + "\n"


_HEADER = re.compile(r"\n\nDocument \d+: (.*)\n")


def parse_prompt(prompt: str) -> tuple[str, list[dict[str, str]]]:
    """The question and the documents (``title``, ``text``) of a :func:`render_prompt` prompt."""
    tail = "\n\n" + ANSWER_FORMAT + "\n"
    body = prompt[:-len(tail)] if prompt.endswith(tail) else prompt
    at = body.rfind("\n\nQuestion: ")
    if at < 0:
        raise ValueError("parse_prompt: not a MathHay prompt (no question)")
    question = body[at + len("\n\nQuestion: "):]
    heads = list(_HEADER.finditer(body[:at]))
    docs = [{"title": h.group(1), "text": body[h.end():(heads[k + 1].start() if k + 1 < len(heads)
                                                      else at)]}
            for k, h in enumerate(heads)]
    return question, docs


def _placement_index(placement: str | float, filler_tokens: Sequence[int]) -> int:
    """The document boundary (0 .. len) where the relevant block goes."""
    n = len(filler_tokens)
    if placement == "first":
        return 0
    if placement == "last":
        return n
    fraction = 0.5 if placement == "middle" else float(placement) / 100.0
    total = sum(filler_tokens)
    best, best_gap, acc = 0, abs(fraction * total), 0
    for i, t in enumerate(filler_tokens, start=1):
        acc += t
        gap = abs(acc - fraction * total)
        if gap < best_gap:
            best, best_gap = i, gap
    return best


def check_placement(where: str, placement: Any) -> str | float:
    if placement in PLACEMENTS:
        return placement
    if isinstance(placement, (int, float)) and not isinstance(placement, bool) \
            and 0 <= placement <= 100:
        return float(placement)
    raise ValueError(f"{where}: placement must be 'first', 'middle', 'last' or a percentile in "
                     f"[0, 100], got {placement!r}")


def build_haystack(task: Mapping[str, Any], documents: Sequence[Mapping[str, Any]], *,
                   budget: int, placement: str | float = "middle", tokenizer: Any = None,
                   seed: int = 2024) -> dict[str, Any]:
    """The prompt of one task at one budget and placement.

    Parameters
    ----------
    task : dict
        A task (``question``, ``doc_ids``).
    documents : sequence of dict
        All documents: the task's (found by ``doc_ids``) and the irrelevant pool.
    budget : int
        The most tokens the whole prompt may have.
    placement : "first", "middle", "last" or a percentile in [0, 100]
    tokenizer : optional
        See the module doc; default :class:`RegexTokenizer`.
    seed : int
        The shuffle of the irrelevant documents (the same for every task and budget, so longer
        haystacks extend shorter ones).

    Returns
    -------
    dict
        ``prompt``, ``n_tokens`` (``<= budget``), ``budget``, ``placement``, ``doc_ids`` (the
        order, relevant ones included; a cut document is the last irrelevant one),
        ``relevant_index`` (position of the first relevant document), ``cut_words`` (words kept
        of the cut document, or None).

    Raises
    ------
    BudgetTooSmall
        If the relevant documents and the question alone exceed the budget.
    ValueError
        If the pool holds too few tokens to fill the budget (the message says how many are
        missing).
    """
    where = "build_haystack"
    check_int(where, "budget", budget, minimum=1)
    placement = check_placement(where, placement)
    count = token_counter(tokenizer)
    by_id = {d["doc_id"]: d for d in documents}
    missing = [i for i in task["doc_ids"] if i not in by_id]
    if missing:
        raise ValueError(f"{where}: task {task.get('task_id')} needs documents {missing}, which "
                         "are not in documents")
    relevant = [by_id[i] for i in task["doc_ids"]]
    rng = random.Random(seed)
    pool = [d for d in documents if d["doc_id"] not in set(task["doc_ids"])]
    rng.shuffle(pool)
    # Relevant documents in a shuffled order of their own (the task's order is a hint otherwise).
    relevant = random.Random(f"{seed};{task.get('task_id')}").sample(relevant, len(relevant))
    question = task["question"]
    base = count(render_prompt(question, relevant))
    if base > budget:
        raise BudgetTooSmall(f"{where}: task {task.get('task_id')}: the relevant documents and the "
                         f"question alone take {base} tokens, more than budget={budget}")

    def assemble(filler: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        at = _placement_index(placement, [block_tokens[id(d)] for d in filler])
        return filler[:at] + relevant + filler[at:]

    # Whole documents first, estimated by their own counts, then checked on the whole prompt.
    block_tokens: dict[int, int] = {}
    filler: list[Mapping[str, Any]] = []
    used = base
    next_doc = None
    for doc in pool:
        t = count("\n\n" + _document_block(1, doc))
        block_tokens[id(doc)] = t
        if used + t > budget:
            next_doc = doc
            break
        filler.append(doc)
        used += t
    while filler and count(render_prompt(question, assemble(filler))) > budget:
        next_doc = filler.pop()  # the estimate overshot (tokens merged at a junction)
    cut_words = None
    if next_doc is not None:
        words = next_doc["text"].split(" ")
        lo, hi = 0, len(words)  # the longest prefix (in words) that fits: binary search

        def with_prefix(k: int) -> list[Mapping[str, Any]]:
            part = dict(next_doc, text=" ".join(words[:k]))
            block_tokens[id(part)] = count("\n\n" + _document_block(1, part))
            return assemble(filler + [part])

        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(render_prompt(question, with_prefix(mid))) <= budget:
                lo = mid
            else:
                hi = mid - 1
        if lo > 0:
            cut_words = lo
            order = with_prefix(lo)
        else:
            order = assemble(filler)
    elif len(filler) == len(pool):
        have = used
        raise ValueError(f"{where}: the irrelevant documents fill only {have} of budget={budget} "
                         f"tokens: add about {budget - have} tokens of documents "
                         "(generate_documents makes more)")
    else:
        order = assemble(filler)
    prompt = render_prompt(question, order)
    n_tokens = count(prompt)
    assert n_tokens <= budget, (n_tokens, budget)
    return {"task_id": task.get("task_id"), "prompt": prompt, "n_tokens": n_tokens,
            "budget": budget, "placement": placement,
            "doc_ids": [d["doc_id"] for d in order],
            "relevant_index": next(i for i, d in enumerate(order) if d is relevant[0]),
            "cut_words": cut_words}
