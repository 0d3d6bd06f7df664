"""MathHay's generation chain with a language model: topics -> subtopics -> queries ->
documents -> tasks, into the same schema as :mod:`~ponder.mathhay.synthetic`.

Every step asks a :class:`~ponder.generation.TextGenerator` (an ``OpenAIGenerator`` on a server,
a ``TransformersGenerator`` on a local model, a :class:`~ponder.mathhay.evaluate.CachedGenerator`
around either so that an interrupted run resumes without paying twice) for JSON, read
tolerantly (code fences, text around it):

- :func:`generate_topics`, :func:`generate_subtopics`, :func:`generate_queries` (a decomposable
  query and its atomic queries);
- documents come from the caller: :func:`corpus_documents` reads a folder of ``.txt`` / ``.md``
  files, or any ``search(query) -> list of texts`` stands in for the original's web search;
  either way :func:`~ponder.mathhay.synthetic.document_passes_filters` keeps the documents with
  more than 10 distinct non-year numbers, at least 10 sentences and 400 words;
- :func:`generate_tasks` asks for ``quantity_cells`` and tasks of a type (``sssd`` ... ``3s3d``)
  with ``solve()`` code, then the **alignment check** (:func:`alignment_problems`): every relevant
  cell's number must be in its document's text and a literal of the solution, the solution must
  define ``solve()`` and import nothing but math-like modules, the question must not give the
  numbers away; a task that fails is sent back once with the problems listed (the
  refinement), and dropped if it fails again.

The code is never run here: :func:`~ponder.mathhay.qc.quality_control` runs it in the sandbox
and compares it with an independent solution (:func:`llm_independent` asks the model to answer
from the documents alone, without the cells).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..generation import TextGenerator
from .evaluate import _objects, parse_answer
from .haystack import render_prompt
from .synthetic import TASK_TYPES, document_passes_filters

__all__ = ["alignment_problems", "corpus_documents", "generate_queries", "generate_subtopics",
           "generate_tasks", "generate_topics", "llm_independent", "search_documents"]

_ALLOWED_IMPORTS = {"math", "statistics", "fractions", "decimal", "datetime"}
_TYPE_WORDS = {"ss": "one arithmetic step", "2s": "two arithmetic steps",
               "3s": "three arithmetic steps", "sd": "one document", "2d": "two documents",
               "3d": "three documents"}


def _ask_json(generator: TextGenerator, prompt: str, *, max_new_tokens: int) -> Any:
    """The first JSON value of the (greedy) answer, or None."""
    text = generator.generate([prompt], n=1, max_new_tokens=max_new_tokens,
                              temperature=0.0)[0][0]
    fences = re.findall(r"```(?:json)?\s*(.*?)```", text, re.S)
    for piece in [*fences, text]:
        piece = piece.strip()
        try:
            return json.loads(piece)
        except ValueError:
            pass
        for value in _objects(piece):
            return value
        start = piece.find("[")
        if start >= 0:
            try:
                return json.JSONDecoder().raw_decode(piece, start)[0]
            except ValueError:
                pass
    return None


def _strings(value: Any, key: str) -> list[str]:
    if isinstance(value, dict):
        value = value.get(key)
    return [str(v).strip() for v in value if str(v).strip()] if isinstance(value, list) else []


def generate_topics(generator: TextGenerator, n: int = 3, *, max_new_tokens: int = 256
                    ) -> list[str]:
    """``n`` broad topics with much numerical data (finance, sports, demographics, ...)."""
    prompt = (f"List {n} broad topics whose news articles contain many numbers (amounts, "
              f"counts, percentages, dates). Answer with JSON: {{\"topics\": [\"...\"]}}")
    return _strings(_ask_json(generator, prompt, max_new_tokens=max_new_tokens), "topics")[:n]


def generate_subtopics(generator: TextGenerator, topic: str, n: int = 3, *,
                       max_new_tokens: int = 256) -> list[str]:
    prompt = (f"Topic: {topic}\nList {n} specific subtopics of this topic that recent articles "
              f"report with concrete numbers. Answer with JSON: {{\"subtopics\": [\"...\"]}}")
    return _strings(_ask_json(generator, prompt, max_new_tokens=max_new_tokens),
                    "subtopics")[:n]


def generate_queries(generator: TextGenerator, topic: str, subtopic: str, n: int = 2, *,
                     max_new_tokens: int = 512) -> list[dict[str, Any]]:
    """``[{query, atomic_queries: [...]}]``: a question needing several facts, and one search
    query per fact."""
    prompt = (f"Topic: {topic}\nSubtopic: {subtopic}\nWrite {n} search queries, each about a "
              "comparison that needs several numerical facts, and split each into atomic "
              "queries (one fact each). Answer with JSON: {\"queries\": [{\"query\": \"...\", "
              "\"atomic_queries\": [\"...\", \"...\"]}]}")
    value = _ask_json(generator, prompt, max_new_tokens=max_new_tokens)
    items = value.get("queries") if isinstance(value, dict) else value
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("query"), str):
            atomic = [str(q) for q in item.get("atomic_queries", []) if str(q).strip()]
            out.append({"topic": topic, "subtopic": subtopic, "query": item["query"],
                        "atomic_queries": atomic or [item["query"]]})
    return out[:n]


def _document(doc_id: str, title: str, text: str, topic: str = "", subtopic: str = "") -> dict:
    return {"doc_id": doc_id, "topic": topic, "subtopic": subtopic, "title": title,
            "text": text, "quantity_cells": []}


def corpus_documents(folder: str | Path, *, filters: bool = True) -> list[dict[str, Any]]:
    """The ``.txt`` and ``.md`` files of a folder (sorted) as documents; with ``filters``, only
    those passing the original's filters."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"corpus_documents: {folder} is not a folder")
    docs = []
    for k, path in enumerate(sorted(p for p in folder.rglob("*") if p.suffix in (".txt", ".md"))):
        text = path.read_text(errors="replace").strip()
        if not filters or document_passes_filters(text):
            docs.append(_document(f"corpus-{k:05d}", path.stem.replace("_", " "), text))
    return docs


def search_documents(queries: Iterable[Mapping[str, Any]], search: Callable[[str], Sequence[str]],
                     *, filters: bool = True) -> list[dict[str, Any]]:
    """Documents for the atomic queries from a pluggable ``search(query) -> texts`` (the
    original's web search), each text once, filtered as the original."""
    docs, seen = [], set()
    for q in queries:
        for atomic in q["atomic_queries"]:
            for text in search(atomic):
                text = str(text).strip()
                if text in seen or (filters and not document_passes_filters(text)):
                    continue
                seen.add(text)
                docs.append(_document(f"search-{len(docs):05d}", atomic, text,
                                      q.get("topic", ""), q.get("subtopic", "")))
    return docs


def _numbers_in(text: str) -> set[float]:
    out = set()
    for m in re.finditer(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.,])\d+(?:\.\d+)?", text):
        try:
            out.add(float(m.group().replace(",", "")))
        except ValueError:
            pass
    return out


def _literals(code: str) -> set[float]:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    return {float(n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, (int, float))
            and not isinstance(n.value, bool)}


def alignment_problems(task: Mapping[str, Any], documents: Sequence[Mapping[str, Any]]
                       ) -> list[str]:
    """What is wrong with a generated task (empty: aligned). See the module doc."""
    problems = []
    code = task.get("solution")
    if not isinstance(code, str):
        return ["no solution code"]
    try:
        tree = ast.parse(code)
    except SyntaxError as err:
        return [f"the solution is not Python: {err.msg} (line {err.lineno})"]
    if not any(isinstance(n, ast.FunctionDef) and n.name == "solve" and not n.args.args
               for n in tree.body):
        problems.append("the solution defines no solve() without arguments")
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        bad = [n for n in names if n.split(".")[0] not in _ALLOWED_IMPORTS]
        if bad:
            problems.append(f"the solution imports {', '.join(bad)}")
    cells = task.get("relevant_quantity_cells")
    if not isinstance(cells, list) or not cells:
        return problems + ["no relevant quantity cells"]
    in_docs = set().union(*(_numbers_in(d.get("text", "")) for d in documents))
    literals = _literals(code)
    question = str(task.get("question", ""))
    for cell in cells:
        value = cell.get("numerical_value") if isinstance(cell, dict) else None
        try:
            value = float(str(value).replace(",", ""))
        except ValueError:
            problems.append(f"cell {cell!r} has no numerical value")
            continue
        if value not in in_docs:
            problems.append(f"{value:g} ({cell.get('object')}) is not in the documents' text")
        if value not in literals:
            problems.append(f"{value:g} ({cell.get('object')}) is not used in the solution")
        if re.search(rf"(?<![\d.]){re.escape(f'{value:g}')}(?![\d])", question):
            problems.append(f"the question gives away {value:g}")
    return problems


def _task_prompt(task_type: str, documents: Sequence[Mapping[str, Any]],
                 problems: Sequence[str] = (), previous: Any = None) -> str:
    docs = "\n\n".join(f"Document {k + 1}: {d.get('title', '')}\n{d['text']}"
                       for k, d in enumerate(documents))
    want = (f"{_TYPE_WORDS[task_type[:2]]} over {_TYPE_WORDS[task_type[2:]]}")
    prompt = (
        f"{docs}\n\nFrom the documents above, extract quantity cells (object, numerical_value, "
        "date, location, context) and write one math word problem that needs "
        f"{want} (each document contributes at least one quantity). The question must not "
        "state the numbers. Give Python code `def solve():` that assigns each quantity to a "
        "variable, computes the answer step by step and returns it.\nAnswer with JSON: "
        '{"quantity_cells": [{"object": "...", "numerical_value": 0.0, "date": "...", '
        '"location": "...", "context": "..."}], "tasks": [{"relevant_quantity_cells": [...], '
        '"question": "...", "solution": "def solve():\\n    ...", "steps": ["..."], '
        '"answer": 0.0}]}')
    if problems:
        prompt += ("\n\nYour previous answer was:\n" + json.dumps(previous)[:4000]
                   + "\nIt has these problems; fix them:\n- " + "\n- ".join(problems))
    return prompt


def generate_tasks(generator: TextGenerator, documents: Sequence[Mapping[str, Any]],
                   task_type: str, *, task_id: str = "llm-0000", refinements: int = 1,
                   max_new_tokens: int = 1024) -> dict[str, Any] | None:
    """One task of ``task_type`` over ``documents`` (as many as the type's document count), in
    the original schema, after the alignment check and up to ``refinements`` retries; None if
    no aligned task came back."""
    if task_type not in TASK_TYPES:
        raise ValueError(f"generate_tasks: task_type must be one of {TASK_TYPES}, got "
                         f"{task_type!r}")
    need = {"sd": 1, "2d": 2, "3d": 3}[task_type[2:]]
    if len(documents) != need:
        raise ValueError(f"generate_tasks: a {task_type} task needs {need} document(s), got "
                         f"{len(documents)}")
    problems: list[str] = []
    previous = None
    for _ in range(refinements + 1):
        value = _ask_json(generator, _task_prompt(task_type, documents, problems, previous),
                          max_new_tokens=max_new_tokens)
        previous = value
        tasks = value.get("tasks") if isinstance(value, dict) else None
        if not isinstance(tasks, list) or not tasks or not isinstance(tasks[0], dict):
            problems = ["the answer had no tasks list in the JSON asked for"]
            continue
        raw = tasks[0]
        steps = raw.get("steps") if isinstance(raw.get("steps"), list) else []
        task = {"task_id": task_id, "task_type": task_type, "template": "llm",
                "topic": documents[0].get("topic", ""),
                "subtopic": documents[0].get("subtopic", ""),
                "doc_ids": [d["doc_id"] for d in documents],
                "relevant_quantity_cells": raw.get("relevant_quantity_cells") or [],
                "question": str(raw.get("question", "")), "solution": raw.get("solution"),
                "steps": [str(s) for s in steps], "answer": parse_answer(json.dumps(
                    {"answer": raw.get("answer")}))[0],
                "quantity_cells": value.get("quantity_cells", [])}
        problems = alignment_problems(task, documents)
        if not problems:
            return task
    return None


def llm_independent(generator: TextGenerator, *, max_new_tokens: int = 512
                    ) -> Callable[[Mapping[str, Any], list], float | None]:
    """An independent solution for :func:`~ponder.mathhay.qc.quality_control`: the model
    answers the question from the documents alone (never the cells or the code)."""
    def solve(task: Mapping[str, Any], documents: list) -> float | None:
        out = generator.generate([render_prompt(task["question"], documents)], n=1,
                                 max_new_tokens=max_new_tokens, temperature=0.0)[0][0]
        return parse_answer(out)[0]
    return solve
