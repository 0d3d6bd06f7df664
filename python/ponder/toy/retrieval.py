"""The long-context variant of the toy world: key-value lookup among distractors (for ThinK).

The text format (one character = one token with :func:`ponder.toy.make_tokenizer`)::

    k0421=v5                <- n_pairs lines "k<key>=v<value>", distinct keys
    k7310=v3
    ...
    k2958=v5
                            <- (blank line)
    Q: k7310=               <- the query: one of the keys, anywhere in the context; the model
                               completes it as the context did: "v3"

``RetrievalExample.prompt`` ends with the query's ``"="`` and ``RetrievalExample.target`` is
``"v3"`` (no end-of-sequence marker). The prompt stops one token short of the value on purpose:
a model's prefill cannot answer it, so the value is read in a *decode* step, from the KV cache
(dense, or compressed by ThinK).

Keys have a fixed width (``key_digits``, zero-padded) and are distinct within a prompt; values
(``value_digits`` wide) are drawn independently and may repeat, so a lookup with one-digit values
has a chance rate of 1 in 10. A context of ``P`` pairs has exactly
``len(prompt) = P * (key_digits + value_digits + 4) + key_digits + 6`` characters;
:func:`make_retrieval` puts as many pairs as fit in the requested budget.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from ..validation import check_int
from .arithmetic import STEP_SEPARATOR, _check_seed

__all__ = ["RetrievalExample", "extract_value", "make_retrieval", "verify_retrieval"]


@dataclass
class RetrievalExample:
    """One lookup.

    Attributes
    ----------
    prompt : str
        The pairs, the query and the blank line after it (see the module docstring).
    answer : str
        The value to retrieve, as written in the context: ``"v3"``.
    key : str
        The queried key: ``"k7310"``.
    position : int
        Where the queried pair is among the pairs: ``0 <= position < n_pairs``.
    n_pairs : int
        The number of pairs in the context (the queried one and ``n_pairs - 1`` distractors).
    """

    prompt: str
    answer: str
    key: str
    position: int
    n_pairs: int

    @property
    def target(self) -> str:
        """``"v3"``: what a language model should write after the prompt (no EOS)."""
        return self.answer

    @property
    def text(self) -> str:
        return self.prompt + self.target

    @property
    def depth(self) -> float:
        """The queried pair's relative position: 0 = first pair, 1 = last."""
        return self.position / max(self.n_pairs - 1, 1)


def _pair_line(key: int, value: int, key_digits: int, value_digits: int) -> str:
    """``"k7310=v3"``: one pair of the context (and, cut after ``"="``, a query)."""
    return f"k{key:0{key_digits}d}=v{value:0{value_digits}d}"


# What comes between the context and the queried key: a blank line, then "Q: ".
QUERY_PREFIX = STEP_SEPARATOR + "Q: "


def _prompt_chars(n_pairs: int, key_digits: int, value_digits: int) -> int:
    # "k<key>=v<value>" lines joined by "\n", then "\n\nQ: k<key>=".
    return n_pairs * (key_digits + value_digits + 4) - 1 + (key_digits + 7)


def make_retrieval(
    n: int,
    *,
    context_tokens: int | tuple[int, int] = (1024, 8192),
    seed: int,
    key_digits: int = 4,
    value_digits: int = 1,
) -> list[RetrievalExample]:
    """``n`` key-value lookups, drawn deterministically from ``seed``.

    Parameters
    ----------
    n : int
        How many examples.
    context_tokens : int or (int, int)
        The budget of each prompt in characters (= tokens with the character tokenizer, not
        counting its BOS token): a number, or a range ``(lo, hi)`` from which each example's
        budget is drawn uniformly. Each prompt has as many pairs as fit: its length is at most
        the budget and within one pair (``key_digits + value_digits + 4`` characters) of it.
    seed : int
        Same seed and knobs -> the same examples.
    key_digits, value_digits : int
        Widths of the keys and values. Keys are distinct within a prompt, so ``10**key_digits``
        bounds the number of pairs; values may repeat. The toy retrieval model
        (:func:`ponder.toy.retrieval_model.build_retrieval_model`) answers one-digit values.

    Raises
    ------
    ValueError
        If a budget is too small for two pairs (the queried one and a distractor) or needs more
        distinct keys than ``key_digits`` allows.
    """
    fn = "make_retrieval"
    n = check_int(fn, "n", n, 0)
    key_digits = check_int(fn, "key_digits", key_digits, 1)
    value_digits = check_int(fn, "value_digits", value_digits, 1)
    seed = _check_seed(fn, seed)
    if isinstance(context_tokens, tuple):
        if len(context_tokens) != 2:
            raise ValueError(
                f"{fn}: context_tokens must be an int or (lo, hi), got {context_tokens}"
            )
        lo = check_int(fn, "context_tokens[0]", context_tokens[0], 1)
        hi = check_int(fn, "context_tokens[1]", context_tokens[1], lo)
    else:
        lo = hi = check_int(fn, "context_tokens", context_tokens, 1)
    pair_chars = key_digits + value_digits + 4
    fixed = _prompt_chars(0, key_digits, value_digits)
    smallest = _prompt_chars(2, key_digits, value_digits)
    if lo < smallest:
        raise ValueError(
            f"{fn}: context_tokens must be >= {smallest} (two pairs and the query) with "
            f"key_digits={key_digits}, value_digits={value_digits}; got {lo}"
        )
    most_pairs = (hi - fixed) // pair_chars
    if most_pairs > 10**key_digits:
        raise ValueError(
            f"{fn}: a budget of {hi} characters holds {most_pairs} pairs, more than the "
            f"{10**key_digits} distinct keys of {key_digits} digits; raise key_digits"
        )

    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        budget = rng.randint(lo, hi)
        n_pairs = (budget - fixed) // pair_chars
        keys = rng.sample(range(10**key_digits), n_pairs)
        values = [rng.randrange(10**value_digits) for _ in range(n_pairs)]
        lines = [_pair_line(k, v, key_digits, value_digits) for k, v in zip(keys, values)]
        position = rng.randrange(n_pairs)
        key, answer = lines[position][: key_digits + 1], lines[position][key_digits + 2:]
        prompt = "\n".join(lines) + QUERY_PREFIX + f"{key}="
        examples.append(RetrievalExample(prompt, answer, key, position, n_pairs))
    return examples


_VALUE_RE = re.compile(r"v\d+(?!\d)")


def extract_value(text: str) -> str | None:
    """The value a completion of a retrieval prompt gives (``"v3"``), or None.

    ``text`` is what was generated after the prompt (which ends with the query's ``"="``): the
    value must start it, as ``"v"`` and digits, and may be followed by anything but another
    digit (``"v3\n..."`` gives ``"v3"``; ``" v3"``, ``"3"`` and ``"v"`` give None).
    """
    m = _VALUE_RE.match(text)
    return m.group(0) if m else None


def verify_retrieval(example: RetrievalExample | str, text: str) -> bool:
    """Whether the completion ``text`` answers the lookup: it starts with exactly the value
    (digits and width: ``"v07"``, not ``"v7"``; see :func:`extract_value`).

    ``example`` is a :class:`RetrievalExample` or the expected value string. A missing or
    malformed answer is False, never an error.
    """
    if isinstance(example, RetrievalExample):
        expected = example.answer
    elif isinstance(example, str):
        expected = example
    else:
        raise TypeError(
            f"verify_retrieval: expected a RetrievalExample or a value string, "
            f"got {type(example).__name__}"
        )
    if not isinstance(text, str):
        raise TypeError(f"verify_retrieval: text must be a str, got {type(text).__name__}")
    return extract_value(text) == expected
