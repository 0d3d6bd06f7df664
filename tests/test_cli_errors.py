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

    def write_bytes(name: str, data: bytes) -> str:
        (root / name).write_bytes(data)
        return str(root / name)

    def jsonl(name: str, *records: object) -> str:
        return write(name, "".join(json.dumps(r) + "\n" for r in records))

    def folder(name: str, *files: str) -> str:
        (root / name).mkdir()
        for file in files:
            (root / name / file).write_text("{}")
        return str(root / name)

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
        "er_bad_labels": jsonl("er_labels.jsonl", {"text": "a k", "value": [1.5]}),
        "er_bool_labels": jsonl("er_bool.jsonl", {"text": "a k", "value": [True]}),
        "er_no_steps": jsonl("er_steps.jsonl", {"question": "Q", "steps": [], "value": [1.0]}),
        "empty_steps": jsonl("empty_steps.jsonl", {"question": "Q: 1+1=?", "steps": []}),
        "empty_solution": jsonl("empty_sol.jsonl", {"question": "Q: 1+1=?", "solution": ""}),
        "empty_candidate": jsonl("empty_cand.jsonl", {"question": "Q: 1+1=?",
                                                      "candidates": ["Answer: 2", ""]}),
        "list_reference": jsonl("list_ref.jsonl", {"question": "Q: 1+1=?", "candidates": ["x"],
                                                   "reference": [2]}),
        "not_toy_question": jsonl("not_toy.jsonl", {"question": "What is 1+1?",
                                                    "candidates": ["2"]}),
        "empty_prompt": jsonl("empty_prompt.jsonl", {"prompt": " ", "answer": 2}),
        "bool_answer": jsonl("bool_answer.jsonl", {"prompt": "Q: 1+1=?", "answer": True}),
        "word_answer": jsonl("word_answer.jsonl", {"prompt": "Q: 1+1=?", "answer": "two"}),
        "two_answers": jsonl("two_answers.jsonl", {"prompt": "Q: 1+1=?", "answer": 2},
                             {"prompt": "Q: 1+1=?", "answer": 3}),
        "good_problems": jsonl("problems.jsonl", {"prompt": "Q: 1+1=?", "answer": 2}),
        "empty_text": write("empty.txt", " \n"),
        "not_utf8": write_bytes("latin1.txt", "caf\xe9".encode("latin-1")),
        "prompts_empty_line": jsonl("prompts_empty.jsonl", {"prompt": ""}),
        # model folders that cannot be loaded (refused from their file list, nothing is read)
        "no_config": folder("no_config"),
        "pickled": folder("pickled", "config.json", "pytorch_model.bin", "tokenizer.json"),
        "no_weights": folder("no_weights", "config.json", "tokenizer.json"),
        "no_tokenizer": folder("no_tokenizer", "config.json", "model.safetensors"),
    }


# (argv with {file} placeholders, a fragment the error line must hold)
CASES = [
    # ponder demo / info / experiments
    (["demo", "--only", "nothing"], "--only"),
    (["demo", "--seed", "-1"], "--seed"),
    (["demo", "--out", "{good}"], "--out"),
    (["experiments", "samplers", "--out", "{good}"], "--out"),
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
    (["sample", "--seed", str(2**64)], "--seed"),
    (["sample", "--chains", str(10**13)], "--chains"),
    (["sample", "--dim", str(10**12), "--chains", "2"], "--dim"),
    # not built here, or (where it is) not for --device cpu: refused either way, before any work
    (["sample", "--backend", "cuda"], "--backend cuda"),
    # ponder toy
    (["toy", "eval", "--n", "-5"], "--n"),
    (["toy", "eval", "--n", "0"], "--n"),
    (["toy", "eval", "--models", "draft", "--out", "{missing}"], "--out"),
    (["toy", "fly"], "invalid choice"),
    (["toy", "train", "--out", "{good}"], "--out"),
    (["toy", "eval", "--models", "prm", "--out", "{folder}"], "recipe"),
    # ponder think
    (["think", "--model", "{missing}"], "--model"),
    (["think", "--prompts", "{missing}"], "--prompts"),
    (["think", "--prompts", "{prompts_not_json}", "--model", "draft"], "not JSON"),
    (["think", "--prompts", "{empty_text}"], "empty"),
    (["think", "--prompts", "{not_utf8}"], "--prompts"),
    (["think", "--prompts", "{prompts_empty_line}"], "empty prompt"),
    (["think", "--model", "{no_config}"], "config.json"),
    (["think", "--model", "{pickled}"], "--allow-pickle"),
    (["think", "--model", "{no_weights}", "--allow-pickle"], "no weights"),
    (["think", "--model", "{no_tokenizer}"], "tokenizer"),
    (["think", "--model", "org/name"], "--allow-download"),
    (["think", "--evict", "snapkv"], "token_budget"),
    (["think", "--seed", str(2**63)], "--seed"),
    (["think", "--model", "draft", "--max-new-tokens", str(10**8)], "max_position_embeddings"),
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
    (["rsd", "--data", "{empty_prompt}"], "'prompt' is empty"),
    (["rsd", "--data", "{bool_answer}"], "'answer'"),
    (["rsd", "--data", "{word_answer}"], "'answer'"),
    (["rsd", "--data", "{two_answers}"], "another answer"),
    (["rsd", "--data", "{good_problems}", "--prm", "oracle"], "--prm oracle"),
    (["rsd", "--target", "{pickled}"], "--allow-pickle"),
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
    (["prm", "score", "--input", "{empty_steps}", "--output", "o.jsonl"], "no steps"),
    (["prm", "score", "--input", "{empty_solution}", "--output", "o.jsonl"], "no steps"),
    (["prm", "score", "--input", "{good}", "--output", "{good}"], "--input file"),
    (["prm", "score", "--input", "{good}", "--output", "o.jsonl", "--separator", ""],
     "--separator"),
    (["prm", "score", "--input", "{good}", "--output", "o.jsonl", "--model", "{no_config}"],
     "config.json"),
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
    (["prm", "collect", "--input", "{good}", "--output", "o.jsonl", "--temperature", "1e-300"],
     "--temperature"),
    (["prm", "collect", "--input", "{good}", "--output", "o.jsonl", "--seed", str(2**63)],
     "--seed"),
    (["prm", "collect", "--input", "{good}", "--output", "o.jsonl", "--policy", "{pickled}"],
     "--allow-pickle"),
    # ponder prm train
    (["prm", "train", "--data", "{missing}", "--out", "o"], "--data"),
    (["prm", "train", "--data", "{good}", "--out", "o", "--steps", "0"], "--steps"),
    (["prm", "train", "--data", "{good}", "--out", "o", "--lr", "0"], "--lr"),
    (["prm", "train", "--data", "{good}", "--out", "o", "--init", "{missing}"], "--init"),
    (["prm", "train", "--data", "{empty}", "--out", "o"], "no records"),
    (["prm", "train", "--data", "{not_er_data}", "--out", "o"], "'value'"),
    (["prm", "train", "--data", "{er_bad_labels}", "--out", "o"], "[0, 1]"),
    (["prm", "train", "--data", "{er_bool_labels}", "--out", "o"], "[0, 1]"),
    (["prm", "train", "--data", "{er_no_steps}", "--out", "o"], "'steps' is empty"),
    (["prm", "train", "--data", "{good}", "--out", "{good}"], "--out"),
    # ponder prm best-of-n
    (["prm", "best-of-n", "--input", "{missing}"], "--input"),
    (["prm", "best-of-n", "--input", "{string_candidates}"], "list of strings"),
    (["prm", "best-of-n", "--input", "{empty_candidates}"], "empty"),
    (["prm", "best-of-n", "--input", "{good}"], "'candidates'"),
    (["prm", "best-of-n", "--input", "{good}", "--aggregate", "max"], "--aggregate"),
    (["prm", "best-of-n", "--input", "{good}", "--output", "{no_folder_out}"], "--output"),
    (["prm", "best-of-n", "--input", "{empty_candidate}"], "candidate 2 has no steps"),
    (["prm", "best-of-n", "--input", "{list_reference}"], "'reference'"),
    (["prm", "best-of-n", "--input", "{not_toy_question}"], "toy question"),
    (["prm", "best-of-n", "--input", "{string_candidates}", "--output", "{string_candidates}"],
     "--input file"),
    # ponder bolt
    (["bolt", "bootstrap", "--queries", "{missing}"], "--queries"),
    (["bolt", "bootstrap", "--percentile", "101"], "--percentile"),
    (["bolt", "bootstrap", "--queries", "{good}", "--out", "o"], "'query'"),
    (["bolt", "bootstrap", "--model", "{folder}", "--queries", "{good}"], "--reward"),
    (["bolt", "sft", "--data", "{good}", "--out", "o"], "'query'"),
    (["bolt", "dpo", "--reward", "nope", "--out", "o"], "--reward"),
    (["bolt", "effect", "--model", "{folder}", "--out", "o"], "toy world"),
    (["prm", "fly"], "invalid choice"),
    # ponder oreo
    (["oreo", "collect", "--k", "0"], "--k"),
    (["oreo", "collect", "--questions", "{missing}"], "--questions"),
    (["oreo", "train", "--data", "{missing}"], "--data"),
    (["oreo", "train", "--steps", "0"], "--steps"),
    (["oreo", "search", "--model", "{folder}"], "value/"),
    (["oreo", "search", "--beam-width", "0"], "--beam-width"),
    (["oreo", "effect", "--out", "{good}"], "--out"),
    (["oreo", "fly"], "invalid choice"),
    # ponder first
    (["first", "extract", "--data", "{missing}"], "--data"),
    (["first", "extract", "--data", "{no_answer}"], "'response'"),
    (["first", "extract", "--k", "0"], "--k"),
    (["first", "calibrate", "--store", "{folder}"], "meta.json"),
    (["first", "train", "--store", "{folder}", "--out", "o"], "--store"),
    (["first", "eval", "--model", "{missing}"], "--model"),
    (["first", "toy", "--steps", "0"], "--steps"),
    (["first", "toy", "--init", "teacher"], "--init"),
    (["first", "toy", "--lr", "0"], "--lr"),
    (["first", "fly"], "invalid choice"),
    (["auto-cei", "eval", "--out", "{folder}/no_run"], "holds no Auto-CEI run"),
    (["auto-cei", "run", "--k", "0"], "--k"),
    (["auto-cei", "run", "--out", "{good}"], "is a file"),
    (["auto-cei", "fly"], "invalid choice"),
    # ponder mathhay
    (["mathhay", "generate", "--out", "{no_folder_out}"], "--out"),
    (["mathhay", "generate", "--out", "o.json", "--metrics-per-document", "8"],
     "--metrics-per-document"),
    (["mathhay", "qc", "--benchmark", "{missing}"], "--benchmark"),
    (["mathhay", "qc", "--benchmark", "{good}"], "--benchmark"),
    (["mathhay", "eval", "--benchmark", "{good}", "--budget", "0"], "--budget"),
    (["mathhay", "--placement", "centre"], "--placement"),
    (["mathhay", "--rel-tol", "0"], "--rel-tol"),
    (["mathhay", "fly"], "invalid choice"),
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


def test_errors_from_below_the_commands_hint_at_the_debug_switch(capsys, monkeypatch):
    """A ValueError a command's own checks did not raise (ponder's library layers, transformers)
    is still one line and status 2, and says how to see where it came from."""
    monkeypatch.delenv("PONDER_DEBUG", raising=False)
    # ULD's own friction check (the command only asks for a positive number)
    assert cli.main(["sample", "uld", "--friction", "1e200", "--steps", "4", "--quiet"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "friction" in last and "PONDER_DEBUG=1" in last


def _raising(exc: BaseException):
    def run(args):
        raise exc
    return run


def test_a_bug_keeps_its_traceback_and_ctrl_c_is_130(monkeypatch, capsys):
    from ponder.cli import demo

    monkeypatch.delenv("PONDER_DEBUG", raising=False)
    monkeypatch.setattr(demo, "run", _raising(KeyError("a bug")))
    with pytest.raises(KeyError):  # not an input problem: not turned into one line
        cli.main(["demo"])
    monkeypatch.setattr(demo, "run", _raising(KeyboardInterrupt()))
    assert cli.main(["demo"]) == 130
    assert capsys.readouterr().err.strip() == "ponder demo: interrupted"


def test_output_checks_leave_no_file_and_keep_an_existing_one(tmp_path, files):
    from ponder.cli import checks

    new = tmp_path / "new.jsonl"
    assert checks.output_file(str(new)) == str(new)
    assert not new.exists()  # probed for writing, then removed
    old = tmp_path / "old.jsonl"
    old.write_text("kept\n")
    checks.output_file(str(old))
    assert old.read_text() == "kept\n"


def test_prm_train_does_not_save_diverged_weights(files, tmp_path, monkeypatch, capsys):
    """``--lr 1e300`` "trains" into NaN weights: they must not be saved as a model. The training
    itself is replaced by what such a run leaves behind (no steps are run here)."""
    import torch
    from ponder.rewards import train as train_mod

    def diverge(self, *args, **kwargs):
        with torch.no_grad():
            next(self.model.parameters()).fill_(float("nan"))

    monkeypatch.setattr(train_mod.PRMTrainer, "train", diverge)
    data = tmp_path / "er.jsonl"
    data.write_text(json.dumps({"text": "Q: 1+1=?\n\n1+1=2 k", "value": [1.0]}) + "\n")
    out = tmp_path / "prm-out"
    argv = ["prm", "train", "--data", str(data), "--out", str(out), "--steps", "1", "--quiet"]
    assert cli.main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "diverged" in last and "not saved" in last
    assert not (out / "model.safetensors").exists()
