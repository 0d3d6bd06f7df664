"""``ponder bolt``: the three stages on a tiny model folder, and the errors it reports."""

import json

import pytest
from ponder.cli import main

from tests.tiny import tiny_llama


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from ponder.toy import make_tokenizer

    folder = tmp_path_factory.mktemp("tiny")
    tok = make_tokenizer(padding_side="left")
    tiny_llama(0, vocab=len(tok), hidden=16, max_positions=1024).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _queries(path):
    path.write_text("".join(json.dumps({"query": f"Q: {a}+1=?", "reference": a + 1}) + "\n"
                            for a in range(3)))
    return str(path)


def test_bolt_cli_stages(tiny_folder, tmp_path, capsys):
    q = _queries(tmp_path / "q.jsonl")
    out = tmp_path / "run"
    common = ["--model", str(tiny_folder), "--out", str(out), "--reward", "toy", "--quiet",
              "--thought-open", "seek\n", "--thought-close", "\nseen\n", "--solution-open", "",
              "--solution-close", ""]
    assert main(["bolt", "bootstrap", "--queries", q, "--n", "2", "--m", "1",
                 "--max-new-tokens", "4", *common]) == 0
    text = capsys.readouterr().out
    assert "format filter: kept 0, dropped 6" in text  # a random model writes no format
    lines = (out / "bootstrap.samples.jsonl").read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["prompt"].count("Query:") == 2
    assert (out / "bootstrap.jsonl").read_text() == ""
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"query": "Q: 1+1=?", "thought": "1+1=2",
                                "solution": "Answer: 2"}) + "\n")
    assert main(["bolt", "sft", "--data", str(data), "--epochs", "1", *common]) == 0
    assert (out / "sft" / "model.safetensors").is_file()
    assert main(["bolt", "dpo", "--queries", q, "--n", "2", "--iterations", "1",
                 "--max-new-tokens", "4", *common[:2], "--out", str(out), "--reward", "toy",
                 "--quiet"]) == 0
    assert "iteration 1: format 0.0%" in capsys.readouterr().out
    assert (out / "dpo" / "model.safetensors").is_file()


def test_bolt_cli_errors(tiny_folder, tmp_path, capsys):
    q = _queries(tmp_path / "q.jsonl")
    assert main(["bolt", "bootstrap", "--model", str(tiny_folder), "--queries", q]) == 2
    assert "--reward is needed" in capsys.readouterr().err
    assert main(["bolt", "bootstrap", "--model", str(tiny_folder), "--reward", "toy"]) == 2
    assert "--queries is needed" in capsys.readouterr().err
    assert main(["bolt", "bootstrap", "--model", str(tmp_path), "--queries", q,
                 "--reward", "toy"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert main(["bolt", "bootstrap", "--out", str(tmp_path / "none")]) == 2
    assert "`ponder bolt effect --out" in capsys.readouterr().err
    assert main(["bolt", "sft", "--out", str(tmp_path / "none")]) == 2
    assert "run `ponder bolt bootstrap" in capsys.readouterr().err
    assert main(["bolt", "dpo", "--out", str(tmp_path / "none")]) == 2
    assert "no SFT model" in capsys.readouterr().err
    assert main(["bolt", "bootstrap", "--model", str(tiny_folder), "--queries", q,
                 "--reward", "nope"]) == 2
    assert "--reward must be" in capsys.readouterr().err
    assert main(["bolt", "bootstrap", "--model", str(tiny_folder), "--queries", q,
                 "--reward", "toy", "--m", "11"]) == 2
    assert "--m 11" in capsys.readouterr().err
