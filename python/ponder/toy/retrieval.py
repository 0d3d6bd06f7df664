"""The long-context variant of the toy world: key-value lookup among distractors (for ThinK).

The text format (one character = one token with :func:`ponder.toy.make_tokenizer`)::

    k0421=v5532             <- n_pairs lines "k<key>=v<value>", keys and values all distinct
    k7310=v0087
    ...
    k2958=v1406
                            <- (blank line)
    Q: k7310=?              <- the query: one of the keys, anywhere in the context
                            <- (blank line)
    Answer: v0087           <- the target

``RetrievalExample.prompt`` runs up to and including the blank line after the query, and
``RetrievalExample.target`` is ``"Answer: v0087"`` (no end-of-sequence marker), in the same
shape as the arithmetic problems of :mod:`ponder.toy.arithmetic` (a ``"Q: ...=?"`` question, a
blank line, a final ``"Answer: ..."`` line), so the same verifier rule applies: the first
``"Answer:"`` decides.

Keys and values have fixed widths (``key_digits``, ``value_digits``, zero-padded), so a context of
``P`` pairs has exactly ``len(prompt) = P * (key_digits + value_digits + 4) + key_digits + 9``
characters; :func:`make_retrieval` puts as many pairs as fit in the requested budget.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .arithmetic import ANSWER_PREFIX, STEP_SEPARATOR, _check_int, _check_seed

__all__ = ["RetrievalExample", "extract_value", "make_retrieval", "verify_retrieval"]


@dataclass
class RetrievalExample:
    """One lookup.

    Attributes
    ----------
    prompt : str
        The pairs, the query and the blank line after it (see the module docstring).
    answer : str
        The value to retrieve, as written in the context: ``"v0087"``.
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
        """``"Answer: v0087"``: what a language model should write after the prompt (no EOS)."""
        return ANSWER_PREFIX + self.answer

    @property
    def text(self) -> str:
        return self.prompt + self.target

    @property
    def depth(self) -> float:
        """The queried pair's relative position: 0 = first pair, 1 = last."""
        return self.position / max(self.n_pairs - 1, 1)


def _prompt_chars(n_pairs: int, key_digits: int, value_digits: int) -> int:
    # "k<key>=v<value>" lines joined by "\n", then "\n\nQ: k<key>=?\n\n".
    return n_pairs * (key_digits + value_digits + 4) - 1 + (key_digits + 10)


def make_retrieval(
    n: int,
    *,
    context_tokens: int | tuple[int, int] = (1024, 8192),
    seed: int,
    key_digits: int = 4,
    value_digits: int = 4,
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
        Widths of the keys and values. Keys are distinct within a prompt, and so are values, so
        ``10**key_digits`` and ``10**value_digits`` bound the number of pairs.

    Raises
    ------
    ValueError
        If a budget is too small for two pairs (the queried one and a distractor) or needs more
        distinct keys or values than the widths allow.
    """
    fn = "make_retrieval"
    n = _check_int(fn, "n", n, 0)
    key_digits = _check_int(fn, "key_digits", key_digits, 1)
    value_digits = _check_int(fn, "value_digits", value_digits, 1)
    seed = _check_seed(fn, seed)
    if isinstance(context_tokens, tuple):
        if len(context_tokens) != 2:
            raise ValueError(
                f"{fn}: context_tokens must be an int or (lo, hi), got {context_tokens}"
            )
        lo = _check_int(fn, "context_tokens[0]", context_tokens[0], 1)
        hi = _check_int(fn, "context_tokens[1]", context_tokens[1], lo)
    else:
        lo = hi = _check_int(fn, "context_tokens", context_tokens, 1)
    pair_chars = key_digits + value_digits + 4
    fixed = _prompt_chars(0, key_digits, value_digits)
    smallest = _prompt_chars(2, key_digits, value_digits)
    if lo < smallest:
        raise ValueError(
            f"{fn}: context_tokens must be >= {smallest} (two pairs and the query) with "
            f"key_digits={key_digits}, value_digits={value_digits}; got {lo}"
        )
    most_pairs = (hi - fixed) // pair_chars
    if most_pairs > min(10**key_digits, 10**value_digits):
        raise ValueError(
            f"{fn}: a budget of {hi} characters holds {most_pairs} pairs, more than there are "
            f"distinct keys or values; raise key_digits or value_digits"
        )

    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        budget = rng.randint(lo, hi)
        n_pairs = (budget - fixed) // pair_chars
        keys = rng.sample(range(10**key_digits), n_pairs)
        values = rng.sample(range(10**value_digits), n_pairs)
        lines = [f"k{k:0{key_digits}d}=v{v:0{value_digits}d}" for k, v in zip(keys, values)]
        position = rng.randrange(n_pairs)
        key, answer = lines[position][: key_digits + 1], lines[position][key_digits + 2:]
        prompt = "\n".join(lines) + STEP_SEPARATOR + f"Q: {key}=?" + STEP_SEPARATOR
        examples.append(RetrievalExample(prompt, answer, key, position, n_pairs))
    return examples


_VALUE_RE = re.compile(r"[ \t]*(v\d+)(?!\d)")


def extract_value(text: str) -> str | None:
    """The value (``"v0087"``) after the **first** ``"Answer:"`` in ``text``, or None.

    The rule of :func:`ponder.toy.arithmetic.extract_answer`: the first ``"Answer:"`` decides,
    spaces or tabs may precede the value, anything may follow it.
    """
    at = text.find("Answer:")
    if at < 0:
        return None
    m = _VALUE_RE.match(text, at + len("Answer:"))
    return m.group(1) if m else None


def verify_retrieval(example: RetrievalExample | str, text: str) -> bool:
    """Whether ``text`` answers the lookup: its first ``"Answer:"`` is followed by exactly the
    value (digits and width, ``"v0087"``, not ``"v87"``).

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
