"""The offline MathHay generator: documents holding quantities, and tasks of all seven types.

No network and no language model: documents about invented companies (a company, a city, three
metrics over four years: twelve quantity cells, each written as one sentence among business
prose) and tasks from templates, each with its question, its ``solve()`` code, its steps and its
answer, in the original schema:

- a document: ``{doc_id, topic, subtopic, title, text, quantity_cells: [{object,
  numerical_value, date, location, context}]}``;
- a task: ``{task_id, task_type, template, doc_ids, relevant_quantity_cells, question, solution:
  "def solve(): ...", steps: [str], answer}``.

Task types (steps x documents): ``sssd``, ``2ssd``, ``3ssd`` (one document; one, two or three
steps), ``ss2d``, ``2s2d``, ``3s2d`` (two documents) and ``3s3d`` (three). A multi-document task
asks about one metric of several companies, so every company's document is a likely-looking
distractor for the others; all documents share the same four years for the same reason.

The generator computes ``answer`` with its own arithmetic; it never executes ``solution``
(quality control runs that in the sandbox, :mod:`ponder.mathhay.qc`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Callable

from ..validation import check_int

__all__ = ["METRICS", "TASK_TYPES", "TEMPLATES", "document_passes_filters", "generate_benchmark",
           "generate_documents"]

TASK_TYPES = ("sssd", "2ssd", "3ssd", "ss2d", "2s2d", "3s2d", "3s3d")
TOPIC = "Financial Market Analysis"


@dataclass(frozen=True)
class Metric:
    key: str          # a variable-name stem
    phrase: str       # as the text and the questions write it
    unit: str
    low: float
    high: float
    decimals: int


METRICS = (
    Metric("revenue", "annual revenue", "million dollars", 40.0, 4000.0, 1),
    Metric("profit", "net profit", "million dollars", 3.0, 600.0, 1),
    Metric("headcount", "workforce", "employees", 120, 60000, 0),
    Metric("shipments", "shipments", "thousand units", 15.0, 900.0, 1),
    Metric("outlets", "retail outlets", "outlets", 8, 950, 0),
    Metric("exports", "export sales", "million dollars", 10.0, 1500.0, 1),
    Metric("rnd", "research spending", "million dollars", 2.0, 300.0, 1),
)
METRIC_BY_PHRASE = {m.phrase: m for m in METRICS}
CITIES = ("Lyon", "Porto", "Osaka", "Leeds", "Tampere", "Graz", "Cordoba", "Valencia", "Gdansk",
          "Brno", "Malmo", "Aarhus", "Bilbao", "Turin", "Ghent", "Utrecht", "Dresden", "Kobe",
          "Curitiba", "Adelaide", "Halifax", "Tucson", "Dayton", "Boise", "Perth", "Quito")
_SYLLABLES = ("nor", "vex", "tal", "mira", "cor", "dan", "bel", "lum", "quin", "sar", "tor",
              "ven", "gal", "rix", "pol", "mon", "ka", "zen", "ori", "dex", "fal", "hel", "ism",
              "jor", "lek", "nav", "pra", "ros", "sel", "tek", "ulm", "var", "wen", "xan", "yor")
_SUFFIXES = ("Industries", "Holdings", "Systems", "Group", "Labs", "Logistics", "Foods",
             "Energy", "Textiles", "Motors", "Instruments", "Pharma")
YEARS = (2019, 2020, 2021, 2022)

# The sentences that carry a quantity. Each names the company, the metric, the year and the value
# (the independent solver reads them back from the text alone).
_CELL_SENTENCES = (
    "In {year}, the {phrase} of {company} stood at {value} {unit}.",
    "{company} reported {phrase} of {value} {unit} for {year}.",
    "For the year {year}, {company} recorded {phrase} of {value} {unit}.",
)
# Prose around them, free of metric phrases; some carry numbers that are not quantity cells.
_FILLER = (
    "{company} was founded in {city} by a small group of engineers and merchants.",
    "The company keeps its head office near the old harbour of {city}.",
    "Analysts describe {company} as a careful operator that prefers steady growth to bold bets.",
    "Its managers meet every quarter to review suppliers, prices and delivery times.",
    "The firm sells to customers in {n1} countries through a network of partners.",
    "Local newspapers in {city} often cover the company's community projects.",
    "A new warehouse on the edge of {city} opened after {n2} months of construction.",
    "The board includes {n3} members, two of whom joined from competing firms.",
    "{company} invests in training programmes for young technicians.",
    "Its products are known for their long service life and simple repairs.",
    "The company has faced criticism over the noise from its delivery trucks.",
    "Several industry awards have recognised the design of its main product line.",
    "Management expects demand to follow the broader economic cycle in the region.",
    "Competition in the sector has increased as foreign firms entered the market.",
    "The firm publishes a yearly report that describes its goals and its risks.",
    "Customers praise the speed of its support desk and its clear contracts.",
    "{company} leases part of its fleet instead of owning every vehicle.",
    "The company's founders still hold a minority stake in the business.",
    "Plans for a second site in {city} were announced at a press event.",
    "Its suppliers are spread across {n4} regions to limit the risk of shortages.",
    "Observers note that the firm rarely comments on rumours about acquisitions.",
    "The company sponsors a football club and a music festival in {city}.",
    "Staff surveys show high satisfaction with flexible working hours.",
    "A recent audit found no major issues in the company's accounts.",
    "The firm's website lists {n5} product families and detailed technical sheets.",
    "Energy costs remain one of the largest items in its operating budget.",
    "{company} cooperates with the technical university of {city} on several projects.",
    "Its logistics team redesigned the delivery routes to cut travel time.",
    "The company avoided layoffs during the last downturn by reducing overtime.",
    "Investors follow its quarterly statements closely for signs of change.",
)
_TITLE = "{company}: a company profile ({city})"


def _company_names(rng: random.Random, n: int, taken: set[str]) -> list[str]:
    names = []
    while len(names) < n:
        stem = "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 2, 3))))
        name = f"{stem.capitalize()} {rng.choice(_SUFFIXES)}"
        if name not in taken:
            taken.add(name)
            names.append(name)
    return names


def format_value(value: float, decimals: int) -> str:
    """How a quantity is written: thousands separated by commas (``12,345.6``)."""
    return f"{value:,.{decimals}f}"


def _draw_value(rng: random.Random, metric: Metric) -> float:
    v = rng.uniform(metric.low, metric.high)
    return round(v, metric.decimals) if metric.decimals else float(round(v))


def generate_documents(n: int, *, seed: int = 0, start: int = 0,
                       taken: set[str] | None = None, metrics_per_document: int = 3,
                       filler_sentences: int = len(_FILLER)) -> list[dict[str, Any]]:
    """``n`` documents, each about a company of its own: twelve quantity cells (three metrics x
    four years) among about 400 words of prose, by default (these pass the original's filters,
    :func:`document_passes_filters`).

    ``start`` numbers the ids (``doc-00000``, ...); ``taken`` holds the company names already in
    use (updated in place) so that successive calls never reuse a company.
    ``metrics_per_document`` (1 to 7) and ``filler_sentences`` (0 to 30) make shorter documents,
    for models with short contexts (the toy models read characters).
    """
    where = "generate_documents"
    check_int(where, "n", n, minimum=0)
    check_int(where, "metrics_per_document", metrics_per_document, minimum=1, maximum=len(METRICS))
    check_int(where, "filler_sentences", filler_sentences, minimum=0, maximum=len(_FILLER))
    rng = random.Random(f"mathhay-docs;{seed};{start}")
    taken = set() if taken is None else taken
    docs = []
    for i, company in enumerate(_company_names(rng, n, taken)):
        city = rng.choice(CITIES)
        metrics = rng.sample(METRICS, metrics_per_document)
        cells, cell_sentences = [], []
        for metric in metrics:
            for year in YEARS:
                value = _draw_value(rng, metric)
                sentence = rng.choice(_CELL_SENTENCES).format(
                    year=year, phrase=metric.phrase, company=company, unit=metric.unit,
                    value=format_value(value, metric.decimals))
                cells.append({"object": f"{company} {metric.phrase} ({metric.unit})",
                              "numerical_value": value, "date": str(year), "location": city,
                              "context": sentence, "metric": metric.phrase})
                cell_sentences.append(sentence)
        fill = {"company": company, "city": city, "n1": rng.randint(3, 40),
                "n2": rng.randint(6, 30), "n3": rng.randint(5, 12), "n4": rng.randint(2, 9),
                "n5": rng.randint(4, 60)}
        filler = [s.format(**fill) for s in rng.sample(_FILLER, filler_sentences)]
        # Quantity sentences spread among the prose, in order of the draw, not grouped.
        sentences = filler[:]
        for sentence in cell_sentences:
            sentences.insert(rng.randint(0, len(sentences)), sentence)
        paragraphs = [" ".join(sentences[k:k + 7]) for k in range(0, len(sentences), 7)]
        docs.append({"doc_id": f"doc-{start + i:05d}", "topic": TOPIC,
                     "subtopic": f"Company performance: {metrics[0].phrase}",
                     "title": _TITLE.format(company=company, city=city),
                     "company": company, "location": city,
                     "text": "\n\n".join(paragraphs), "quantity_cells": cells})
    return docs


_NUMBER = re.compile(r"(?<![\w.,])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])")
_YEAR = re.compile(r"^(1[89]|20)\d\d$")


def document_passes_filters(text: str, *, min_numbers: int = 11, min_sentences: int = 10,
                            min_words: int = 400) -> bool:
    """The original's document filters: more than 10 distinct numbers that are not years, at
    least 10 sentences and at least 400 words."""
    numbers = {m.group().replace(",", "") for m in _NUMBER.finditer(text)}
    numbers = {x for x in numbers if not _YEAR.match(x)}
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    return (len(numbers) >= min_numbers and len(sentences) >= min_sentences
            and len(text.split()) >= min_words)


# ----- task templates -----

@dataclass(frozen=True)
class Template:
    """A task template. ``refs``: ``(document index, year index)`` of each quantity, all of one
    metric; ``question``: format string over ``{C0..C2}`` (companies), ``{m}`` (the metric
    phrase) and ``{Y0..Y2}`` (years); ``lines``: the ``solve()`` body after the quantities,
    ``(variable, expression over v0, v1, ... and earlier variables)``, one line a step;
    ``answer``: the generator's own arithmetic."""

    name: str
    task_type: str
    refs: tuple[tuple[int, int], ...]
    question: str
    lines: tuple[tuple[str, str], ...]
    answer: Callable[..., float]


TEMPLATES = (
    Template("difference", "sssd", ((0, 0), (0, 1)),
             "What was the difference between {C0}'s {m} in {Y1} and its {m} in {Y0}?",
             (("difference", "v1 - v0"),), lambda a, b: b - a),
    Template("total", "sssd", ((0, 0), (0, 1)),
             "What was the total {m} of {C0} in {Y0} and {Y1} combined?",
             (("total", "v0 + v1"),), lambda a, b: a + b),
    Template("percent_change", "2ssd", ((0, 0), (0, 1)),
             "By what percentage did {C0}'s {m} change from {Y0} to {Y1}?",
             (("change", "v1 - v0"), ("percentage", "change / v0 * 100")),
             lambda a, b: (b - a) / a * 100),
    Template("average3", "2ssd", ((0, 0), (0, 1), (0, 2)),
             "What was the average {m} of {C0} over {Y0}, {Y1} and {Y2}?",
             (("total", "v0 + v1 + v2"), ("average", "total / 3")),
             lambda a, b, c: (a + b + c) / 3),
    Template("share_of_year", "3ssd", ((0, 0), (0, 1), (0, 2)),
             "What was {C0}'s {m} in {Y0} and {Y1} combined, as a percentage of its {m} in {Y2}?",
             (("total", "v0 + v1"), ("ratio", "total / v2"), ("percentage", "ratio * 100")),
             lambda a, b, c: (a + b) / c * 100),
    Template("acceleration", "3ssd", ((0, 0), (0, 1), (0, 2)),
             "How much larger was the change in {C0}'s {m} from {Y1} to {Y2} than its change "
             "from {Y0} to {Y1}?",
             (("first_change", "v1 - v0"), ("second_change", "v2 - v1"),
              ("gap", "second_change - first_change")), lambda a, b, c: (c - b) - (b - a)),
    Template("gap_two", "ss2d", ((0, 0), (1, 0)),
             "What was the difference between {C0}'s {m} in {Y0} and {C1}'s {m} in {Y0}?",
             (("difference", "v0 - v1"),), lambda a, b: a - b),
    Template("combined_two", "ss2d", ((0, 0), (1, 0)),
             "What was the combined {m} of {C0} and {C1} in {Y0}?",
             (("total", "v0 + v1"),), lambda a, b: a + b),
    Template("percent_higher", "2s2d", ((0, 0), (1, 0)),
             "By what percentage was {C0}'s {m} in {Y0} higher than {C1}'s {m} in {Y0}?",
             (("difference", "v0 - v1"), ("percentage", "difference / v1 * 100")),
             lambda a, b: (a - b) / b * 100),
    Template("average_two", "2s2d", ((0, 0), (1, 0)),
             "What was the average {m} of {C0} and {C1} in {Y0}?",
             (("total", "v0 + v1"), ("average", "total / 2")), lambda a, b: (a + b) / 2),
    Template("share_of_other", "3s2d", ((0, 0), (0, 1), (1, 0)),
             "What was {C0}'s {m} in {Y0} and {Y1} combined, as a percentage of {C1}'s {m} in "
             "{Y0}?",
             (("total", "v0 + v1"), ("ratio", "total / v2"), ("percentage", "ratio * 100")),
             lambda a, b, c: (a + b) / c * 100),
    Template("share_of_third", "3s3d", ((0, 0), (1, 0), (2, 0)),
             "What was the combined {m} of {C0} and {C1} in {Y0}, as a percentage of {C2}'s {m} "
             "in {Y0}?",
             (("total", "v0 + v1"), ("ratio", "total / v2"), ("percentage", "ratio * 100")),
             lambda a, b, c: (a + b) / c * 100),
    Template("above_average", "3s3d", ((0, 0), (1, 0), (2, 0)),
             "By how much did {C0}'s {m} in {Y0} exceed the average {m} of {C0}, {C1} and {C2} in "
             "{Y0}?",
             (("total", "v0 + v1 + v2"), ("average", "total / 3"), ("excess", "v0 - average")),
             lambda a, b, c: a - (a + b + c) / 3),
)
_BY_TYPE = {t: [x for x in TEMPLATES if x.task_type == t] for t in TASK_TYPES}


def _solution(template: Template, names: list[str], cells: list[dict]) -> tuple[str, list[str]]:
    """The ``solve()`` source and its steps, in the original's style."""
    lines = ["def solve():"]
    for k, (name, cell) in enumerate(zip(names, cells)):
        lines.append(f"    # {cell['object']}, {cell['date']}")
        lines.append(f"    {name} = {cell['numerical_value']!r}")
    rename = {f"v{k}": name for k, name in enumerate(names)}
    steps = []
    for var, expr in template.lines:
        expr = re.sub(r"\bv\d\b", lambda m: rename[m.group()], expr)
        lines.append(f"    {var} = {expr}")
        steps.append(f"{var} = {expr}")
    lines.append(f"    return {template.lines[-1][0]}")
    return "\n".join(lines) + "\n", steps


def _make_task(rng: random.Random, template: Template, docs: list[dict], task_id: str,
               by_metric: dict[str, list[dict]]) -> dict[str, Any]:
    n_docs = 1 + max(d for d, _ in template.refs)
    metric = rng.choice([m for m, ds in by_metric.items() if len(ds) >= n_docs])
    chosen = rng.sample(by_metric[metric], n_docs)
    n_years = 1 + max(y for _, y in template.refs)
    years = sorted(rng.sample(YEARS, n_years))
    cells, names = [], []
    m = METRIC_BY_PHRASE[metric]
    for d, y in template.refs:
        cell = next(c for c in chosen[d]["quantity_cells"]
                    if c["metric"] == metric and c["date"] == str(years[y]))
        cells.append(cell)
        who = re.sub(r"\W+", "_", chosen[d]["company"].split()[0].lower())
        names.append(f"{who}_{m.key}_{years[y]}")
    fields = {f"C{k}": doc["company"] for k, doc in enumerate(chosen)}
    fields.update({f"Y{k}": y for k, y in enumerate(years)})
    question = template.question.format(m=metric, **fields)
    solution, steps = _solution(template, names, cells)
    answer = template.answer(*[c["numerical_value"] for c in cells])
    return {"task_id": task_id, "task_type": template.task_type, "template": template.name,
            "topic": TOPIC, "subtopic": chosen[0]["subtopic"],
            "doc_ids": [d["doc_id"] for d in chosen], "relevant_quantity_cells": cells,
            "question": question, "solution": solution, "steps": steps, "answer": answer}


def generate_benchmark(*, tasks_per_type: int = 4, n_documents: int = 60, seed: int = 0,
                       task_types: tuple[str, ...] = TASK_TYPES, metrics_per_document: int = 3,
                       filler_sentences: int = len(_FILLER)) -> dict[str, list[dict]]:
    """Documents and tasks: ``tasks_per_type`` tasks of each type (templates taken in turn),
    over ``n_documents`` documents; the documents no task uses serve as haystack filler, and
    :func:`generate_documents` makes more on demand.

    ``metrics_per_document`` and ``filler_sentences``: as :func:`generate_documents`.

    Returns ``{"documents": [...], "tasks": [...]}`` (the original schema, see the module doc).
    """
    where = "generate_benchmark"
    check_int(where, "tasks_per_type", tasks_per_type, minimum=1)
    check_int(where, "n_documents", n_documents, minimum=3)
    unknown = [t for t in task_types if t not in TASK_TYPES]
    if unknown or not task_types:
        raise ValueError(f"{where}: task_types must be a non-empty subset of {TASK_TYPES}, got "
                         f"{task_types!r}")
    docs = generate_documents(n_documents, seed=seed, metrics_per_document=metrics_per_document,
                              filler_sentences=filler_sentences)
    by_metric: dict[str, list[dict]] = {}
    for doc in docs:
        for phrase in dict.fromkeys(c["metric"] for c in doc["quantity_cells"]):
            by_metric.setdefault(phrase, []).append(doc)
    rng = random.Random(f"mathhay-tasks;{seed}")
    tasks = []
    for task_type in task_types:
        templates = _BY_TYPE[task_type]
        for k in range(tasks_per_type):
            template = templates[k % len(templates)]
            tasks.append(_make_task(rng, template, docs, f"{task_type}-{k:04d}", by_metric))
    return {"documents": docs, "tasks": tasks}
