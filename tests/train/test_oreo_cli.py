"""`ponder oreo collect | train | search` on the toy world, end to end on a few questions."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")

from ponder.cli import main  # noqa: E402
from ponder.train.oreo import read_jsonl  # noqa: E402


def test_collect_train_search(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["oreo", "collect", "--n", "3", "--k", "2", "--rounds", "1"]) == 0
    rows = read_jsonl(tmp_path / "oreo_out" / "data.jsonl")
    assert {r["question_id"] for r in rows} == {"train-0", "train-1", "train-2"}
    assert all(set(r) >= {"prompt", "response", "reward"} for r in rows)
    assert main(["oreo", "train", "--steps", "1", "--batch-size", "4"]) == 0
    assert (tmp_path / "oreo_out" / "model" / "value" / "value_head.safetensors").is_file()
    capsys.readouterr()
    assert main(["oreo", "search", "--n", "2", "--beam-width", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["problems"] == 2 and 0 <= out["beam_2_accuracy"] <= 1


def test_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["oreo", "train"]) == 2
    assert "run `ponder oreo collect` first" in capsys.readouterr().err
    assert main(["oreo", "search", "--model", str(tmp_path)]) == 2
    assert "no value/ folder" in capsys.readouterr().err


def test_search_without_a_trained_model_uses_the_shipped_toy_oreo(tmp_path, monkeypatch, capsys):
    """No ./oreo_out/model: `ponder oreo search` loads ponder.toy.oreo.load_toy_oreo()'s models,
    the policy being the shipped OREO weights (not the draft's) and the value head trained
    (not the zero head a value model starts from)."""
    import torch

    from ponder.toy import load_toy_model
    from ponder.toy.oreo import load_toy_oreo

    policy, value, _ = load_toy_oreo()
    draft, _ = load_toy_model("draft")
    assert not all(torch.equal(a, b) for a, b in zip(policy.parameters(), draft.parameters()))
    assert value.head.weight.abs().sum() > 0
    monkeypatch.chdir(tmp_path)
    assert main(["oreo", "search", "--n", "2", "--beam-width", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["problems"] == 2 and out["beam_sampled_tokens"] > 0
