"""The offline MathHay pipeline: generator, quality control, haystacks, evaluation."""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ponder.generation import TextGenerator
from ponder.mathhay import (TASK_TYPES, CachedGenerator, OracleReader, SandboxLimits,
                            SandboxUnavailableError,
                            accuracy_table, build_haystack, consistent, document_passes_filters,
                            evaluate, generate_benchmark, generate_documents, heatmap,
                            independent_answer, parse_answer, quality_control, render_prompt,
                            run_solve, token_counter)
from ponder.mathhay.haystack import parse_prompt
from ponder.mathhay.synthetic import _FILLER, METRICS


@pytest.fixture(scope="module")
def bench():
    b = generate_benchmark(tasks_per_type=2, n_documents=24, seed=7)
    taken = {d["company"] for d in b["documents"]}
    b["documents"] += generate_documents(40, seed=7, start=24, taken=taken)
    return b


@pytest.fixture(scope="module")
def sandbox_ok():
    try:
        run_solve("def solve():\n    return 1\n")
    except SandboxUnavailableError as err:
        pytest.skip(f"no sandbox on this host: {err}")


def _docs(bench, task):
    by_id = {d["doc_id"]: d for d in bench["documents"]}
    return [by_id[i] for i in task["doc_ids"]]


# ----- generator -----

def test_documents_hold_their_quantities(bench):
    docs = bench["documents"]
    assert len({d["company"] for d in docs}) == len(docs)  # a company is in one document only
    for doc in docs:
        assert document_passes_filters(doc["text"]), doc["doc_id"]
        assert len(doc["quantity_cells"]) == 12
        for cell in doc["quantity_cells"]:
            assert set(cell) >= {"object", "numerical_value", "date", "location", "context"}
            assert cell["context"] in doc["text"]
    phrases = [m.phrase for m in METRICS]
    assert not [s for s in _FILLER for p in phrases if p in s]  # prose never names a metric
    assert not document_passes_filters("Too short. 12 and 13.")


def test_tasks_of_every_type_in_the_original_schema(bench):
    tasks = bench["tasks"]
    assert sorted({t["task_type"] for t in tasks}) == sorted(TASK_TYPES)
    for t in tasks:
        steps = {"ss": 1, "2s": 2, "3s": 3}[t["task_type"][:2]]
        n_docs = {"sd": 1, "2d": 2, "3d": 3}[t["task_type"][2:]]
        assert len(t["steps"]) == steps and len(set(t["doc_ids"])) == n_docs
        assert t["solution"].startswith("def solve():") and "return" in t["solution"]
        assert math.isfinite(t["answer"])
        for cell in t["relevant_quantity_cells"]:
            assert repr(cell["numerical_value"]) in t["solution"]
    again = generate_benchmark(tasks_per_type=2, n_documents=24, seed=7)
    assert again["tasks"] == tasks  # seeded


def test_independent_solver_reads_text_not_cells(bench):
    for t in bench["tasks"]:
        docs = [{k: v for k, v in d.items() if k != "quantity_cells"} for d in _docs(bench, t)]
        assert independent_answer(t["question"], docs) == pytest.approx(t["answer"], rel=1e-9)
    # It reads every document it is given, relevant or not, and finds the right company's.
    t = bench["tasks"][0]
    assert independent_answer(t["question"], bench["documents"]) == pytest.approx(t["answer"])
    assert independent_answer("What is the meaning of life?", bench["documents"]) is None


def test_consistency_never_counts_none_nan_or_inf():
    assert consistent(1.0, 1.0 + 1e-9) and not consistent(1.0, 1.1)
    for bad in (None, math.nan, math.inf, -math.inf, True, "1.0"):
        assert not consistent(bad, bad) and not consistent(bad, 1.0)


def test_quality_control_keeps_good_tasks_and_catches_bad_ones(bench, sandbox_ok):
    good = [next(t for t in bench["tasks"] if t["task_type"] == k) for k in ("sssd", "3s3d")]
    reports = quality_control(good, bench["documents"])
    assert [r["consistent"] for r in reports] == [True, True], reports
    base = good[0]
    bad = [
        dict(base, task_id="none", solution="def solve():\n    return None\n"),
        dict(base, task_id="nan", solution="def solve():\n    return float('nan')\n"),
        dict(base, task_id="inf", solution="def solve():\n    return float('-inf')\n"),
        dict(base, task_id="wrong", solution=base["solution"].replace(" - ", " + ")),
        dict(base, task_id="loop", solution="def solve():\n    while True:\n        pass\n"),
        dict(base, task_id="answer", answer=base["answer"] + 1.0),
    ]
    fast = SandboxLimits(cpu_seconds=1, wall_seconds=4)
    reports = {r["task_id"]: r for r in quality_control(bad, bench["documents"], limits=fast)}
    assert not any(r["consistent"] for r in reports.values())
    assert "not a finite number" in reports["none"]["reason"]
    assert "failed in the sandbox" in reports["loop"]["reason"]
    assert "stored answer" in reports["answer"]["reason"]
    # A document whose text disagrees with its cell: the independent reader notices.
    doc = _docs(bench, base)[0]
    cell = base["relevant_quantity_cells"][0]
    shown = re.search(r"\d[\d,]*(?:\.\d+)?(?= )", cell["context"].split(cell["metric"])[1]).group()
    edited = dict(doc, text=doc["text"].replace(shown, "1" + shown))
    docs = [edited if d["doc_id"] == doc["doc_id"] else d for d in bench["documents"]]
    (report,) = quality_control([base], docs)
    assert not report["consistent"] and "independent solution" in report["reason"]
    # A pluggable independent solution (an LLM in the original) that returns None.
    (report,) = quality_control([good[1]], bench["documents"], independent=lambda t, d: None)
    assert not report["consistent"]


# ----- haystacks -----

@pytest.mark.parametrize("tokenizer, budget", [("regex", 2500), ("regex", 6000), ("toy", 11000),
                                               ("callable", 4000)])
def test_haystack_fills_the_budget_exactly_at_document_boundaries(bench, tokenizer, budget):
    if tokenizer == "toy":
        from ponder.toy.tokenizer import make_tokenizer

        tok = make_tokenizer()  # characters, not words
    else:
        tok = None if tokenizer == "regex" else (lambda text: text.split())
    count = token_counter(tok)
    task = next(t for t in bench["tasks"] if t["task_type"] == "3s3d")
    seen_first = None
    for placement in ("first", "middle", "last", 10, 90):
        h = build_haystack(task, bench["documents"], budget=budget, placement=placement,
                           tokenizer=tok)
        assert h["n_tokens"] == count(h["prompt"]) <= budget
        question, docs = parse_prompt(h["prompt"])
        assert question == task["question"]
        by_id = {d["doc_id"]: d for d in bench["documents"]}
        relevant = set(task["doc_ids"])
        positions = [i for i, d in enumerate(h["doc_ids"]) if d in relevant]
        assert positions == list(range(positions[0], positions[0] + 3))  # one block
        for i in positions:  # whole, and never inside another document
            assert docs[i]["text"] == by_id[h["doc_ids"][i]]["text"]
        assert h["cut_words"] is not None
        cut_at = next(i for i, d in enumerate(docs) if d["text"] != by_id[h["doc_ids"][i]]["text"])
        full = by_id[h["doc_ids"][cut_at]]
        # One more word of the cut document would not fit: the budget is filled exactly.
        longer = list(docs)
        longer[cut_at] = dict(full, text=" ".join(full["text"].split(" ")[:h["cut_words"] + 1]))
        assert count(render_prompt(question, longer)) > budget
        n_filler = len(docs) - 3
        if placement == "first":
            assert positions[0] == 0
            seen_first = h["doc_ids"][3:]
        elif placement == "last":
            assert positions[0] == n_filler
            assert h["doc_ids"][:n_filler] == seen_first  # the same seeded shuffle
        elif placement == 10:
            assert positions[0] <= n_filler // 2
        elif placement == 90:
            assert positions[0] >= n_filler // 2
    assert independent_answer(question, docs) == pytest.approx(task["answer"])


def test_haystack_errors(bench):
    task = bench["tasks"][0]
    with pytest.raises(ValueError, match="alone take"):
        build_haystack(task, bench["documents"], budget=50)
    with pytest.raises(ValueError, match="fill only"):
        build_haystack(task, bench["documents"][:30], budget=10**6)
    with pytest.raises(ValueError, match="placement"):
        build_haystack(task, bench["documents"], budget=5000, placement="center")
    with pytest.raises(ValueError, match="percentile"):
        build_haystack(task, bench["documents"], budget=5000, placement=120)


# ----- evaluation -----

@pytest.mark.parametrize("text, value", [
    ('```json\n{"reasoning": "a", "answer": 1234.5}\n```', 1234.5),
    ('Sure! {"reasoning": "b", "answer": "1,234.5"} Hope it helps.', 1234.5),
    ("{'reasoning': 'c', 'answer': '-12.5%'}", -12.5),
    ('{"Answer": "$3.1 million"}', 3.1),
    ("reasoning...\nanswer: 42", 42.0),
    ('{"answer": 2.5e3}', 2500.0),
    ('{"answer": null}', None),
    ('{"answer": "unknown"}', None),
    ("Revenue was 1,200 in 2020.", None),  # no guessing from other numbers
    ("", None),
])
def test_parse_answer(text, value):
    assert parse_answer(text)[0] == value


class Fixed(TextGenerator):
    """Answers every prompt with the same text; counts prompts."""

    def __init__(self, text):
        self.text, self.prompts = text, 0

    def _sample(self, flat, *, max_new_tokens, temperature, top_p, seed):
        self.prompts += len(flat)
        return [self.text] * len(flat)


class CountingOracle(OracleReader):
    prompts = 0

    def _sample(self, flat, **kw):
        self.prompts += len(flat)
        return super()._sample(flat, **kw)


def test_evaluate_oracle_is_perfect_and_resumes(bench, tmp_path):
    small = dict(bench, tasks=bench["tasks"][::2])
    path = tmp_path / "results.jsonl"
    recs = evaluate(small, OracleReader(), budgets=[2500, 4000], placements=["first", 50, "last"],
                    results=path, batch_size=5)
    assert len(recs) == len(small["tasks"]) * 6 and all(r["correct"] for r in recs)
    assert all(r["judge_correct"] is None for r in recs)
    # Resumed: nothing left to ask.
    fixed = Fixed("{}")
    again = evaluate(small, fixed, budgets=[2500, 4000], placements=["first", 50, "last"],
                     results=path)
    assert fixed.prompts == 0 and again == recs
    # An interrupted file (a cut last line) resumes at the missing records only.
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-3]) + "\n" + lines[-3][:20])
    oracle = CountingOracle()
    resumed = evaluate(small, oracle, budgets=[2500, 4000], placements=["first", 50, "last"],
                       results=path)
    assert oracle.prompts == 3 and resumed == recs
    table = accuracy_table(recs)
    assert "| all |" in table and "100.0%" in table and not re.search(r"(?<!10)0\.0%", table)
    png = heatmap(recs, tmp_path / "heat.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_unreadable_answers_are_wrong_and_judge_is_separate(bench):
    small = dict(bench, tasks=bench["tasks"][:3])
    recs = evaluate(small, Fixed("I cannot tell."), budgets=[2500], placements=["middle"],
                    judge=lambda q, gold, response: True)
    assert all(r["answer"] is None and r["correct"] is False for r in recs)
    assert all(r["judge_correct"] is True for r in recs)  # reported, not OR-ed into correct
    assert "0.0%" in accuracy_table(recs)
    assert "100.0%" in accuracy_table(recs, field="judge_correct")


def test_cached_generator_pays_once(tmp_path):
    inner = Fixed('{"answer": 1}')
    cached = CachedGenerator(inner, tmp_path / "cache.jsonl", name="m")
    assert cached.generate(["a", "b"], max_new_tokens=4, temperature=0.0) == [[inner.text]] * 2
    assert inner.prompts == 2
    again = CachedGenerator(inner, tmp_path / "cache.jsonl", name="m")
    again.generate(["b", "c", "a"], max_new_tokens=4, temperature=0.0)
    assert inner.prompts == 3 and again.calls == 1
    again.generate(["a"], max_new_tokens=8, temperature=0.0)  # other options: another key
    assert inner.prompts == 4


class OracleServer:
    """An OpenAI-compatible /v1/completions server on 127.0.0.1 that answers MathHay prompts by
    reading them (as :class:`OracleReader`); the first request gets a 503 (a retry is due)."""

    def __init__(self):
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests += 1
                if outer.requests == 1:
                    return self._send(503, {"error": {"message": "warming up"}})
                prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
                texts = OracleReader().generate(prompts, max_new_tokens=8, temperature=0.0)
                self._send(200, {"id": "x", "object": "text_completion", "created": 0,
                                 "model": body["model"],
                                 "choices": [{"index": i, "text": t[0], "finish_reason": "stop",
                                              "logprobs": None} for i, t in enumerate(texts)]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_openai_compatible_client_against_a_local_server(bench, tmp_path):
    pytest.importorskip("openai")
    from ponder.openai_generation import OpenAIGenerator

    server = OracleServer()
    try:
        small = dict(bench, tasks=bench["tasks"][:4])
        with OpenAIGenerator(server.url, "oracle", concurrency=3, backoff=0.01,
                             api_key="not-a-secret") as gen:
            cached = CachedGenerator(gen, tmp_path / "cache.jsonl", name="oracle")
            recs = evaluate(small, cached, budgets=[2500], placements=["first", "last"])
            assert all(r["correct"] for r in recs) and len(recs) == 8
            assert server.requests == 8 + 1  # one 503, retried
            again = evaluate(small, cached, budgets=[2500], placements=["first", "last"])
            assert again == recs and server.requests == 9  # the cache answered
    finally:
        server.close()


def test_token_counters_agree():
    from ponder.toy.tokenizer import make_tokenizer

    tok = make_tokenizer()
    text = "Q: 12 + 30 = ?\nAnswer: 42"
    assert token_counter(tok)(text) == token_counter(tok.backend_tokenizer)(text) == len(text)
    assert token_counter(None)(text) == len(["Q", ":", "12", "+", "30", "=", "?", "Answer",
                                             ":", "42"])
    assert token_counter(lambda t: 7)(text) == 7
    with pytest.raises(TypeError, match="tokenizer"):
        token_counter(3)
