"""``ponder think`` (ponder.cli.think) on the shipped toy model."""

from __future__ import annotations

import json
import re

import pytest
import torch

pytest.importorskip("transformers")

from ponder import cli


@pytest.fixture(autouse=True)
def _keep_global_rng():
    with torch.random.fork_rng(devices=[]):
        yield


def _row(out: str, key: str) -> list[float]:
    match = re.search(rf"^{key}\s+([0-9.,%]+)\s+([0-9.,%]+)", out, flags=re.MULTILINE)
    assert match, f"no {key!r} line in:\n{out}"
    return [float(g.replace(",", "").rstrip("%")) for g in match.groups()]


def test_think_on_toy_prompts(capsys):
    rc = cli.main(["think", "--n", "4", "--batch-size", "2", "--max-new-tokens", "40",
                   "--prune-ratio", "0.5", "--window", "4", "--recent", "2"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    dense, think = _row(out, "cache bytes used")
    assert 0.5 < think / dense < 1.0  # keys of the pruned prompt tokens lost half their width
    assert min(_row(out, "decode tokens/s")) > 0
    # ThinK keeps the answers: at most one of the 4 greedy outputs changes (all 4 agree today).
    agree = re.search(r"outputs agree: (\d+)/4", out)
    assert agree and int(agree.group(1)) >= 3, out
    dense_accuracy, think_accuracy = _row(out, "toy accuracy")
    assert think_accuracy >= dense_accuracy - 25.0, out


def test_think_prompt_file_and_errors(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Q: 12+34=?\n\n"}) + "\n" + json.dumps("Q: 5-3=?\n\n"))
    rc = cli.main(["think", "--prompts", str(prompts), "--max-new-tokens", "4", "--window", "2",
                   "--recent", "1"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "prompts      2" in out and "toy accuracy" not in out
    assert cli.main(["think", "--prune-ratio", "1.5"]) == 2
    assert "--prune-ratio" in capsys.readouterr().err
    assert cli.main(["think", "--prompts", str(tmp_path / "missing.jsonl")]) == 2


def test_think_on_the_retrieval_model(capsys):
    # The constructed lookup model keeps every answer at lambda 0.6 (its lookup head reads 41 of
    # 128 key channels) and loses most at 0.95 (6 channels kept); 6 lookups, chance 10% each.
    for ratio, lo, hi in ((0.6, 100.0, 100.0), (0.95, 0.0, 67.0)):
        rc = cli.main(["think", "--model", "retrieval-constructed", "--context", "300", "--n", "6",
                       "--batch-size", "3", "--prune-ratio", str(ratio)])
        out, err = capsys.readouterr()
        assert rc == 0, out + err
        assert "window=32, recent=32" in out and "max_new_tokens 2" in out
        dense, think = _row(out, "lookup accuracy")
        assert dense == 100.0 and lo <= think <= hi, out
    assert cli.main(["think", "--model", "retrieval", "--context", "0"]) == 2
    assert "--context" in capsys.readouterr().err


def test_think_on_the_trained_retrieval_model(capsys):
    rc = cli.main(["think", "--model", "retrieval", "--context", "300", "--n", "6",
                   "--batch-size", "3", "--prune-ratio", "0.4"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert "(trained)" in out
    dense, _ = _row(out, "lookup accuracy")
    assert dense >= 83.0, out  # 5 of 6 or better; chance is 10% a lookup
