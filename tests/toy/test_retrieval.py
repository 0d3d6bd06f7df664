"""ponder.toy.retrieval: key-value lookups among distractors in long contexts."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from ponder.toy import (
    ALPHABET,
    RetrievalExample,
    extract_value,
    make_retrieval,
    verify,
    verify_retrieval,
)

PAIR = 9  # characters per "k1234=v5\n" line with the default widths
LINE_RE = re.compile(r"k\d{4}=v\d")


def _parse(example: RetrievalExample) -> tuple[list[str], str]:
    context, query = example.prompt.split("\n\n", 1)
    return context.split("\n"), query


def test_format():
    (e,) = make_retrieval(1, context_tokens=1024, seed=0)
    lines, query = _parse(e)
    assert all(LINE_RE.fullmatch(line) for line in lines) and len(lines) == e.n_pairs
    assert query == f"Q: {e.key}="
    assert lines[e.position] == f"{e.key}={e.answer}"
    # The completion repeats the context's pair: prompt + target ends like the queried line.
    assert e.target == e.answer and e.text.endswith(lines[e.position])
    assert set(e.text) <= set(ALPHABET)
    assert extract_value(e.target) == e.answer and not verify(0, e.target)


@pytest.mark.parametrize("budget", [28, 48, 1000, 1024, 4096, 8192])
def test_prompts_fill_their_budget_without_exceeding_it(budget):
    for e in make_retrieval(20, context_tokens=budget, seed=budget):
        assert budget - PAIR < len(e.prompt) <= budget
        assert len(e.prompt) == e.n_pairs * PAIR + 4 + 6  # the documented formula


def test_budget_ranges_and_other_widths():
    examples = make_retrieval(200, context_tokens=(1024, 8192), seed=1)
    lengths = [len(e.prompt) for e in examples]
    assert 1024 - PAIR < min(lengths) < 2000 and 7000 < max(lengths) <= 8192
    for e in make_retrieval(20, context_tokens=(300, 600), seed=2, key_digits=3, value_digits=2):
        assert 300 - 11 < len(e.prompt) <= 600
        assert re.fullmatch(r"k\d{3}", e.key) and re.fullmatch(r"v\d{2}", e.answer)


def test_the_answer_is_findable_and_unique():
    examples = make_retrieval(100, context_tokens=(1024, 8192), seed=3)
    for e in examples:
        lines, _ = _parse(e)
        keys = [line[:5] for line in lines]
        values = [line[6:] for line in lines]
        assert len(set(keys)) == len(keys)
        assert e.prompt.count(e.key) == 2  # its pair and the query
        assert dict(zip(keys, values))[e.key] == e.answer
        assert verify_retrieval(e, e.target)
    # The queried pair is anywhere in the context.
    depths = [e.depth for e in examples]
    assert min(depths) < 0.1 and max(depths) > 0.9
    # One-digit values repeat, drawn uniformly: every digit is queried about a tenth of the time.
    counts = Counter(e.answer for e in make_retrieval(2000, context_tokens=64, seed=6))
    assert len(counts) == 10 and min(counts.values()) > 140  # expected 200; 5 sd below


def test_determinism_by_seed():
    a = make_retrieval(5, context_tokens=(1024, 4096), seed=4)
    assert a == make_retrieval(5, context_tokens=(1024, 4096), seed=4)
    assert a != make_retrieval(5, context_tokens=(1024, 4096), seed=5)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("v0087", True),
        ("v0087\nk1234=v1", True),
        ("v0087 junk", True),
        ("v87", False),  # the width is part of the value
        ("v00870", False),
        ("0087", False),
        (" v0087", False),  # the value must start the completion
        ("v1111 v0087", False),
        ("", False),
    ],
)
def test_verify_retrieval(text, expected):
    assert verify_retrieval("v0087", text) is expected


def test_validation():
    with pytest.raises(ValueError, match="context_tokens must be >= 28"):
        make_retrieval(1, context_tokens=27, seed=0)
    with pytest.raises(ValueError, match="key_digits"):
        make_retrieval(1, context_tokens=2000, seed=0, key_digits=2)
    with pytest.raises(ValueError, match="context_tokens"):
        make_retrieval(1, context_tokens=(2000, 1000), seed=0)
    with pytest.raises(TypeError, match="seed"):
        make_retrieval(1, context_tokens=2000, seed=None)
    with pytest.raises(TypeError, match="verify_retrieval"):
        verify_retrieval(87, "v0087")
