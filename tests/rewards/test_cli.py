"""``ponder prm score | collect | train | best-of-n`` on small JSONL files (toy models)."""

import json

import pytest
from ponder.cli import main

pytest.importorskip("transformers")


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_score_and_best_of_n(tmp_path, capsys):
    inp = _write(tmp_path / "in.jsonl", [
        {"question": "Q: 12+34=?", "solution": "12+34=46\n\nAnswer: 46"},
        {"question": "Q: 12+34=?", "steps": ["12+34=47", "Answer: 47"]},
    ])
    out = tmp_path / "out.jsonl"
    assert main(["prm", "score", "--input", inp, "--output", str(out), "--quiet"]) == 0
    rows = _read(out)
    assert [len(r["scores"]) for r in rows] == [2, 2]
    assert rows[0]["steps"] == ["12+34=46", "Answer: 46"]
    assert rows[1]["min"] == min(rows[1]["scores"])

    groups = _write(tmp_path / "g.jsonl", [
        {"question": "Q: 12+34=?", "candidates": ["12+34=47\n\nAnswer: 47",
                                                 "12+34=46\n\nAnswer: 46",
                                                 "12+34=47\n\nAnswer: 47"]},
        {"question": "Q: 50-8=?", "candidates": ["50-8=42\n\nAnswer: 42"]},
    ])
    picks = tmp_path / "picks.jsonl"
    assert main(["prm", "best-of-n", "--input", groups, "--output", str(picks), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "majority" in text and "oracle" in text and "prm-min" in text
    rows = _read(picks)
    assert rows[0]["correct"] == [False, True, False]
    assert rows[0]["picks"]["majority"] == 0 and rows[0]["picks"]["first"] == 0


def test_collect_and_train(tmp_path, capsys):
    inp = _write(tmp_path / "sol.jsonl", [
        {"question": "Q: 12+34-5=?", "solution": "12+34=46\n\n46-5=41\n\nAnswer: 41"},
        {"question": "Q: 20+3=?", "solution": "20+3=24\n\nAnswer: 24"},
    ])
    er = tmp_path / "er.jsonl"
    args = ["prm", "collect", "--input", inp, "--output", str(er), "--n", "2",
            "--max-new-tokens", "24", "--quiet"]
    assert main(args) == 0
    rows = _read(er)
    assert [len(r["value"]) for r in rows] == [3, 2]
    assert rows[1]["outcomes"][-1] == [0]  # the whole solution is wrong
    assert main(args) == 0  # resumed: nothing left to do
    assert "0 solutions written (2 already done)" in capsys.readouterr().out
    model_dir = tmp_path / "prm"
    assert main(["prm", "train", "--data", str(er), "--out", str(model_dir), "--steps", "2",
                 "--batch-size", "2", "--init", "toy-draft", "--quiet"]) == 0
    assert (model_dir / "model.safetensors").is_file()
    scored = tmp_path / "scored.jsonl"
    assert main(["prm", "score", "--input", inp, "--output", str(scored), "--model",
                 str(model_dir), "--quiet"]) == 0
    assert [len(r["scores"]) for r in _read(scored)] == [3, 2]


def test_errors(tmp_path, capsys):
    bad = _write(tmp_path / "bad.jsonl", [{"question": "Q: 1+1=?"}])
    assert main(["prm", "score", "--input", bad, "--output", str(tmp_path / "o"),
                 "--quiet"]) == 2
    assert "needs 'steps' (a list of strings) or 'solution'" in capsys.readouterr().err
