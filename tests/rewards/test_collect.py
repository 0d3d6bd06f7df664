"""The rollout collector: ER-PRM records, resuming after an interruption without duplicates."""

import json
import math

import pytest
from ponder.generation import TextGenerator, truncate_at_stop
from ponder.rewards import er_prm_label, toy_convention
from ponder.rewards.collect import collect_rollouts, solution_id
from ponder.toy import Problem, ToyVerifier


class FakeGenerator:
    """Deterministic completions: the right answer for even prefix lengths, a wrong one for odd
    ones, alternating across the n samples. Optionally raises after ``fail_after`` calls."""

    def __init__(self, fail_after=None):
        self.calls = 0
        self.prompts = []
        self.fail_after = fail_after

    def generate(self, prompts, *, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0,
                 stop=(), seed=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        self.prompts.extend(prompts)
        out = []
        for p in prompts:
            problem = Problem.from_question(p.split("\n\n")[0])
            k = p.count("\n\n") - 1  # steps already in the prefix
            out.append([f"Answer: {problem.answer + (j % 2) * (k % 2)}" for j in range(n)])
        return out


def _records():
    probs = [Problem.from_chain([10 + i, 5, 3, 2], ["+", "-", "+"]) for i in range(5)]
    return [{"question": p.question, "solution": p.target} for p in probs], probs


def test_fake_generator_is_a_generator():
    assert isinstance(FakeGenerator(), TextGenerator)
    assert truncate_at_stop("ab\n\ncd\n\n", ["\n\n"]) == "ab"
    assert truncate_at_stop("abc", ["x", ""]) == "abc"


def test_collect_labels(tmp_path):
    records, probs = _records()
    out = tmp_path / "er.jsonl"
    stats = collect_rollouts(records, FakeGenerator(), ToyVerifier(), out, n=4, eta=2.0,
                             convention=toy_convention(), progress=False, prefixes_per_call=3)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats.written == 5 and stats.prefixes_sampled == 5 * 3 and stats.completions == 60
    assert [r["question"] for r in rows] == [p.question for p in probs]
    r = rows[0]
    assert r["steps"] == probs[0].steps + [f"Answer: {probs[0].answer}"]
    # Prefix lengths 1, 3 (odd) get half-wrong completions; prefix 2 all right; the whole
    # solution is right.
    assert r["outcomes"] == [[1, 0, 1, 0], [1, 1, 1, 1], [1, 0, 1, 0], [1]]
    half = er_prm_label([1, 0, 1, 0], 2.0)
    assert half == pytest.approx(0.5 * math.log((math.exp(2) + 1) / 2))
    assert r["value"] == [half, 1.0, half, 1.0]
    assert r["text"] == toy_convention().format(r["question"], r["steps"])
    assert r["text"].count(" k") == 4
    assert r["id"] == solution_id(r["question"], r["steps"])


def test_collect_resumes_without_duplicates(tmp_path):
    records, _ = _records()
    ref = tmp_path / "ref.jsonl"
    collect_rollouts(records, FakeGenerator(), ToyVerifier(), ref, n=2, progress=False,
                     prefixes_per_call=2)

    out = tmp_path / "er.jsonl"
    gen = FakeGenerator(fail_after=2)  # 4 prefixes done: solution 1 and a third of solution 2
    with pytest.raises(KeyboardInterrupt):
        collect_rollouts(records, gen, ToyVerifier(), out, n=2, progress=False,
                         prefixes_per_call=2)
    first = out.read_text().splitlines()
    cached = (tmp_path / "er.jsonl.rollouts.jsonl").read_text().splitlines()
    assert len(first) == 1 and len(cached) == 4
    # A torn last line (killed mid-write) is cut off on restart, never parsed.
    with open(out, "a") as f:
        f.write('{"id": "torn')

    gen2 = FakeGenerator()
    stats = collect_rollouts(records, gen2, ToyVerifier(), out, n=2, progress=False,
                             prefixes_per_call=2)
    assert stats.skipped == 1 and stats.written == 4
    assert stats.prefixes_reused == 1 and stats.prefixes_sampled == 11
    # Finished prefixes were not sampled again.
    before = set(gen.prompts)
    assert not before & set(gen2.prompts)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 5
    assert rows == [json.loads(line) for line in ref.read_text().splitlines()]
    keys = [json.loads(line)["key"] for line in
            (tmp_path / "er.jsonl.rollouts.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 15
    # A third run has nothing left to do.
    gen3 = FakeGenerator()
    stats = collect_rollouts(records, gen3, ToyVerifier(), out, n=2, progress=False)
    assert stats.skipped == 5 and stats.written == 0 and gen3.calls == 0


def test_collect_errors(tmp_path):
    with pytest.raises(ValueError, match="needs 'question'"):
        collect_rollouts([{"solution": "1"}], FakeGenerator(), ToyVerifier(), tmp_path / "o",
                         progress=False)
    with pytest.raises(ValueError, match="duplicate"):
        collect_rollouts([{"question": "Q: 1+2=?", "solution": "1+2=3"}] * 2, FakeGenerator(),
                         ToyVerifier(), tmp_path / "o", progress=False)
    with pytest.raises(ValueError, match="eta"):
        collect_rollouts([], FakeGenerator(), ToyVerifier(), tmp_path / "o", eta=float("nan"),
                         progress=False)


class SeededGenerator(FakeGenerator):
    """Completions that depend on the seed each prompt is given (one per prompt, as
    ``collect_rollouts`` passes them): right or wrong by the bits of ``seed + j``."""

    def __init__(self, fail_after=None):
        super().__init__(fail_after)
        self.seeds = []

    def generate(self, prompts, *, n=1, max_new_tokens=256, temperature=1.0, top_p=1.0,
                 stop=(), seed=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        assert len(seed) == len(prompts)
        self.seeds.extend(seed)
        out = []
        for p, s in zip(prompts, seed):
            answer = Problem.from_question(p.split("\n\n")[0]).answer
            out.append([f"Answer: {answer + ((s >> j) & 1)}" for j in range(n)])
        return out


def test_collect_resume_matches_an_uninterrupted_run_byte_for_byte(tmp_path):
    records, _ = _records()
    ref = tmp_path / "ref.jsonl"
    collect_rollouts(records, SeededGenerator(), ToyVerifier(), ref, n=6, seed=7,
                     progress=False, prefixes_per_call=4)

    out = tmp_path / "er.jsonl"
    with pytest.raises(KeyboardInterrupt):  # 2 calls x 3 prefixes: one solution and a half
        collect_rollouts(records, SeededGenerator(fail_after=2), ToyVerifier(), out, n=6,
                         seed=7, progress=False, prefixes_per_call=3)
    stats = collect_rollouts(records, SeededGenerator(), ToyVerifier(), out, n=6, seed=7,
                             progress=False, prefixes_per_call=2)
    assert stats.skipped == 2 and stats.prefixes_reused == 0 and stats.prefixes_sampled == 9
    assert out.read_bytes() == ref.read_bytes()
    assert (tmp_path / "er.jsonl.rollouts.jsonl").read_bytes() == \
        (tmp_path / "ref.jsonl.rollouts.jsonl").read_bytes()
    rows = [json.loads(line) for line in ref.read_text().splitlines()]
    assert {(r["n"], r["seed"], r["temperature"], r["max_new_tokens"], r["eta"]) for r in rows} \
        == {(6, 7, 1.0, 256, 2.0)}
    # The fake really depends on the seed: another run seed gives other outcomes.
    other = tmp_path / "other.jsonl"
    collect_rollouts(records, SeededGenerator(), ToyVerifier(), other, n=6, seed=8,
                     progress=False)
    assert [json.loads(line)["outcomes"] for line in other.read_text().splitlines()] != \
        [r["outcomes"] for r in rows]


@pytest.mark.parametrize(("name", "value"), [("n", 5), ("seed", 1), ("temperature", 0.5),
                                             ("max_new_tokens", 64), ("eta", 1.0)])
def test_collect_refuses_a_resume_with_other_parameters(tmp_path, name, value):
    records, _ = _records()
    out = tmp_path / "er.jsonl"
    with pytest.raises(KeyboardInterrupt):
        collect_rollouts(records, SeededGenerator(fail_after=2), ToyVerifier(), out, n=3,
                         progress=False, prefixes_per_call=2)
    before = out.read_bytes(), (tmp_path / "er.jsonl.rollouts.jsonl").read_bytes()
    with pytest.raises(ValueError, match=rf"with {name}=.*written with {name}="):
        collect_rollouts(records, SeededGenerator(), ToyVerifier(), out, progress=False,
                         **{"n": 3, name: value})
    assert (out.read_bytes(), (tmp_path / "er.jsonl.rollouts.jsonl").read_bytes()) == before


def test_collect_refuses_to_resume_a_file_without_recorded_parameters(tmp_path):
    records, _ = _records()
    out = tmp_path / "er.jsonl"
    out.write_text(json.dumps({"id": "old", "text": "x", "value": [1.0], "eta": 2.0}) + "\n")
    with pytest.raises(ValueError, match="do not record n"):
        collect_rollouts(records, SeededGenerator(), ToyVerifier(), out, progress=False)
