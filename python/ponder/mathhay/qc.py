"""Quality control: a task is kept when its ``solve()``, run in the sandbox, and an independent
solution agree.

The independent solution never sees the generator's quantity cells (the original let its
verifier see them, so a cell that disagreed with its document went unnoticed): for the synthetic
tasks, :func:`independent_answer` reads the quantities back from the documents' *text* and
computes the answer with its own formulas; for generated tasks, any callable ``(task, documents)
-> number`` can stand in (an LLM that answers from the documents, say).

Consistent iff both values are finite real numbers and ``math.isclose`` (``rel_tol``): ``None``,
NaN and infinities are never consistent (the original counted ``None == None`` and ``-inf ==
-inf`` as agreement). The stored ``answer`` must also match ``solve()`` (the alignment check).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .sandbox import SandboxLimits, is_number, run_solve
from .synthetic import METRICS, TEMPLATES

__all__ = ["consistent", "independent_answer", "quality_control", "read_quantities"]


def consistent(a: Any, b: Any, *, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Both finite real numbers (not bool) and close. ``None``, NaN, inf: never."""
    return is_number(a) and is_number(b) and math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)


_PHRASES = sorted((m.phrase for m in METRICS), key=len, reverse=True)
_YEAR = re.compile(r"\b(19|20)\d\d\b")
_NUMBER = re.compile(r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")


def _company_of(document: Mapping[str, Any]) -> str:
    """The company a synthetic document is about, from its title (``"X: a company profile"``)."""
    return str(document.get("title", "")).split(":")[0].strip()


def read_quantities(document: Mapping[str, Any]) -> dict[tuple[str, str, int], float]:
    """``(company, metric phrase, year) -> value`` read from a document's text: each sentence
    naming a metric and a year gives the first other number in it."""
    company = _company_of(document)
    found = {}
    for sentence in re.split(r"(?<=[.!?])\s+", str(document.get("text", ""))):
        phrase = next((p for p in _PHRASES if p in sentence), None)
        year = _YEAR.search(sentence)
        if phrase is None or year is None:
            continue
        values = [m.group() for m in _NUMBER.finditer(sentence) if m.group() != year.group()]
        if values:
            found[(company, phrase, int(year.group()))] = float(values[0].replace(",", ""))
    return found


def _question_pattern(question: str) -> re.Pattern:
    """A template's question as a regex: ``{C0}`` a company, ``{m}`` a metric, ``{Y0}`` a year;
    a placeholder used twice must match the same text."""
    out, seen = [], set()
    for part in re.split(r"(\{\w+\})", question):
        if not (part.startswith("{") and part.endswith("}")):
            out.append(re.escape(part))
            continue
        name = part[1:-1]
        if name in seen:
            out.append(f"(?P={name})")
            continue
        seen.add(name)
        body = {"m": "|".join(map(re.escape, _PHRASES))}.get(name, r"\d{4}" if name[0] == "Y"
                                                               else r"[A-Z][\w ]+?")
        out.append(f"(?P<{name}>{body})")
    return re.compile("^" + "".join(out) + "$")


_PATTERNS = [(t.name, _question_pattern(t.question)) for t in TEMPLATES]

# The independent formulas: written here from the questions' meaning, not taken from the
# generator's templates (whose code is what is being checked). Arguments: the quantities in the
# order the references below list them.
_FORMULAS: dict[str, tuple[tuple[tuple[str, str], ...], Callable[..., float]]] = {
    "difference": ((("C0", "Y1"), ("C0", "Y0")), lambda later, earlier: later - earlier),
    "total": ((("C0", "Y0"), ("C0", "Y1")), lambda a, b: a + b),
    "percent_change": ((("C0", "Y0"), ("C0", "Y1")), lambda old, new: 100.0 * (new / old - 1.0)),
    "average3": ((("C0", "Y0"), ("C0", "Y1"), ("C0", "Y2")), lambda *v: sum(v) / len(v)),
    "share_of_year": ((("C0", "Y0"), ("C0", "Y1"), ("C0", "Y2")),
                      lambda a, b, base: 100.0 * (a + b) / base),
    "acceleration": ((("C0", "Y0"), ("C0", "Y1"), ("C0", "Y2")),
                     lambda a, b, c: a - 2.0 * b + c),
    "gap_two": ((("C0", "Y0"), ("C1", "Y0")), lambda a, b: a - b),
    "combined_two": ((("C0", "Y0"), ("C1", "Y0")), lambda a, b: a + b),
    "percent_higher": ((("C0", "Y0"), ("C1", "Y0")), lambda a, b: 100.0 * (a / b - 1.0)),
    "average_two": ((("C0", "Y0"), ("C1", "Y0")), lambda a, b: 0.5 * (a + b)),
    "share_of_other": ((("C0", "Y0"), ("C0", "Y1"), ("C1", "Y0")),
                       lambda a, b, base: 100.0 * (a + b) / base),
    "share_of_third": ((("C0", "Y0"), ("C1", "Y0"), ("C2", "Y0")),
                       lambda a, b, base: 100.0 * (a + b) / base),
    "above_average": ((("C0", "Y0"), ("C1", "Y0"), ("C2", "Y0")),
                      lambda a, b, c: (2.0 * a - b - c) / 3.0),
}


def independent_answer(question: str, documents: Iterable[Mapping[str, Any]]) -> float | None:
    """The answer to a synthetic question from the documents' text alone (no quantity cells, no
    solution code); None when the question is not understood or a quantity is not found."""
    quantities: dict[tuple[str, str, int], float] = {}
    for doc in documents:
        quantities.update(read_quantities(doc))
    for name, pattern in _PATTERNS:
        match = pattern.match(question.strip())
        if match is None:
            continue
        refs, formula = _FORMULAS[name]
        try:
            values = [quantities[(match.group(c), match.group("m"), int(match.group(y)))]
                      for c, y in refs]
            return float(formula(*values))
        except (KeyError, ZeroDivisionError, OverflowError):
            return None
    return None


def quality_control(tasks: Iterable[Mapping[str, Any]], documents: Iterable[Mapping[str, Any]],
                    *, independent: Callable[[Mapping, list], Any] | None = None,
                    rel_tol: float = 1e-6, limits: SandboxLimits | None = None,
                    progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Check each task: ``solve()`` in the sandbox, the independent solution, the stored answer.

    Parameters
    ----------
    tasks, documents : iterables of dicts
        The benchmark (original schema); a task's documents are found by its ``doc_ids``.
    independent : callable, optional
        ``(task, its documents) -> number``; default :func:`independent_answer` on the
        question and the documents' text.
    rel_tol : float
        The relative tolerance of :func:`consistent`.

    Returns
    -------
    list of dict
        One per task: ``task_id``, ``solve_value``, ``independent_value``, ``consistent``,
        ``reason`` (why not, or None), ``sandbox_seconds``.
    """
    by_id = {d["doc_id"]: d for d in documents}
    independent = independent or (lambda task, docs: independent_answer(task["question"], docs))
    reports = []
    for k, task in enumerate(tasks):
        docs = [by_id[i] for i in task["doc_ids"] if i in by_id]
        start = time.monotonic()
        result = run_solve(task["solution"], limits=limits)
        seconds = time.monotonic() - start
        solve_value = result.value if result.ok else None
        other = independent(task, docs)
        reason = None
        if not result.ok:
            reason = f"solve() failed in the sandbox: {result.error}"
        elif not is_number(solve_value):
            reason = f"solve() returned {solve_value!r}, not a finite number"
        elif not is_number(other):
            reason = f"the independent solution gave {other!r}, not a finite number"
        elif not consistent(solve_value, other, rel_tol=rel_tol):
            reason = f"solve() gave {solve_value!r}, the independent solution {other!r}"
        elif not consistent(solve_value, task.get("answer"), rel_tol=rel_tol):
            reason = f"the stored answer {task.get('answer')!r} is not solve()'s {solve_value!r}"
        reports.append({"task_id": task["task_id"], "solve_value": solve_value,
                        "independent_value": other, "consistent": reason is None,
                        "reason": reason, "sandbox_seconds": seconds})
        if progress is not None:
            progress(k + 1)
    return reports
