"""BOLT: bootstrapping long chain-of-thought from an instruct model (arXiv 2502.03860).

There is no official code or data; every choice the paper leaves open is a parameter here, with
its default stated (docs/bolt.md lists them).

- **Stage 1, bootstrapping** (:func:`bootstrap`, then :func:`select_best`): an in-context prompt
  (:class:`BoltPromptBuilder`) puts ``m`` of the ``N`` hand-written examples (query, long internal
  thought, external solution; :func:`load_examples`) before each query; ``n`` samples per query
  come from a :class:`ponder.generation.TextGenerator`; a format filter (:class:`BoltFormat`)
  keeps responses whose thought and solution are both present, delimited once each and not
  empty; a reward model scores the solution (:class:`SequenceClassifierReward`,
  :class:`VerifierReward`, or any callable); a percentile filter drops low scores; the best
  sample of each query is kept. The samples go to a resumable JSONL file, the selection to a
  second one, with the count of what each filter kept and dropped (:class:`BootstrapStats`).
- **Stage 2** (:func:`sft`): TRL's ``SFTTrainer`` on query -> thought + solution, the loss on the
  completion only.
- **Stage 3** (:func:`online_dpo`): a loop of ``n`` samples per query at temperature about 1,
  rewards, the best vs the worst as a preference pair, and one pass of TRL's stable
  ``DPOTrainer`` (``beta`` 0.1), repeated for a few iterations. (TRL's ``OnlineDPOTrainer`` is
  experimental and draws two samples per prompt.)

The thought and the solution are written between delimiters::

    <thought>
    ...the long internal thought...
    </thought>
    <solution>
    ...the external solution...
    </solution>

(:data:`DEFAULT_FORMAT`; the toy world uses its own, from its alphabet.)
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..records import append_line, open_append, read_jsonl, repair_tail
from ..validation import check_int, check_real
from .sft import quiet, run_trainer, sft_trainer, trl_args

__all__ = [
    "DEFAULT_FORMAT",
    "BoltExample",
    "BoltFormat",
    "BoltPromptBuilder",
    "BootstrapStats",
    "DPOIteration",
    "ParsedResponse",
    "SequenceClassifierReward",
    "VerifierReward",
    "bootstrap",
    "load_examples",
    "make_preference_pairs",
    "online_dpo",
    "policy_prompt",
    "score",
    "select_best",
    "sft",
]


# --------------------------------------------------------------------------------------------
# The response format
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedResponse:
    """A response split by :meth:`BoltFormat.parse`: ``ok`` with its two parts, or the reason it
    fails the format filter (``thought`` and ``solution`` are then empty)."""

    thought: str = ""
    solution: str = ""
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class BoltFormat:
    """The delimiters of a long-thought response: ``thought_open + thought + thought_close +
    solution_open + solution + solution_close``.

    ``solution_open`` and ``solution_close`` may be empty: the solution is then everything after
    the thought (up to ``solution_close`` if given). The paper does not publish its delimiters, so
    these are parameters (unconfirmed); the defaults are XML-like tags.
    """

    thought_open: str = "<thought>\n"
    thought_close: str = "\n</thought>\n"
    solution_open: str = "<solution>\n"
    solution_close: str = "\n</solution>"

    def __post_init__(self):
        for name in ("thought_open", "thought_close"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"BoltFormat: {name} must be a non-blank str, got {value!r}")
        for name in ("solution_open", "solution_close"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"BoltFormat: {name} must be a str")

    def render(self, thought: str, solution: str) -> str:
        """The response text of a thought and a solution."""
        return (self.thought_open + thought + self.thought_close + self.solution_open + solution
                + self.solution_close)

    def parse(self, text: str) -> ParsedResponse:
        """Split ``text`` into thought and solution, or say why it fails the format filter.

        Well formed means: ``text`` (leading white space aside) starts with ``thought_open``;
        ``thought_open`` and ``thought_close`` each occur exactly once, in that order; the
        thought between them is not blank; then comes ``solution_open`` (if not empty), a
        solution that is not blank, and ``solution_close`` (if not empty; anything after it is
        ignored: a model may run on after its answer). Reasons: ``"no_thought_open"``,
        ``"repeated_delimiter"``, ``"no_thought_close"``, ``"empty_thought"``,
        ``"no_solution_open"``, ``"no_solution_close"``, ``"empty_solution"``.
        """
        if not isinstance(text, str):
            raise TypeError(f"BoltFormat.parse: text must be a str, got {type(text).__name__}")
        body = text.lstrip()
        if not body.startswith(self.thought_open):
            return ParsedResponse(reason="no_thought_open")
        body = body[len(self.thought_open):]
        end = body.find(self.thought_close)
        if end < 0:
            return ParsedResponse(reason="no_thought_close")
        thought, rest = body[:end], body[end + len(self.thought_close):]
        if self.thought_open in thought or self.thought_open.strip() in rest \
                or self.thought_close.strip() in rest:
            return ParsedResponse(reason="repeated_delimiter")
        if not thought.strip():
            return ParsedResponse(reason="empty_thought")
        if self.solution_open:
            rest = rest.lstrip()
            if not rest.startswith(self.solution_open.lstrip()):
                return ParsedResponse(reason="no_solution_open")
            rest = rest[len(self.solution_open.lstrip()):]
        if self.solution_close:
            close = rest.find(self.solution_close.strip())
            if close < 0:
                return ParsedResponse(reason="no_solution_close")
            rest = rest[:close]
        if not rest.strip():
            return ParsedResponse(reason="empty_solution")
        return ParsedResponse(thought=thought.strip("\n"), solution=rest.strip())


DEFAULT_FORMAT = BoltFormat()


# --------------------------------------------------------------------------------------------
# In-context examples and prompts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoltExample:
    """One hand-written in-context example: a query, its long internal thought, its external
    solution."""

    query: str
    thought: str
    solution: str


def load_examples(source: str | Path | None = None) -> list[BoltExample]:
    """The in-context examples: the ``N = 10`` shipped with ponder for general instruct models
    (``ponder/train/bolt_examples.json``, written for ponder), or a JSON / JSONL file of
    ``{"query", "thought", "solution"}`` objects."""
    if source is None:
        text = resources.files("ponder.train").joinpath("bolt_examples.json").read_text()
        where = "ponder/train/bolt_examples.json"
    else:
        where = str(source)
        text = Path(source).read_text()
    stripped = text.lstrip()
    rows = json.loads(text) if stripped.startswith("[") else \
        [json.loads(line) for line in text.splitlines() if line.strip()]
    out = []
    for i, row in enumerate(rows):
        missing = [k for k in ("query", "thought", "solution") if not str(row.get(k, "")).strip()]
        if missing:
            raise ValueError(f"load_examples: example {i} of {where} lacks {', '.join(missing)}")
        out.append(BoltExample(row["query"], row["thought"], row["solution"]))
    if not out:
        raise ValueError(f"load_examples: {where} holds no examples")
    return out


DEFAULT_INSTRUCTION = (
    "Answer each query in two parts. First think it through at length inside the thought "
    "delimiters: restate what is asked, work step by step, look for mistakes and fix them. "
    "Then write the final answer for the reader inside the solution delimiters.")


def _bos_free(tokenizer, text: str) -> str:
    """``text`` without a leading bos token string when the tokenizer adds one itself (a chat
    template that writes ``<s>`` would otherwise give two)."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos):
        ids = tokenizer("x")["input_ids"]
        if ids and ids[0] == tokenizer.bos_token_id:
            return text[len(bos):]
    return text


def _has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def policy_prompt(query: str, tokenizer=None, *, template: str = "{query}",
                  use_chat_template: bool | None = None) -> str:
    """What the policy sees for ``query`` after bootstrapping (SFT, DPO, evaluation): the query
    as a user turn of the tokenizer's chat template (with the generation prompt) where it has one,
    else ``template.format(query=query)``. ``use_chat_template=None`` means "if there is one"."""
    use = _has_chat_template(tokenizer) if use_chat_template is None else use_chat_template
    if use:
        text = tokenizer.apply_chat_template([{"role": "user", "content": query}],
                                             tokenize=False, add_generation_prompt=True)
        return _bos_free(tokenizer, text)
    return template.format(query=query)


class BoltPromptBuilder:
    """Builds the bootstrapping prompt of a query: ``m`` of the ``N`` examples, then the query.

    With a chat template (the tokenizer has one and ``use_chat_template`` is not False): a system
    turn with ``instruction``, then a user turn (the example's query) and an assistant turn (its
    thought and solution in ``fmt``) per example, then the query as a user turn and the
    generation prompt. Without: plain text, ``instruction + separator``, then per example
    ``query_template.format(query=...) + response_prefix + response + separator``, then the
    query's ``query_template`` and ``response_prefix``.

    Parameters
    ----------
    examples : sequence of BoltExample
    fmt : BoltFormat
    m : int
        Examples per prompt (the paper's number is unconfirmed; 3 by default).
    tokenizer : optional
        For its chat template.
    use_chat_template : bool or None
        None: use the tokenizer's chat template where it has one.
    instruction : str
        The system prompt (empty: none).
    query_template, response_prefix, separator : str
        The plain-text layout.
    seed : int
        Which examples a query gets: a seeded hash of the query, so a prompt does not depend on
        the other queries or their order.
    """

    def __init__(self, examples: Sequence[BoltExample], *, fmt: BoltFormat = DEFAULT_FORMAT,
                 m: int = 3, tokenizer=None, use_chat_template: bool | None = None,
                 instruction: str = DEFAULT_INSTRUCTION, query_template: str = "Query: {query}\n",
                 response_prefix: str = "Response:\n", separator: str = "\n\n", seed: int = 0):
        where = "BoltPromptBuilder"
        self.examples = list(examples)
        if not self.examples or not all(isinstance(e, BoltExample) for e in self.examples):
            raise ValueError(f"{where}: examples must be a non-empty sequence of BoltExample")
        self.m = check_int(where, "m", m, minimum=0)
        if self.m > len(self.examples):
            raise ValueError(f"{where}: m={self.m} but only {len(self.examples)} examples")
        if "{query}" not in query_template:
            raise ValueError(f"{where}: query_template must contain '{{query}}', got "
                             f"{query_template!r}")
        self.fmt = fmt
        self.tokenizer = tokenizer
        self.chat = _has_chat_template(tokenizer) if use_chat_template is None \
            else bool(use_chat_template)
        if self.chat and not _has_chat_template(tokenizer):
            raise ValueError(f"{where}: use_chat_template=True but the tokenizer has no chat "
                             "template")
        self.instruction = instruction
        self.query_template = query_template
        self.response_prefix = response_prefix
        self.separator = separator
        self.seed = check_int(where, "seed", seed, minimum=None)

    def choose(self, query: str) -> list[BoltExample]:
        """The ``m`` examples of ``query`` (distinct, in a seeded random order)."""
        h = hashlib.blake2b(f"{self.seed}\x00{query}".encode(), digest_size=8).digest()
        return random.Random(int.from_bytes(h, "big")).sample(self.examples, self.m)

    def __call__(self, query: str) -> str:
        shots = self.choose(query)
        if self.chat:
            messages = [{"role": "system", "content": self.instruction}] if self.instruction \
                else []
            for e in shots:
                messages += [{"role": "user", "content": e.query},
                             {"role": "assistant", "content": self.fmt.render(e.thought,
                                                                              e.solution)}]
            messages.append({"role": "user", "content": query})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
            return _bos_free(self.tokenizer, text)
        parts = [self.instruction + self.separator] if self.instruction else []
        for e in shots:
            parts.append(self.query_template.format(query=e.query) + self.response_prefix
                         + self.fmt.render(e.thought, e.solution) + self.separator)
        parts.append(self.query_template.format(query=query) + self.response_prefix)
        return "".join(parts)


# --------------------------------------------------------------------------------------------
# Rewards
# --------------------------------------------------------------------------------------------

# A reward model is any callable ``reward(queries, solutions, references) -> list[float]``
# (one float per item; higher is better). ``references`` holds what the data set stores about
# the right answer (None where it stores nothing).
RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[Any]], Sequence[float]]


class VerifierReward:
    """A reward for checkable answers: ``correct`` if ``verifier(reference, solution)``, else
    ``wrong``. ``verifier`` is any ``(reference, text) -> bool``
    (:class:`ponder.rewards.MathVerifier` for math, :class:`ponder.toy.ToyVerifier` for the toy
    world, or one from :func:`ponder.rewards.get_verifier`)."""

    def __init__(self, verifier: Callable[[Any, str], bool], *, correct: float = 1.0,
                 wrong: float = 0.0):
        if not callable(verifier):
            raise TypeError("VerifierReward: verifier must be callable (reference, text) -> bool")
        self.verifier = verifier
        self.correct = check_real("VerifierReward", "correct", correct)
        self.wrong = check_real("VerifierReward", "wrong", wrong)

    def __call__(self, queries, solutions, references) -> list[float]:
        return [self.correct if self.verifier(ref, sol) else self.wrong
                for ref, sol in zip(references, solutions)]


class SequenceClassifierReward:
    """An outcome reward model in the transformers sequence-classification form (the ArmoRM /
    Skywork-Reward kind): ``score = model(conversation).logits[:, head]``.

    The conversation is the query as a user turn and the solution as the assistant turn, through
    the tokenizer's chat template where it has one, else ``f"{query}\\n\\n{solution}"``.

    Truncation (stated, since a reward model reads a fixed window): a conversation longer than
    ``max_length`` tokens is cut from the **left** by default (``truncation_side="left"``), so
    the solution's end, which the model pools at, is kept and the query's beginning is what is
    lost; ``"right"`` keeps the beginning instead.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A ``*ForSequenceClassification`` model (``num_labels >= 1``).
    tokenizer
    batch_size : int
        Conversations per forward pass (padded to the longest of the batch).
    max_length : int
        Tokens per conversation after truncation.
    head : int
        Which logit is the reward (0 for single-score models).
    """

    def __init__(self, model, tokenizer, *, batch_size: int = 8, max_length: int = 2048,
                 truncation_side: str = "left", head: int = 0):
        where = "SequenceClassifierReward"
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = check_int(where, "batch_size", batch_size, minimum=1)
        self.max_length = check_int(where, "max_length", max_length, minimum=2)
        if truncation_side not in ("left", "right"):
            raise ValueError(f"{where}: truncation_side must be 'left' or 'right', got "
                             f"{truncation_side!r}")
        self.truncation_side = truncation_side
        self.head = check_int(where, "head", head, minimum=0)
        labels = getattr(getattr(model, "config", None), "num_labels", None)
        if labels is not None and self.head >= labels:
            raise ValueError(f"{where}: head={self.head} but the model has {labels} labels")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{where}: the tokenizer needs a pad token (set "
                             "tokenizer.pad_token = tokenizer.eos_token)")

    def conversation(self, query: str, solution: str) -> str:
        if _has_chat_template(self.tokenizer):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": query}, {"role": "assistant", "content": solution}],
                tokenize=False)
            return _bos_free(self.tokenizer, text)
        return f"{query}\n\n{solution}"

    def __call__(self, queries, solutions, references=None) -> list[float]:
        import torch

        texts = [self.conversation(q, s) for q, s in zip(queries, solutions)]
        device = next(self.model.parameters()).device
        out: list[float] = []
        was_training = self.model.training
        # The side is the tokenizer's attribute: fast tokenizers ignore it as a call argument.
        side = self.tokenizer.truncation_side
        self.tokenizer.truncation_side = self.truncation_side
        self.model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(texts), self.batch_size):
                    batch = self.tokenizer(texts[start:start + self.batch_size],
                                           return_tensors="pt", padding=True, truncation=True,
                                           max_length=self.max_length,
                                           padding_side="right").to(device)
                    logits = self.model(**batch).logits
                    out.extend(float(x) for x in logits[:, self.head].float())
        finally:
            self.model.train(was_training)
            self.tokenizer.truncation_side = side
        return out


def score(reward: RewardFn, queries: Sequence[str], solutions: Sequence[str],
          references: Sequence[Any]) -> list[float]:
    """``reward(queries, solutions, references)``, checked: one finite float per item."""
    if not callable(reward):
        raise TypeError("bolt: reward must be callable (queries, solutions, references) -> floats")
    if not queries:
        return []
    out = [float(x) for x in reward(list(queries), list(solutions), list(references))]
    if len(out) != len(queries):
        raise ValueError(f"bolt: the reward returned {len(out)} scores for {len(queries)} "
                         "solutions")
    if not all(math.isfinite(x) for x in out):
        raise ValueError("bolt: the reward returned a non-finite score")
    return out


# --------------------------------------------------------------------------------------------
# Stage 1: bootstrapping
# --------------------------------------------------------------------------------------------


def _query_seed(seed: int, key: str) -> int:
    # 32 bits: TransformersGenerator multiplies a seed by about 1e6 and torch seeds are 64-bit.
    return int.from_bytes(hashlib.blake2b(f"{seed};{key}".encode(), digest_size=4).digest(),
                          "big")


def _normalise_queries(records: Iterable[Mapping[str, Any] | str], where: str
                       ) -> list[dict[str, Any]]:
    out = []
    for i, rec in enumerate(records):
        if isinstance(rec, str):
            rec = {"query": rec}
        if not isinstance(rec, Mapping) or not isinstance(rec.get("query"), str):
            raise ValueError(f"{where}: record {i} needs a 'query' string")
        key = str(rec.get("id", i))
        out.append({"id": key, "query": rec["query"],
                    "reference": rec.get("reference", rec.get("answer"))})
    ids = [r["id"] for r in out]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: duplicate query ids in the input")
    return out


@dataclass
class BootstrapStats:
    """What the filters of stage 1 kept and dropped (counts of samples unless said otherwise).

    ``format_dropped`` counts by reason (:meth:`BoltFormat.parse`); ``threshold`` is the reward
    at the percentile cut (None when nothing passed the format filter)."""

    queries: int = 0
    samples: int = 0
    format_kept: int = 0
    format_dropped: dict[str, int] = field(default_factory=dict)
    threshold: float | None = None
    percentile_dropped: int = 0
    min_reward_dropped: int = 0
    queries_kept: int = 0          # queries with a sample after every filter
    queries_without_sample: int = 0
    skipped: int = 0               # queries found in the samples file (a resumed run)
    mean_reward_kept: float | None = None
    mean_thought_chars_kept: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """A plain-text report, one line per filter."""
        drop = ", ".join(f"{k} {v}" for k, v in sorted(self.format_dropped.items())) or "none"
        thr = "-" if self.threshold is None else f"{self.threshold:.4g}"
        return [
            f"queries {self.queries} (resumed {self.skipped}), samples {self.samples}",
            f"format filter: kept {self.format_kept}, dropped {sum(self.format_dropped.values())}"
            f" ({drop})",
            f"percentile filter (threshold {thr}): dropped {self.percentile_dropped}; "
            f"min_reward: dropped {self.min_reward_dropped}",
            f"best per query: kept {self.queries_kept} queries, {self.queries_without_sample} "
            "without a surviving sample",
        ]


def bootstrap(
    records: Iterable[Mapping[str, Any] | str],
    generator,
    builder: BoltPromptBuilder,
    reward: RewardFn,
    samples_path: str | Path,
    *,
    n: int = 8,
    max_new_tokens: int = 1024,
    temperature: float = 0.7,
    top_p: float = 1.0,
    stop: Sequence[str] | None = None,
    score_on: str = "solution",
    seed: int = 0,
    queries_per_call: int = 8,
    progress: bool = True,
) -> BootstrapStats:
    """Sample, format-filter and score ``n`` responses per query; append them to a JSONL file.

    Returns the counts of this call (samples, format filter); :func:`select_best` gives those
    of the whole file and of the later filters.

    One line per query, written whole as soon as its samples are scored::

        {"id", "query", "reference", "prompt", "n", "temperature", "max_new_tokens", "seed",
         "samples": [{"text", "thought", "solution", "format": "ok" | reason, "reward"}]}

    (``reward`` is None for a sample that fails the format filter: it is never scored.) A
    restart skips the queries already in the file and refuses other sampling parameters, so a
    file never mixes two runs; a torn last line is cut off. Each query is sampled with its own
    seed (a hash of ``seed`` and its id), so its samples do not depend on which queries share a
    ``generate`` call. Then :func:`select_best` applies the percentile filter and keeps the best
    sample per query.

    Parameters
    ----------
    records : iterable of dict or str
        ``{"query", "id"?, "reference"?}`` (``"answer"`` is read as the reference); a str is a
        query. Ids default to the position.
    generator : ponder.generation.TextGenerator
    builder : BoltPromptBuilder
    reward : callable ``(queries, solutions, references) -> floats``
    samples_path : path
    n : int
        Samples per query (unconfirmed in the paper; 8).
    temperature, top_p, max_new_tokens : sampling options (temperature unconfirmed; 0.7).
    stop : sequence of str, optional
        Stop strings; by default the text the next example would start with (the query
        template's text before ``{query}``, when it has one and no chat template is used).
    score_on : {"solution", "response"}
        What the reward model reads: the external solution (the paper's choice) or the whole
        response (thought and solution).
    queries_per_call : int
        Queries per ``generate`` call (``n`` samples each); the samples do not depend on it.
    """
    where = "bootstrap"
    n = check_int(where, "n", n, minimum=1)
    max_new_tokens = check_int(where, "max_new_tokens", max_new_tokens, minimum=1)
    temperature = check_real(where, "temperature", temperature, nonnegative=True)
    seed = check_int(where, "seed", seed, minimum=None)
    queries_per_call = check_int(where, "queries_per_call", queries_per_call, minimum=1)
    if score_on not in ("solution", "response"):
        raise ValueError(f"{where}: score_on must be 'solution' or 'response', got {score_on!r}")
    if stop is None:
        head = builder.query_template.split("{query}")[0].strip()
        stop = [] if builder.chat or not head else [builder.separator.rstrip(" ") + head]
    stop = list(stop)
    items = _normalise_queries(records, where)
    sampling = {"n": n, "temperature": temperature, "max_new_tokens": max_new_tokens,
                "seed": seed}
    path = Path(samples_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(path)  # a kill during a write leaves a torn last line: cut it before reading
    done_lines = read_jsonl(path) if path.exists() else []
    for line in done_lines:
        for name, value in sampling.items():
            if line.get(name) != value:
                raise ValueError(f"{where}: cannot resume {path} with {name}={value!r}: it was "
                                 f"written with {name}={line.get(name)!r}; pass that or write "
                                 "to a new file")
    done = {line["id"] for line in done_lines}
    todo = [r for r in items if r["id"] not in done]
    stats = BootstrapStats(queries=len(items), skipped=len(items) - len(todo))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=stats.skipped, desc="BOLT bootstrap", unit="query")
    try:
        with open_append(path) as f:
            for start in range(0, len(todo), queries_per_call):
                chunk = todo[start:start + queries_per_call]
                prompts = [builder(r["query"]) for r in chunk]
                outs = generator.generate(prompts, n=n, max_new_tokens=max_new_tokens,
                                          temperature=temperature, top_p=top_p, stop=stop,
                                          seed=[_query_seed(seed, r["id"]) for r in chunk])
                for rec, prompt, texts in zip(chunk, prompts, outs):
                    samples = []
                    for text in texts:
                        parsed = builder.fmt.parse(str(text))
                        samples.append({"text": str(text), "thought": parsed.thought,
                                        "solution": parsed.solution,
                                        "format": "ok" if parsed.ok else parsed.reason,
                                        "reward": None})
                    good = [s for s in samples if s["format"] == "ok"]
                    stats.samples += len(samples)
                    stats.format_kept += len(good)
                    for s in samples:
                        if s["format"] != "ok":
                            stats.format_dropped[s["format"]] = \
                                stats.format_dropped.get(s["format"], 0) + 1
                    scores = score(reward, [rec["query"]] * len(good),
                                   [s["solution"] if score_on == "solution" else s["text"]
                                    for s in good],
                                   [rec["reference"]] * len(good))
                    for s, r in zip(good, scores):
                        s["reward"] = r
                    append_line(f, {**rec, "prompt": prompt, **sampling, "samples": samples})
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return stats


def select_best(
    samples_path: str | Path,
    out_path: str | Path | None = None,
    *,
    percentile: float = 30.0,
    min_reward: float | None = None,
    ids: Iterable[str] | None = None,
) -> tuple[list[dict[str, Any]], BootstrapStats]:
    """The filters after sampling: percentile, optional minimum reward, best per query.

    The percentile cut is taken over the rewards of every well-formed sample in the file (the
    paper's "drop low scores"; the 30th percentile is unconfirmed): a sample is kept when its
    reward is at least the ``percentile``-th percentile (linear interpolation), and at least
    ``min_reward`` if given (for a 0/1 verifier reward, ``min_reward=1`` keeps right answers
    only). The best kept sample of each query is chosen (the first of equal rewards).

    Returns the records ``{"id", "query", "reference", "thought", "solution", "response",
    "reward"}`` (written to ``out_path`` as JSONL when given, rewritten whole) and the statistics
    of every filter.
    """
    where = "select_best"
    percentile = check_real(where, "percentile", percentile, nonnegative=True)
    if percentile > 100:
        raise ValueError(f"{where}: percentile must be in [0, 100], got {percentile}")
    lines = read_jsonl(samples_path)
    if ids is not None:
        wanted = set(map(str, ids))
        lines = [line for line in lines if line["id"] in wanted]
    stats = BootstrapStats(queries=len(lines))
    rewards = []
    reasons: Counter[str] = Counter()
    for line in lines:
        for s in line["samples"]:
            stats.samples += 1
            if s["format"] == "ok":
                stats.format_kept += 1
                rewards.append(s["reward"])
            else:
                reasons[s["format"]] += 1
    stats.format_dropped = dict(reasons)
    if rewards:
        stats.threshold = _percentile(rewards, percentile)
    chosen = []
    for line in lines:
        best = None
        for s in line["samples"]:
            if s["format"] != "ok":
                continue
            if s["reward"] < stats.threshold:
                stats.percentile_dropped += 1
                continue
            if min_reward is not None and s["reward"] < min_reward:
                stats.min_reward_dropped += 1
                continue
            if best is None or s["reward"] > best["reward"]:
                best = s
        if best is None:
            stats.queries_without_sample += 1
            continue
        chosen.append({"id": line["id"], "query": line["query"], "reference": line["reference"],
                       "thought": best["thought"], "solution": best["solution"],
                       "response": best["text"], "reward": best["reward"]})
    stats.queries_kept = len(chosen)
    if chosen:
        stats.mean_reward_kept = sum(c["reward"] for c in chosen) / len(chosen)
        stats.mean_thought_chars_kept = sum(len(c["thought"]) for c in chosen) / len(chosen)
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text("".join(json.dumps(c) + "\n" for c in chosen))
        tmp.replace(out_path)
    return chosen, stats


def _percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` with linear interpolation (numpy's default)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# --------------------------------------------------------------------------------------------
# Stage 2: SFT
# --------------------------------------------------------------------------------------------


def _prompt_completion(tokenizer, query: str, response: str, template: str) -> dict[str, Any]:
    """One TRL prompt-completion row: conversational where the tokenizer has a chat template
    (TRL applies it), plain text otherwise."""
    if _has_chat_template(tokenizer):
        return {"prompt": [{"role": "user", "content": query}],
                "completion": [{"role": "assistant", "content": response}]}
    return {"prompt": template.format(query=query), "completion": response}


def sft(
    model,
    tokenizer,
    records: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    *,
    fmt: BoltFormat = DEFAULT_FORMAT,
    prompt_template: str = "{query}",
    learning_rate: float = 1e-5,
    batch_size: int = 8,
    epochs: float = 2.0,
    max_steps: int = -1,
    max_length: int | None = 2048,
    gradient_accumulation_steps: int = 1,
    seed: int = 0,
    progress: bool = True,
    save: bool = True,
    args: Mapping[str, Any] | None = None,
):
    """Stage 2: fine-tune on query -> thought + solution with TRL's ``SFTTrainer``.

    Each record (from :func:`select_best`) becomes a prompt-completion pair: the prompt is the
    query alone (:func:`policy_prompt`: a user turn of the chat template, or
    ``prompt_template``), the completion ``fmt.render(thought, solution)`` plus the tokenizer's
    eos (TRL adds it). The loss is on the completion only (``completion_only_loss=True``).
    ``args`` overrides any other ``trl.SFTConfig`` field. Saves the model and tokenizer to
    ``output_dir`` (safetensors) when ``save``. Returns the trainer (its ``state.log_history``
    has the losses).
    """
    if not records:
        raise ValueError("sft: records is empty (did every query fail the filters?)")
    rows = [_prompt_completion(tokenizer, r["query"], fmt.render(r["thought"], r["solution"]),
                               prompt_template) for r in records]
    trainer = sft_trainer(model, tokenizer, rows, output_dir, learning_rate=learning_rate,
                          batch_size=batch_size, epochs=epochs, max_length=max_length,
                          progress=progress, max_steps=max_steps, seed=seed,
                          gradient_accumulation_steps=gradient_accumulation_steps,
                          **dict(args or {}))
    with quiet(progress):
        run_trainer(trainer, progress)
        if save:
            trainer.save_model(str(output_dir))
    return trainer


# --------------------------------------------------------------------------------------------
# Stage 3: online DPO
# --------------------------------------------------------------------------------------------


def make_preference_pairs(
    queries: Sequence[str],
    responses: Sequence[Sequence[str]],
    rewards: Sequence[Sequence[float | None]],
) -> list[dict[str, Any]]:
    """Best vs worst of each query's responses: ``{"query", "chosen", "rejected",
    "chosen_reward", "rejected_reward"}``.

    A reward of None (a response that failed the format filter) ranks below every score. A query
    whose best and worst rewards are equal gives no pair (no preference to learn). Of equal
    rewards the first response is the best and the last the worst.
    """
    pairs = []
    for q, texts, scores in zip(queries, responses, rewards):
        if len(texts) != len(scores):
            raise ValueError("make_preference_pairs: responses and rewards differ in length")
        if len(texts) < 2:
            continue
        key = [(-math.inf if s is None else s) for s in scores]
        best = max(range(len(key)), key=lambda i: (key[i], -i))
        worst = min(range(len(key)), key=lambda i: (key[i], -i))
        if key[best] == key[worst]:
            continue
        pairs.append({"query": q, "chosen": texts[best], "rejected": texts[worst],
                      "chosen_reward": scores[best], "rejected_reward": scores[worst]})
    return pairs


def dpo_pass(
    model,
    ref_model,
    tokenizer,
    pairs: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    *,
    prompt_template: str = "{query}",
    beta: float = 0.1,
    learning_rate: float = 5e-7,
    batch_size: int = 8,
    epochs: float = 1.0,
    max_steps: int = -1,
    max_length: int | None = 2048,
    gradient_accumulation_steps: int = 1,
    seed: int = 0,
    progress: bool = True,
    args: Mapping[str, Any] | None = None,
):
    """One pass of TRL's ``DPOTrainer`` (sigmoid loss, ``beta``) over preference ``pairs``
    (``{"query", "chosen", "rejected"}``; responses are the whole thought + solution text).
    ``ref_model`` is the frozen reference. Returns the trainer."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError("dpo_pass: no preference pairs")
    beta = check_real("dpo_pass", "beta", beta, positive=True)
    chat = _has_chat_template(tokenizer)
    rows = []
    for p in pairs:
        if chat:
            rows.append({"prompt": [{"role": "user", "content": p["query"]}],
                         "chosen": [{"role": "assistant", "content": p["chosen"]}],
                         "rejected": [{"role": "assistant", "content": p["rejected"]}]})
        else:
            rows.append({"prompt": prompt_template.format(query=p["query"]),
                         "chosen": p["chosen"], "rejected": p["rejected"]})
    config = DPOConfig(**trl_args(
        model, output_dir, learning_rate=learning_rate, batch_size=batch_size, epochs=epochs,
        max_steps=max_steps, seed=seed, progress=progress,
        gradient_accumulation_steps=gradient_accumulation_steps, beta=beta,
        max_length=max_length, **dict(args or {})))
    with quiet(progress):
        trainer = DPOTrainer(model=model, ref_model=ref_model, args=config,
                             train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
        run_trainer(trainer, progress)
    return trainer


@dataclass
class DPOIteration:
    """What one iteration of :func:`online_dpo` did: the samples' format rate and mean reward
    (malformed responses excluded from the mean), the pairs, and the DPO losses."""

    iteration: int
    samples: int
    format_rate: float
    mean_reward: float | None
    pairs: int
    losses: list[float]


def online_dpo(
    model,
    tokenizer,
    records: Iterable[Mapping[str, Any] | str],
    reward: RewardFn,
    output_dir: str | Path,
    *,
    generator=None,
    fmt: BoltFormat = DEFAULT_FORMAT,
    prompt_template: str = "{query}",
    iterations: int = 3,
    n: int = 8,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    stop: Sequence[str] = (),
    beta: float = 0.1,
    reference: str = "previous",
    score_on: str = "solution",
    seed: int = 0,
    progress: bool = True,
    on_iteration: Callable[[DPOIteration, Any], None] | None = None,
    save: bool = True,
    **dpo_options,
) -> list[DPOIteration]:
    """Stage 3: iterate sample -> reward -> best-vs-worst pairs -> one DPO pass.

    Each iteration samples ``n`` responses per query from the current policy at ``temperature``
    (about 1 in the paper) through ``generator`` (a :class:`ponder.generation.TextGenerator`; by
    default a ``TransformersGenerator`` on ``model``), scores the well-formed ones with
    ``reward``, builds one pair per query (:func:`make_preference_pairs`: malformed responses
    rank lowest) and runs :func:`dpo_pass` (``beta`` 0.1; ``dpo_options`` go to it). The
    reference model is a frozen copy of the policy at the start of each iteration
    (``reference="previous"``, the usual iterative DPO) or of the initial policy
    (``"initial"``); the paper does not say which.

    Under DDP every process samples the same (seeded) responses and the trainer splits the
    pairs between them. ``on_iteration(result, model)`` is called after each pass (to evaluate).
    The final model is saved to ``output_dir`` when ``save``. Returns one :class:`DPOIteration`
    per iteration.
    """
    where = "online_dpo"
    iterations = check_int(where, "iterations", iterations, minimum=1)
    n = check_int(where, "n", n, minimum=2)
    seed = check_int(where, "seed", seed, minimum=None)
    if reference not in ("previous", "initial"):
        raise ValueError(f"{where}: reference must be 'previous' or 'initial', got {reference!r}")
    if score_on not in ("solution", "response"):
        raise ValueError(f"{where}: score_on must be 'solution' or 'response', got {score_on!r}")
    items = _normalise_queries(records, where)
    if generator is None:
        from ..generation import TransformersGenerator

        generator = TransformersGenerator(model, tokenizer)
    output_dir = Path(output_dir)
    ref_model = _frozen_copy(model) if reference == "initial" else None
    history = []
    for it in range(iterations):
        prompts = [policy_prompt(r["query"], tokenizer, template=prompt_template) for r in items]
        outs = generator.generate(prompts, n=n, max_new_tokens=max_new_tokens,
                                  temperature=temperature, top_p=top_p, stop=stop,
                                  seed=[_query_seed(seed + it, r["id"]) for r in items])
        rewards_all, texts_all, formats = [], [], 0
        good_scores: list[float] = []
        for rec, texts in zip(items, outs):
            parsed = [fmt.parse(str(t)) for t in texts]
            good = [i for i, p in enumerate(parsed) if p.ok]
            formats += len(good)
            scores = score(reward, [rec["query"]] * len(good),
                           [parsed[i].solution if score_on == "solution" else str(texts[i])
                            for i in good], [rec["reference"]] * len(good))
            row: list[float | None] = [None] * len(texts)
            for i, s in zip(good, scores):
                row[i] = s
            good_scores += scores
            rewards_all.append(row)
            texts_all.append([str(t) for t in texts])
        pairs = make_preference_pairs([r["query"] for r in items], texts_all, rewards_all)
        losses: list[float] = []
        if pairs:
            ref = ref_model if ref_model is not None else _frozen_copy(model)
            trainer = dpo_pass(model, ref, tokenizer, pairs, output_dir / f"iteration-{it}",
                               prompt_template=prompt_template, beta=beta, seed=seed + it,
                               progress=progress, **dpo_options)
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            del ref, trainer
        total = sum(len(t) for t in texts_all)
        result = DPOIteration(iteration=it, samples=total,
                              format_rate=formats / total if total else 0.0,
                              mean_reward=sum(good_scores) / len(good_scores) if good_scores
                              else None, pairs=len(pairs), losses=losses)
        history.append(result)
        if on_iteration is not None:
            on_iteration(result, model)
    if save:
        with quiet(progress):
            model.save_pretrained(str(output_dir))
            tokenizer.save_pretrained(str(output_dir))
    return history


def _frozen_copy(model):
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
