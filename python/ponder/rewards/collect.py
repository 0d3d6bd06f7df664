"""The ER-PRM rollout collector: resumable, append-only, with a progress bar.

For each solution (a question and its steps), and each prefix ending at step ``t < K``, sample
``n`` completions from the policy through a :class:`ponder.generation.TextGenerator`, check
each ``prefix + completion`` with a verifier, and keep the outcomes ``o`` in {0, 1}; the last
step's outcome is the correctness of the whole solution. Each solution then becomes one ER-PRM
record::

    {"id": ..., "text": "<question> <step 1> ки\\n<step 2> ки", "value": [l_1, ..., l_K],
     "question": ..., "steps": [...], "outcomes": [[o, ...], ..., [o_K]], "eta": eta,
     "n": n, "temperature": ..., "max_new_tokens": ..., "seed": seed}

with ``l_t = er_prm_label(outcomes[t], eta)`` (the text follows the PRM's convention). The raw
outcomes are kept so the labels can be recomputed for another ``eta`` without new rollouts.

Seeds: each prefix is sampled with its own seed, a hash of the run's ``seed``, the solution id
and the step index, so its completions do not depend on which other prefixes share its
``generate`` call (a resumed run regroups them).

Resumability: two append-only JSONL files, each line written whole and flushed.
``<out>.rollouts.jsonl`` gets one line per finished prefix (``{"key": "<id>:<t>",
"outcomes": [...]}``) and ``<out>`` one line per finished solution. After an interruption (or a
crash) a restart skips solutions already in ``<out>`` and prefixes already in the rollouts file,
so nothing finished is sampled twice or written twice; a partly written last line (a kill in the
middle of a write) is cut off first. Every line records the sampling parameters (``n``,
``temperature``, ``max_new_tokens``, ``seed``; ``<out>``'s also ``eta``), and a restart with
other values is refused rather than mixing two runs in one file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..records import append_line, read_jsonl, repair_tail
from ..validation import check_int, check_real
from .labels import er_prm_label
from .model import PRMConvention, math_shepherd
from .verify import Verifier, split_steps

__all__ = ["CollectStats", "collect_rollouts", "default_prompt", "solution_id"]


def solution_id(question: str, steps: Sequence[str]) -> str:
    """A stable id of a solution: a hash of its question and steps."""
    h = hashlib.blake2b(digest_size=8)
    h.update(question.encode())
    for s in steps:
        h.update(b"\x00" + s.encode())
    return h.hexdigest()


def default_prompt(question: str, steps: Sequence[str], question_separator: str = "\n\n",
                   step_separator: str = "\n\n") -> str:
    """What the policy continues: the question, then the prefix steps, each followed by the
    separator (the toy world's format: ``"Q: 2+3+4=?\\n\\n2+3=5\\n\\n"``)."""
    return question.rstrip() + question_separator + "".join(s + step_separator for s in steps)


@dataclass
class CollectStats:
    """What one :func:`collect_rollouts` call did."""

    solutions: int = 0          # in the input
    skipped: int = 0            # already in the output (a resumed run)
    written: int = 0            # records written by this call
    prefixes_sampled: int = 0   # prefixes rolled out by this call
    prefixes_reused: int = 0    # prefixes found in the rollouts file
    completions: int = 0


def _read_lines(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.exists() else []


def _check_resume(path: Path, lines: list[dict[str, Any]], params: Mapping[str, Any]) -> None:
    """Refuse to append to ``path`` if its lines were written with other ``params``."""
    for line in lines:
        for name, value in params.items():
            if name not in line:
                raise ValueError(f"collect_rollouts: cannot resume {path}: its lines do not "
                                 f"record {name} (written by an older version); write to a new "
                                 "output")
            if line[name] != value:
                raise ValueError(f"collect_rollouts: cannot resume {path} with {name}={value!r}: "
                                 f"it was written with {name}={line[name]!r}; pass that or "
                                 "write to a new output")


def _prefix_seed(seed: int, key: str) -> int:
    """The seed of one prefix (``key`` is ``"<id>:<t>"``), independent of the other prefixes
    sampled in the same call. 32 bits: backends derive further seeds from it (the transformers
    one multiplies it by about 1e6), which must stay within torch's 64-bit seeds."""
    h = hashlib.blake2b(f"{seed};{key}".encode(), digest_size=4)
    return int.from_bytes(h.digest(), "big")


def _normalise(records: Iterable[Mapping[str, Any]], separator: str) -> list[dict[str, Any]]:
    out = []
    for i, rec in enumerate(records):
        if "question" not in rec or ("steps" not in rec and "solution" not in rec):
            raise ValueError(f"collect_rollouts: record {i} needs 'question' and 'steps' or "
                             "'solution'")
        steps = list(rec["steps"]) if "steps" in rec else split_steps(rec["solution"], separator)
        if not steps:
            raise ValueError(f"collect_rollouts: record {i} has no steps")
        question = rec["question"]
        out.append({"id": str(rec.get("id", solution_id(question, steps))), "question": question,
                    "steps": steps, "reference": rec.get("reference", rec.get("answer", question))})
    ids = [r["id"] for r in out]
    if len(set(ids)) != len(ids):
        raise ValueError("collect_rollouts: duplicate solution ids in the input")
    return out


def collect_rollouts(
    records: Iterable[Mapping[str, Any]],
    generator,
    verifier: Verifier,
    out_path: str | Path,
    *,
    n: int = 16,
    eta: float = 2.0,
    convention: PRMConvention | None = None,
    tokenizer=None,
    separator: str = "\n\n",
    prompt: Callable[[str, Sequence[str]], str] = default_prompt,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    seed: int = 0,
    prefixes_per_call: int = 32,
    progress: bool = True,
) -> CollectStats:
    """Roll out every prefix of every solution and write ER-PRM records (see the module doc).

    Parameters
    ----------
    records : iterable of dict
        ``{"question", "steps"}`` or ``{"question", "solution"}`` (split at ``separator``),
        optionally ``"id"`` (default: a hash of question and steps) and ``"reference"`` (or
        ``"answer"``: what the verifier compares with; the question by default, which the toy
        verifier solves).
    generator : ponder.generation.TextGenerator
    verifier : callable ``(reference, text) -> bool``
        Judges ``prefix steps + completion`` (and the whole solution for the last step).
    out_path : path
        The ER-PRM JSONL output; ``<out_path>.rollouts.jsonl`` holds the per-prefix outcomes.
    n : int
        Completions per prefix (the paper uses 16).
    eta : float
        ER-PRM's ``eta`` (any real, or ``math.inf`` for hard labels).
    convention : PRMConvention
        Formats the ``"text"`` field (Math-Shepherd's by default).
    prompt : callable
        ``prompt(question, prefix_steps)`` -> the text the policy continues.
    temperature, max_new_tokens : sampling options passed to ``generator.generate``
    seed : int
        The run's seed; each prefix is sampled with a seed derived from it and the prefix (one
        seed per prompt: see :meth:`ponder.generation.TextGenerator.generate`).
    prefixes_per_call : int
        Prefixes passed to one ``generate`` call (``n`` completions each); the results do not
        depend on it.
    """
    convention = convention or math_shepherd()
    er_prm_label([0.0], eta)  # validates eta before any sampling
    where = "collect_rollouts"
    n = check_int(where, "n", n, minimum=1)
    prefixes_per_call = check_int(where, "prefixes_per_call", prefixes_per_call, minimum=1)
    max_new_tokens = check_int(where, "max_new_tokens", max_new_tokens, minimum=1)
    seed = check_int(where, "seed", seed, minimum=None)
    temperature = check_real(where, "temperature", temperature, nonnegative=True)
    # What the outcomes depend on (besides the policy, prompt and verifier, which a file cannot
    # record): a resume must match them, so one file never mixes two runs.
    sampling = {"n": n, "temperature": temperature, "max_new_tokens": max_new_tokens,
                "seed": seed}
    items = _normalise(records, separator)
    out_path = Path(out_path)
    cache_path = out_path.with_name(out_path.name + ".rollouts.jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(out_path)
    repair_tail(cache_path)
    written = _read_lines(out_path)
    cached = _read_lines(cache_path)
    _check_resume(out_path, written, {**sampling, "eta": eta})
    _check_resume(cache_path, cached, sampling)
    done = {r["id"] for r in written}
    cache = {r["key"]: r["outcomes"] for r in cached}
    stats = CollectStats(solutions=len(items))
    todo = [r for r in items if r["id"] not in done]
    stats.skipped = len(items) - len(todo)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=stats.skipped, desc="ER-PRM rollouts",
                   unit="solution")
    try:
        with open(out_path, "a") as out_f, open(cache_path, "a") as cache_f:
            pending: list[tuple[dict[str, Any], int]] = []  # prefixes still to sample

            def finish_ready() -> None:
                # Write, in input order, the leading solutions whose prefixes are all done.
                while todo:
                    rec = todo[0]
                    keys = [f"{rec['id']}:{t}" for t in range(1, len(rec["steps"]))]
                    if any(k not in cache for k in keys):
                        break
                    whole = prompt(rec["question"], rec["steps"])
                    outcomes = [cache[k] for k in keys] + [[int(bool(verifier(rec["reference"],
                                                                               whole)))]]
                    append_line(out_f, {
                        "id": rec["id"],
                        "text": convention.format(rec["question"], rec["steps"], tokenizer),
                        "value": [er_prm_label(o, eta) for o in outcomes],
                        "question": rec["question"], "steps": rec["steps"],
                        "outcomes": outcomes, "eta": eta, **sampling,
                    })
                    stats.written += 1
                    todo.pop(0)
                    if bar is not None:
                        bar.update(1)

            def flush() -> None:
                if not pending:
                    return
                prompts = [prompt(rec["question"], rec["steps"][:t]) for rec, t in pending]
                keys = [f"{rec['id']}:{t}" for rec, t in pending]
                outs = generator.generate(prompts, n=n, max_new_tokens=max_new_tokens,
                                          temperature=temperature,
                                          seed=[_prefix_seed(seed, k) for k in keys])
                for (rec, _), key, p, comps in zip(pending, keys, prompts, outs):
                    outcomes = [int(bool(verifier(rec["reference"], p + c))) for c in comps]
                    cache[key] = outcomes
                    append_line(cache_f, {"key": key, "outcomes": outcomes, **sampling})
                    stats.prefixes_sampled += 1
                    stats.completions += len(comps)
                pending.clear()

            for rec in list(todo):
                for t in range(1, len(rec["steps"])):
                    if f"{rec['id']}:{t}" in cache:
                        stats.prefixes_reused += 1
                        continue
                    pending.append((rec, t))
                    if len(pending) >= prefixes_per_call:
                        flush()
                        finish_ready()
                finish_ready()
            flush()
            finish_ready()
    finally:
        if bar is not None:
            bar.close()
    return stats
