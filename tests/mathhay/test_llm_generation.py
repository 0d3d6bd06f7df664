"""The LLM generation chain, with a scripted model standing in for the LLM."""

from __future__ import annotations

import json

import pytest

from ponder.generation import TextGenerator
from ponder.mathhay import (OracleReader, SandboxUnavailableError, generate_documents,
                            quality_control, run_solve)
from ponder.mathhay.llm_generation import (alignment_problems, corpus_documents,
                                           generate_queries, generate_subtopics, generate_tasks,
                                           generate_topics, llm_independent, search_documents)


class Scripted(TextGenerator):
    """Answers by the kind of prompt; ``task`` answers are taken in turn from a list."""

    def __init__(self, tasks=()):
        self.tasks, self.prompts = list(tasks), []

    def _sample(self, flat, *, max_new_tokens, temperature, top_p, seed):
        out = []
        for p in flat:
            self.prompts.append(p)
            if "broad topics" in p:
                out.append('Here you go: {"topics": ["Finance", "Sports", "Health"]}')
            elif "subtopics" in p:
                out.append('```json\n{"subtopics": ["Retail", "Energy"]}\n```')
            elif "search queries" in p:
                out.append(json.dumps({"queries": [{
                    "query": "Compare A and B revenue",
                    "atomic_queries": ["A revenue", "B revenue"]}]}))
            else:
                out.append(json.dumps(self.tasks.pop(0)))
        return out


def _cell(doc, k):
    c = doc["quantity_cells"][k]
    return {**{key: c[key] for key in ("object", "date", "location", "context")},
            "numerical_value": c["numerical_value"]}


def test_topics_subtopics_queries():
    gen = Scripted()
    assert generate_topics(gen, 2) == ["Finance", "Sports"]
    assert generate_subtopics(gen, "Finance") == ["Retail", "Energy"]
    (q,) = generate_queries(gen, "Finance", "Retail", 1)
    assert q["atomic_queries"] == ["A revenue", "B revenue"] and q["subtopic"] == "Retail"


def test_documents_from_a_corpus_or_a_search_are_filtered(tmp_path):
    good = generate_documents(2, seed=3)
    (tmp_path / "a.txt").write_text(good[0]["text"])
    (tmp_path / "b.md").write_text("Too short: 1, 2 and 3.")
    docs = corpus_documents(tmp_path)
    assert [d["text"] for d in docs] == [good[0]["text"]]
    found = search_documents([{"atomic_queries": ["x", "y"]}],
                             lambda q: [good[1]["text"], "short 1 2"])
    assert [d["text"] for d in found] == [good[1]["text"]]  # once, filtered


@pytest.fixture(scope="module")
def sandbox_ok():
    try:
        run_solve("def solve():\n    return 1\n")
    except SandboxUnavailableError as err:
        pytest.skip(f"no sandbox on this host: {err}")


def test_task_generation_with_alignment_check_and_refinement(sandbox_ok):
    doc = generate_documents(1, seed=5)[0]
    doc = dict(doc, title=f"{doc['company']}: a company profile ({doc['location']})")
    a, b = doc["quantity_cells"][0], doc["quantity_cells"][1]
    assert a["metric"] == b["metric"]
    question = (f"What was the total {a['metric']} of {doc['company']} in {a['date']} and "
                f"{b['date']} combined?")
    good_code = (f"def solve():\n    first = {a['numerical_value']!r}\n"
                 f"    second = {b['numerical_value']!r}\n    return first + second\n")
    hallucinated = {"tasks": [{"relevant_quantity_cells": [_cell(doc, 0), dict(
        _cell(doc, 1), numerical_value=123456.75)], "question": question,
        "solution": "import os\ndef solve():\n    return 1", "steps": ["add"], "answer": 1}]}
    good = {"quantity_cells": [_cell(doc, 0), _cell(doc, 1)], "tasks": [{
        "relevant_quantity_cells": [_cell(doc, 0), _cell(doc, 1)], "question": question,
        "solution": good_code, "steps": ["first + second"],
        "answer": str(a["numerical_value"] + b["numerical_value"])}]}
    problems = alignment_problems({**hallucinated["tasks"][0]}, [doc])
    assert any("123457" in p or "123456.75" in p for p in problems)
    assert any("imports os" in p for p in problems)
    gen = Scripted([hallucinated, good])
    task = generate_tasks(gen, [doc], "sssd")
    assert task is not None and task["doc_ids"] == [doc["doc_id"]]
    assert "fix them" in gen.prompts[-1]  # the refinement listed the problems
    (report,) = quality_control([task], [doc], independent=llm_independent(OracleReader()))
    assert report["consistent"], report
    # A model that never aligns: no task.
    assert generate_tasks(Scripted([hallucinated, hallucinated]), [doc], "sssd") is None
    with pytest.raises(ValueError, match="needs 2 document"):
        generate_tasks(gen, [doc], "ss2d")
