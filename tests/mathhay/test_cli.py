"""``ponder mathhay``: the offline benchmark end to end, and each step on its own."""

from __future__ import annotations

import json

import pytest

from ponder.cli import main
from ponder.mathhay import SandboxUnavailableError, run_solve


@pytest.fixture(scope="module", autouse=True)
def _sandbox_here():
    try:
        run_solve("def solve():\n    return 1\n")
    except SandboxUnavailableError as err:
        pytest.skip(f"no sandbox on this host: {err}")


def test_end_to_end_with_no_subcommand(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["mathhay", "--out", str(out), "--budget", "1024", "--placement", "first",
                 "--max-new-tokens", "4"]) == 0
    text = capsys.readouterr().out
    assert "quality control: 7/7 tasks consistent" in text and "solves/s" in text
    assert "evaluated toy-target" in text and "evaluated oracle" in text
    oracle = [json.loads(line) for line in (out / "results.oracle.jsonl").read_text().splitlines()]
    answered = [r for r in oracle if r["correct"] is not None]
    assert answered and all(r["correct"] for r in answered)
    assert all(r["n_tokens"] <= 1024 for r in answered)
    toy = [json.loads(line) for line in (out / "results.toy-target.jsonl").read_text().splitlines()]
    assert len(toy) == len(oracle) == 7
    for name in ("table.oracle.md", "heatmap.oracle.png", "table.toy-target.md", "qc.jsonl",
                 "benchmark.qc.json"):
        assert (out / name).stat().st_size > 0


def test_each_step(tmp_path, capsys):
    bench, kept = tmp_path / "bench.json", tmp_path / "kept.json"
    assert main(["mathhay", "generate", "--out", str(bench), "--tasks-per-type", "1",
                 "--documents", "20"]) == 0
    assert main(["mathhay", "qc", "--benchmark", str(bench), "--keep", str(kept),
                 "--output", str(tmp_path / "qc.jsonl")]) == 0
    stacks = tmp_path / "stacks.jsonl"
    assert main(["mathhay", "haystack", "--benchmark", str(kept), "--budget", "3000",
                 "--placement", "25", "--output", str(stacks)]) == 0
    rows = [json.loads(line) for line in stacks.read_text().splitlines()]
    assert len(rows) == 7 and all(r["n_tokens"] <= 3000 and r["placement"] == 25.0 for r in rows)
    results = tmp_path / "results.jsonl"
    args = ["mathhay", "eval", "--benchmark", str(kept), "--policy", "oracle", "--budget",
            "3000", "--placement", "last", "--results", str(results), "--tokenizer", "regex",
            "--table", str(tmp_path / "t.md"), "--heatmap", str(tmp_path / "h.png")]
    assert main(args) == 0
    assert "| all | 100.0% (7) |" in (tmp_path / "t.md").read_text()
    capsys.readouterr()
    # Errors: one line, exit status 2.
    assert main(["mathhay", "haystack", "--benchmark", str(kept), "--budget", "10000000"]) == 2
    assert "generate --documents" in capsys.readouterr().err
    assert main(["mathhay", "eval", "--benchmark", str(bench), "--placement", "centre"]) == 2
    (tmp_path / "bad.json").write_text("[]")
    assert main(["mathhay", "qc", "--benchmark", str(tmp_path / "bad.json")]) == 2
    assert "'documents' and 'tasks'" in capsys.readouterr().err


def test_generate_with_a_model_over_a_corpus(tmp_path, capsys):
    """``generate --corpus`` with a model behind an OpenAI-compatible server (a local stand-in
    that writes one aligned sssd task for the corpus' one document)."""
    pytest.importorskip("openai")
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from ponder.mathhay import generate_documents

    doc = generate_documents(1, seed=11)[0]
    a, b = doc["quantity_cells"][:2]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "profile.txt").write_text(doc["text"])
    answer = {"quantity_cells": [], "tasks": [{
        "relevant_quantity_cells": [{"object": "x", "numerical_value": a["numerical_value"]},
                                    {"object": "y", "numerical_value": b["numerical_value"]}],
        "question": "What was the sum of the two quantities?",
        "solution": f"def solve():\n    return {a['numerical_value']!r} + "
                    f"{b['numerical_value']!r}\n",
        "steps": ["add"], "answer": a["numerical_value"] + b["numerical_value"]}]}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps({"id": "x", "object": "text_completion", "created": 0, "model": "m",
                               "choices": [{"index": 0, "text": json.dumps(answer),
                                            "finish_reason": "stop", "logprobs": None}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        out = tmp_path / "llm.json"
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        assert main(["mathhay", "generate", "--out", str(out), "--corpus", str(corpus),
                     "--tasks-per-type", "1", "--server", url, "--model", "m"]) == 0
        bench = json.loads(out.read_text())
        assert [t["task_type"] for t in bench["tasks"]] == ["sssd", "2ssd", "3ssd"]
        assert "ss2d: skipped" in capsys.readouterr().out
        # The synthetic reader cannot read these questions; the model answers them instead
        # (the stand-in's reply holds the right "answer").
        assert main(["mathhay", "qc", "--benchmark", str(out)]) == 1
        assert main(["mathhay", "qc", "--benchmark", str(out), "--independent", "model",
                     "--server", url, "--model", "m"]) == 0
        assert "3/3 tasks consistent" in capsys.readouterr().out
        assert main(["mathhay", "generate", "--out", str(out), "--server", url]) == 2
    finally:
        httpd.shutdown()
        httpd.server_close()
