"""Evaluation: ask a model each haystack's question, read its JSON answer, score it.

- The prompt (:func:`~ponder.mathhay.haystack.render_prompt`) asks for ``{"reasoning": ...,
  "answer": <number>}``. :func:`parse_answer` is tolerant of code fences, text around the
  object, a number written as a string (``"1,234.5"``, ``"12.5%"``, ``"$3.1 million"`` -> the
  number), single quotes, and of an ``answer: <number>`` line when there is no JSON at all. It
  never guesses from other numbers in the text (the documents' numbers would get credit).
- Correct iff the parsed answer and the gold answer are finite numbers within ``rel_tol``
  (:func:`~ponder.mathhay.qc.consistent`): an answer that could not be read is wrong, never
  "correct because None" (the original's judge rule counted it right).
- An optional judge (any ``(question, gold, response) -> bool``, e.g. :func:`llm_judge` over a
  :class:`~ponder.generation.TextGenerator`) is recorded **separately** (``judge_correct``), not
  OR-ed into ``correct``.
- Resumable: one JSON line per (task, budget, placement) appended to ``results`` as soon as its
  batch is answered; a rerun skips the lines already there.
- :func:`accuracy_table` and :func:`heatmap` report accuracy by task type x budget x placement.

Any :class:`~ponder.generation.TextGenerator` answers: ``TransformersGenerator`` (a local model),
``OpenAIGenerator`` (an OpenAI-compatible server, with its retries, backoff and concurrency),
:class:`CachedGenerator` around either (an on-disk cache of responses), or :class:`OracleReader`
(reads the answer from the documents' text: the harness's own check, 100% by construction).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..figures import pyplot, save
from ..generation import TextGenerator
from .haystack import BudgetTooSmall, build_haystack, check_placement, parse_prompt
from .qc import consistent, independent_answer

__all__ = ["CachedGenerator", "OracleReader", "accuracy_table", "evaluate", "heatmap",
           "llm_judge", "parse_answer"]

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_ANSWER_LINE = re.compile(r"""["']?answer["']?\s*[:=]\s*["']?\s*([-+−]?\s*\$?\s*[\d,]*\.?\d+"""
                          r"""(?:[eE][-+]?\d+)?)""", re.I)


def _number(value: Any) -> float | None:
    """A number from a JSON value: a number, or the first number in a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = re.search(r"[-+−]?\s*\$?\s*(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|"
                      r"[-+−]?\s*\.\d+", value)
        if m:
            text = re.sub(r"[\s$,]", "", m.group()).replace("−", "-")
            try:
                return float(text)
            except ValueError:
                return None
    return None


def _objects(text: str) -> Iterable[Any]:
    """JSON values that start at each ``{`` of the text (also with single quotes swapped)."""
    decoder = json.JSONDecoder()
    for candidate in (text, text.replace("'", '"')):
        for m in re.finditer(r"\{", candidate):
            try:
                value, _ = decoder.raw_decode(candidate, m.start())
            except ValueError:
                continue
            yield value


def parse_answer(text: str) -> tuple[float | None, str | None]:
    """``(answer, reasoning)`` from a model's response; ``(None, None)`` when there is no
    answer to read (see the module doc for what is tolerated)."""
    if not isinstance(text, str):
        return None, None
    pieces = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    for piece in pieces:
        for value in _objects(piece):
            if isinstance(value, dict):
                keys = {str(k).lower(): k for k in value}
                if "answer" in keys:
                    reasoning = value.get(keys.get("reasoning", ""), None)
                    answer = _number(value[keys["answer"]])
                    if answer is not None:
                        return answer, reasoning if isinstance(reasoning, str) else None
    m = _ANSWER_LINE.search(text)
    if m:
        return _number(m.group(1)), None
    return None, None


def llm_judge(generator: TextGenerator, *, max_new_tokens: int = 8) -> Callable[..., bool]:
    """A judge over a text generator: asks whether the response's final answer equals the gold
    answer and reads a yes/no (greedy). Reported apart from the numeric score."""
    def judge(question: str, gold: float, response: str) -> bool:
        prompt = (f"Question: {question}\nReference answer: {gold}\nResponse: {response}\n"
                  "Does the response's final answer match the reference answer (allowing "
                  "rounding)? Reply yes or no.\nReply:")
        out = generator.generate([prompt], n=1, max_new_tokens=max_new_tokens,
                                 temperature=0.0)[0][0]
        return out.strip().lower().startswith("yes")
    return judge


class CachedGenerator:
    """A :class:`~ponder.generation.TextGenerator` that keeps every response on disk (one JSON
    line per response, keyed by a hash of the prompt, the sampling options and ``name``) and
    asks the wrapped generator only for the prompts it has not answered: an interrupted run, or
    a rerun, pays for nothing twice. ``seed`` must be None or one seed per prompt (an int seed
    would make a prompt's completions depend on its neighbours)."""

    def __init__(self, generator: TextGenerator, path: str | os.PathLike, *, name: str = ""):
        if not isinstance(generator, TextGenerator):
            raise TypeError("CachedGenerator: generator must be a TextGenerator, got "
                            f"{type(generator).__name__}")
        self.generator, self.path, self.name = generator, Path(path), str(name)
        self.calls = 0  # prompts sent to the wrapped generator
        self._cache: dict[str, list[str]] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self._cache[entry["key"]] = entry["out"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by an interruption

    def _key(self, prompt: str, seed: int | None, options: Mapping[str, Any]) -> str:
        blob = json.dumps([self.name, prompt, seed, sorted(options.items())], default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def generate(self, prompts: Sequence[str], *, seed: Sequence[int] | None = None,
                 **options: Any) -> list[list[str]]:
        prompts = list(prompts)
        if seed is not None and (isinstance(seed, int) or len(seed) != len(prompts)):
            raise ValueError("CachedGenerator.generate: seed must be None or one int per prompt")
        seeds = list(seed) if seed is not None else [None] * len(prompts)
        keys = [self._key(p, s, options) for p, s in zip(prompts, seeds)]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            sub_seed = None if seed is None else [seeds[i] for i in todo]
            outs = self.generator.generate([prompts[i] for i in todo], seed=sub_seed, **options)
            self.calls += len(todo)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                for i, out in zip(todo, outs):
                    self._cache[keys[i]] = [str(o) for o in out]
                    f.write(json.dumps({"key": keys[i], "out": self._cache[keys[i]]}) + "\n")
        return [list(self._cache[k]) for k in keys]


class OracleReader(TextGenerator):
    """A "model" that answers a MathHay prompt by reading the documents' text
    (:func:`~ponder.mathhay.qc.independent_answer`): what a perfect reader scores, to check the
    harness (haystacks that lost their relevant documents, a broken parser or scorer)."""

    def _sample(self, flat: list[str], *, max_new_tokens: int, temperature: float, top_p: float,
                seed: Any) -> list[str]:
        out = []
        for prompt in flat:
            question, docs = parse_prompt(prompt)
            value = independent_answer(question, docs)
            out.append(f'```json\n{{"reasoning": "read from the documents", "answer": '
                       f'{json.dumps(value)}}}\n```')
        return out


def _key(task_id: str, budget: int, placement: Any) -> str:
    return f"{task_id}|{budget}|{placement}"


def evaluate(benchmark: Mapping[str, list], generator: TextGenerator, *,
             budgets: Sequence[int], placements: Sequence[str | float] = ("first", "middle",
                                                                          "last"),
             results: str | os.PathLike | None = None, tokenizer: Any = None,
             rel_tol: float = 0.01, judge: Callable[[str, float, str], bool] | None = None,
             max_new_tokens: int = 512, batch_size: int = 8, model_name: str = "",
             seed: int = 2024, progress: Callable[[int, int], None] | None = None
             ) -> list[dict[str, Any]]:
    """Evaluate ``generator`` on every task x budget x placement; returns one record each.

    ``results`` (a JSONL path) makes the run resumable; ``tokenizer`` counts the budget (the
    model's own tokenizer, ideally); greedy decoding, ``max_new_tokens`` per answer. Records:
    ``task_id, task_type, budget, placement, n_tokens, response, answer, gold, correct,
    judge_correct`` (None without a judge), ``model``; a task whose relevant documents do not fit
    a budget gets ``skipped`` (the reason) and ``correct=None``, and counts in no accuracy.
    """
    budgets = [int(b) for b in budgets]
    placements = [check_placement("evaluate", p) for p in placements]
    if not (rel_tol > 0 and math.isfinite(rel_tol)):
        raise ValueError(f"evaluate: rel_tol must be a positive number, got {rel_tol!r}")
    done: dict[str, dict] = {}
    path = Path(results) if results is not None else None
    if path is not None and path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                done[_key(rec["task_id"], rec["budget"], rec["placement"])] = rec
            except (ValueError, KeyError, TypeError):
                continue
    jobs = [(task, b, p) for task in benchmark["tasks"] for b in budgets for p in placements]
    todo = [j for j in jobs if _key(j[0]["task_id"], j[1], j[2]) not in done]
    for start in range(0, len(todo), batch_size):
        batch, stacks, new = [], [], []
        for task, b, p in todo[start:start + batch_size]:
            try:
                stack = build_haystack(task, benchmark["documents"], budget=b, placement=p,
                                       tokenizer=tokenizer, seed=seed)
            except BudgetTooSmall as err:  # recorded, left out of the accuracies
                new.append({"task_id": task["task_id"], "task_type": task["task_type"],
                            "budget": b, "placement": p, "n_tokens": None, "response": None,
                            "answer": None, "gold": task["answer"], "correct": None,
                            "judge_correct": None, "model": model_name, "skipped": str(err)})
                continue
            batch.append((task, b, p))
            stacks.append(stack)
        outs = generator.generate([s["prompt"] for s in stacks], n=1,
                                  max_new_tokens=max_new_tokens,
                                  temperature=0.0) if stacks else []
        for (task, b, p), stack, out in zip(batch, stacks, outs):
            response = str(out[0])
            answer, _ = parse_answer(response)
            gold = task["answer"]
            new.append({"task_id": task["task_id"], "task_type": task["task_type"], "budget": b,
                        "placement": p, "n_tokens": stack["n_tokens"], "response": response,
                        "answer": answer, "gold": gold,
                        "correct": consistent(answer, gold, rel_tol=rel_tol),
                        "judge_correct": (bool(judge(task["question"], gold, response))
                                          if judge is not None else None),
                        "model": model_name})
        for rec in new:
            done[_key(rec["task_id"], rec["budget"], rec["placement"])] = rec
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                for rec in new:
                    f.write(json.dumps(rec, allow_nan=True) + "\n")
        if progress is not None:
            progress(min(start + batch_size, len(todo)), len(todo))
    return [done[_key(t["task_id"], b, p)] for t, b, p in jobs]


def _fmt_placement(p: Any) -> str:
    return p if isinstance(p, str) else f"p{p:g}"


def accuracy_table(records: Iterable[Mapping[str, Any]], *, field: str = "correct") -> str:
    """A Markdown table: one row per task type (and "all"), one column per budget x placement,
    each cell ``accuracy% (n)``."""
    records = list(records)
    order = list(dict.fromkeys(_fmt_placement(r["placement"]) for r in records))
    cols = sorted({(r["budget"], _fmt_placement(r["placement"])) for r in records},
                  key=lambda c: (c[0], order.index(c[1])))
    types = sorted({r["task_type"] for r in records})
    cells: dict[tuple, list[bool]] = defaultdict(list)
    for r in records:
        value = r.get(field)
        if value is None:
            continue
        col = (r["budget"], _fmt_placement(r["placement"]))
        cells[(r["task_type"], col)].append(bool(value))
        cells[("all", col)].append(bool(value))
    head = "| task type | " + " | ".join(f"{b} {p}" for b, p in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for t in [*types, "all"]:
        row = []
        for col in cols:
            v = cells.get((t, col), [])
            row.append(f"{100 * sum(v) / len(v):.1f}% ({len(v)})" if v else "-")
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def heatmap(records: Iterable[Mapping[str, Any]], path: str | os.PathLike, *,
            field: str = "correct", title: str = "MathHay accuracy") -> Path:
    """A PNG heatmap of accuracy, placement (rows) x budget (columns), over all task types."""
    plt = pyplot("heatmap")
    records = [r for r in records if r.get(field) is not None]
    budgets = sorted({r["budget"] for r in records})
    placements = list(dict.fromkeys(_fmt_placement(r["placement"]) for r in records))
    grid = [[math.nan] * len(budgets) for _ in placements]
    for i, p in enumerate(placements):
        for j, b in enumerate(budgets):
            v = [bool(r[field]) for r in records
                 if r["budget"] == b and _fmt_placement(r["placement"]) == p]
            if v:
                grid[i][j] = 100.0 * sum(v) / len(v)
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(budgets), 1.0 + 0.6 * len(placements)))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(budgets)), [f"{b:,}" for b in budgets])
    ax.set_yticks(range(len(placements)), placements)
    ax.set_xlabel("token budget")
    ax.set_ylabel("placement")
    for i in range(len(placements)):
        for j in range(len(budgets)):
            if not math.isnan(grid[i][j]):
                ax.text(j, i, f"{grid[i][j]:.0f}", ha="center", va="center",
                        color="white" if grid[i][j] < 60 else "black")
    fig.colorbar(im, ax=ax, label="accuracy %")
    ax.set_title(title)
    return save(fig, path)
