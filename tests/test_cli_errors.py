"""Every ``ponder`` subcommand refuses bad arguments and inputs with one line and exit status 2.

Each case runs ``ponder.cli.main`` in-process: the status must be 2, stderr must end with one
line ``ponder <command>: error: ...`` naming the problem, and no traceback may be printed. The bad
input must be refused before any slow work (loading models, sampling, training), which keeps the
whole table to a few seconds. Two cases run the real command in a subprocess to check the status
end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ponder import cli

GOOD_SOLUTION = {"question": "Q: 1+1=?", "solution": "1+1=2\n\nThe answer is 2"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli-errors")

    def write(name: str, text: str) -> str:
        (root / name).write_text(text)
        return str(root / name)

    def jsonl(name: str, *records: object) -> str:
        return write(name, "".join(json.dumps(r) + "\n" for r in records))

    return {
        "missing": str(root / "missing.jsonl"),
        "folder": str(root),
        "no_folder_out": str(root / "no" / "such" / "out.jsonl"),
        "not_json": write("not_json.jsonl", "{not json\n"),
        "empty": write("empty.jsonl", "\n\n"),
        "not_object": jsonl("list.jsonl", [1, 2]),
        "no_question": jsonl("no_question.jsonl", {"solution": "x"}),
        "no_steps": jsonl("no_steps.jsonl", {"question": "Q: 1+1=?"}),
        "int_steps": jsonl("int_steps.jsonl", {"question": "Q: 1+1=?", "steps": [1, 2]}),
        "good": jsonl("good.jsonl", GOOD_SOLUTION),
        "string_candidates": jsonl("str_cand.jsonl", {"question": "Q: 1+1=?", "candidates": "ab"}),
        "empty_candidates": jsonl("no_cand.jsonl", {"question": "Q: 1+1=?", "candidates": []}),
        "no_answer": jsonl("no_answer.jsonl", {"prompt": "Q: 1+1=?"}),
        "prompts_not_json": write("prompts.jsonl", "Q: 1+1=?\n"),
        "not_er_data": jsonl("not_er.jsonl", {"foo": 1}),
    }


# (argv with {file} placeholders, a fragment the error line must hold)
CASES = [
    # ponder demo / info / experiments
    (["demo", "--only", "nothing"], "--only"),
    (["demo", "--seed", "-1"], "--seed"),
    (["info", "--bogus"], "unrecognized arguments"),
    (["experiments", "samplers", "--seed", "x"], "--seed"),
    (["experiments", "nothing"], "invalid choice"),
    # ponder sample
    (["sample", "--device", "bogus"], "not a device"),
    (["sample", "--device", "meta"], "meta"),
    (["sample", "--device", "cuda:99"], "--device"),
    (["sample", "--steps", "0"], "--steps"),
    (["sample", "--chains", "1"], "--chains"),
    (["sample", "--dim", "-3"], "--dim"),
    (["sample", "--step-size", "nan"], "--step-size"),
    (["sample", "uld", "--friction", "1e200", "--steps", "4"], "friction"),
    (["sample", "uld", "--friction", "0"], "--friction"),
    (["sample", "sps-mala", "--eta", "-1"], "--eta"),
    (["sample", "sps-mala", "--inner-steps", "0"], "--inner-steps"),
    (["sample", "rtk-mala", "--segments", "0"], "--segments"),
    (["sample", "sgld", "--target", "logistic", "--batch-size", "0"], "--batch-size"),
    (["sample", "ddpm", "--target", "logistic"], "exact score"),
    (["sample", "--seed", "-1"], "--seed"),
    # ponder toy
    (["toy", "eval", "--n", "-5"], "--n"),
    (["toy", "eval", "--n", "0"], "--n"),
    (["toy", "eval", "--models", "draft", "--out", "{missing}"], "--out"),
    (["toy", "fly"], "invalid choice"),
    # ponder think
    (["think", "--model", "{missing}"], "--model"),
    (["think", "--prompts", "{missing}"], "--prompts"),
    (["think", "--prompts", "{prompts_not_json}", "--model", "draft"], "not JSON"),
    (["think", "--n", "0"], "--n"),
    (["think", "--context", "0"], "--context"),
    (["think", "--batch-size", "0"], "--batch-size"),
    (["think", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["think", "--prune-ratio", "1.5"], "--prune-ratio"),
    (["think", "--prune-ratio", "nan"], "--prune-ratio"),
    (["think", "--window", "0"], "--window"),
    (["think", "--recent", "-1"], "--recent"),
    (["think", "--token-budget", "0"], "--token-budget"),
    (["think", "--fold-block", "0"], "--fold-block"),
    # ponder rsd
    (["rsd", "--n", "0"], "--n"),
    (["rsd", "--draft", "{missing}"], "--draft"),
    (["rsd", "--target", "nope"], "--target"),
    (["rsd", "--prm", "bogus"], "--prm"),
    (["rsd", "--data", "{missing}"], "--data"),
    (["rsd", "--data", "{not_json}"], "not valid JSON"),
    (["rsd", "--data", "{no_answer}"], "'answer'"),
    (["rsd", "--data", "{empty}"], "no records"),
    (["rsd", "--delta", "nan"], "--delta"),
    (["rsd", "--omega", "bogus"], "--omega"),
    (["rsd", "--max-new-tokens", "0"], "--max-new-tokens"),
    # ponder prm score
    (["prm", "score", "--input", "{missing}", "--output", "{no_folder_out}"], "--input"),
    (["prm", "score", "--input", "{good}", "--output", "{no_folder_out}"], "--output"),
    (["prm", "score", "--input", "{good}", "--output", "{folder}"], "--output"),
    (["prm", "score", "--input", "{not_json}", "--output", "o.jsonl"], "not valid JSON"),
    (["prm", "score", "--input", "{empty}", "--output", "o.jsonl"], "no records"),
    (["prm", "score", "--input", "{not_object}", "--output", "o.jsonl"], "not a JSON object"),
    (["prm", "score", "--input", "{no_question}", "--output", "o.jsonl"], "'question'"),
    (["prm", "score", "--input", "{no_steps}", "--output", "o.jsonl"], "'steps'"),
    (["prm", "score", "--input", "{int_steps}", "--output", "o.jsonl"], "list of strings"),
    (["prm", "score", "--input", "{good}", "--output", "o.jsonl", "--model", "{missing}"],
     "--model"),
    (["prm", "score", "--input", "{good}", "--output", "o.jsonl", "--model", "org/name"],
     "--allow-download"),
    (["prm", "score", "--input", "{good}", "--output", "o.jsonl", "--batch-size", "0"],
     "--batch-size"),
    # ponder prm collect
    (["prm", "collect", "--input", "{missing}", "--output", "o.jsonl"], "--input"),
    (["prm", "collect", "--input", "{good}", "--output", "o.jsonl", "--n", "0"], "--n"),
    (["prm", "collect", "--input", "{good}", "--output", "o.jsonl", "--eta", "0"], "--eta"),
    (["prm", "collect", "--input", "{good}", "--output", "o.jsonl", "--temperature", "-1"],
     "--temperature"),
    (["prm", "collect", "--input", "{good}", "--output", "o.jsonl", "--max-new-tokens", "0"],
     "--max-new-tokens"),
    (["prm", "collect", "--input", "{good}", "--output", "o.jsonl", "--policy", "{missing}"],
     "--policy"),
    (["prm", "collect", "--input", "{no_steps}", "--output", "o.jsonl"], "'steps'"),
    # ponder prm train
    (["prm", "train", "--data", "{missing}", "--out", "o"], "--data"),
    (["prm", "train", "--data", "{good}", "--out", "o", "--steps", "0"], "--steps"),
    (["prm", "train", "--data", "{good}", "--out", "o", "--lr", "0"], "--lr"),
    (["prm", "train", "--data", "{good}", "--out", "o", "--init", "{missing}"], "--init"),
    (["prm", "train", "--data", "{empty}", "--out", "o"], "no records"),
    # ponder prm best-of-n
    (["prm", "best-of-n", "--input", "{missing}"], "--input"),
    (["prm", "best-of-n", "--input", "{string_candidates}"], "list of strings"),
    (["prm", "best-of-n", "--input", "{empty_candidates}"], "empty"),
    (["prm", "best-of-n", "--input", "{good}"], "'candidates'"),
    (["prm", "best-of-n", "--input", "{good}", "--aggregate", "max"], "--aggregate"),
    (["prm", "best-of-n", "--input", "{good}", "--output", "{no_folder_out}"], "--output"),
    (["prm", "fly"], "invalid choice"),
]


def _argv(template: list[str], files: dict[str, str]) -> list[str]:
    return [a.format(**files) for a in template]


@pytest.mark.parametrize(("template", "fragment"), CASES, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else None)
def test_bad_command_lines_end_in_one_line_and_status_2(template, fragment, files, capsys,
                                                         tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs ("o.jsonl") land here, if anywhere
    assert cli.main(_argv(template, files)) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ponder") and "error:" in last, err
    assert fragment in last, err
    assert out == ""  # refused before anything ran
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o").exists()


def test_every_subcommand_has_a_bad_case():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    covered = {c[0][0] for c in CASES}
    assert covered == set(sub.choices)
    prm_sub = next(a for a in sub.choices["prm"]._actions if a.dest == "prm_command")
    assert {c[0][1] for c in CASES if c[0][0] == "prm"} >= set(prm_sub.choices)


def test_debug_env_shows_the_traceback(files, monkeypatch):
    monkeypatch.setenv("PONDER_DEBUG", "1")
    with pytest.raises(ValueError, match="'steps'"):
        cli.main(_argv(["prm", "score", "--input", "{no_steps}", "--output", "o.jsonl"], files))


@pytest.mark.parametrize("template", [["rsd", "--n", "0"],
                                      ["prm", "score", "--input", "{no_steps}", "--output",
                                       "{no_folder_out}"]])
def test_the_installed_command_exits_2(template, files):
    env = {**os.environ, "PONDER_DEBUG": ""}
    src = Path(cli.__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "ponder.cli", *_argv(template, files)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"ponder {template[0]}")
