"""oreo.collect: balanced sets, resumable appends, a torn last line, an incomplete last group."""

from __future__ import annotations

import json

import pytest

from ponder.train.oreo import collect, read_jsonl


class FakeGenerator:
    """Completions "<prompt>|<seed>|<j>|<x>" where x cycles; right when x is even."""

    def __init__(self):
        self.calls = 0

    def generate(self, prompts, *, n, max_new_tokens, temperature, top_p, seed):
        self.calls += 1
        return [[f"{p}|{seed}|{j}|{(seed + j + i) % 3}" for j in range(n)]
                for i, p in enumerate(prompts)]


def verify(q, response):
    return int(response.rsplit("|", 1)[1]) % 2 == 0


QUESTIONS = [{"id": f"q{i}", "prompt": f"P{i}"} for i in range(5)]


def _collect(path, **kw):
    return collect(FakeGenerator(), QUESTIONS, verify, path, k=4, rounds=3, max_right=2,
                   max_wrong=3, chunk=2, seed=7, **kw)


def test_balanced_and_resumable(tmp_path):
    path = tmp_path / "d.jsonl"
    stats = _collect(path)
    rows = read_jsonl(path)
    assert stats["rows"] == len(rows) and stats["questions"] == 5
    for q in QUESTIONS:
        mine = [r for r in rows if r["question_id"] == q["id"]]
        right = [r for r in mine if r["reward"] == 1.0]
        wrong = [r for r in mine if r["reward"] == 0.0]
        assert 1 <= len(right) <= 2 and 1 <= len(wrong) <= 3
        assert len({r["response"] for r in mine}) == len(mine)  # distinct
        assert all(r["group_size"] == len(mine) and r["prompt"] == q["prompt"] for r in mine)
        assert all(verify(q, r["response"]) == (r["reward"] == 1.0) for r in mine)
    whole = path.read_bytes()
    again = _collect(path)
    assert again["skipped"] == 5 and again["rows"] == 0
    assert path.read_bytes() == whole


@pytest.mark.parametrize("damage", ["torn", "missing_line"])
def test_interrupted_last_group_is_collected_again(tmp_path, damage):
    path = tmp_path / "d.jsonl"
    _collect(path)
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    cut = lines[:-1] + [lines[-1][:7]] if damage == "torn" else lines[:-1]
    path.write_bytes(b"".join(cut))
    stats = _collect(path)
    assert stats["skipped"] == 4 and stats["questions"] == 1
    assert path.read_bytes() == whole  # the last question again, same seed, no duplicates
    assert len(read_jsonl(path)) == len(lines)
    assert all(json.loads(x) for x in path.read_text().splitlines())


def test_unique_ids_required(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        collect(FakeGenerator(), QUESTIONS + QUESTIONS[:1], verify, tmp_path / "x.jsonl")
