"""Auto-CEI on the toy arithmetic world: the task, a run's defaults and the comparison.

The policy is the shipped toy ``"draft"`` (trained by SFT on 1-3-step, 2-digit ``+ -`` chains).
Measured with ``evaluate_accuracy`` on 60 problems each (seed 123): 73% right at 1 step, 75% at 2,
35% at 3 and 0% at 4 steps: mostly right on easy problems, always wrong on the longest. The task
mixes 1 to 4 steps (the difficulty is the step count), so there is something to refuse.

The toy tokenizer only writes the characters of ``ponder.toy.tokenizer.ALPHABET``, so the refusal
is ``"Answer: ?"`` (one of :data:`ponder.train.auto_cei.DEFAULT_REFUSAL_PHRASES`): a refused
solution is its steps followed by ``"Answer: ?"`` instead of a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..train.auto_cei import AutoCEI, AutoCEIConfig, blank_line_steps
from .arithmetic import ANSWER_PREFIX, Problem, make_problems, split, verify

__all__ = ["TOY_CONFIG", "ToyTask", "compare", "format_table", "toy_task"]


@dataclass
class ToyTask:
    """The toy world as an Auto-CEI task (:class:`ponder.train.auto_cei.Task`)."""

    train: Sequence[Problem]
    validation: Sequence[Problem]
    test: Sequence[Problem]
    name: str = "toy"
    max_new_tokens: int = field(default=0)

    def __post_init__(self):
        if not self.max_new_tokens:
            every = [*self.train, *self.validation, *self.test]
            self.max_new_tokens = max(len(p.target) for p in every) + 16

    def prompt(self, problem: Problem) -> str:
        return problem.prompt

    def is_correct(self, problem: Problem, text: str) -> bool:
        return verify(problem, text)

    def difficulty(self, problem: Problem) -> int:
        return problem.n_steps

    def count_steps(self, text: str) -> int:
        return blank_line_steps(text)

    def cut_at_answer(self, text: str) -> str:
        at = text.find(ANSWER_PREFIX.strip())
        return text if at < 0 else text[:at]


def toy_task(n: int = 800, *, seed: int = 17, min_steps: int = 1, max_steps: int = 4,
             digits: int = 2, split_seed: int = 0,
             fractions: tuple[float, float, float] = (0.6, 0.15, 0.25)) -> ToyTask:
    """``n`` problems of ``min_steps``..``max_steps`` steps (uniform), split by question."""
    problems = make_problems(n, seed=seed, min_steps=min_steps, max_steps=max_steps,
                             digits=digits)
    parts = split(problems, seed=split_seed, fractions=fractions)
    return ToyTask(parts.train, parts.validation, parts.test)


# Small k, few iterations and full fine-tuning (no LoRA: the draft is 0.27M parameters) so that
# a run fits minutes on two cores; the library's defaults stay the paper's.
TOY_CONFIG = AutoCEIConfig(k=4, n_resample=4, refusal_k=2, max_iterations=2,
                           max_curriculum_evals=2, retrain_from="continue", learning_rate=1e-3,
                           epochs=1.0, batch_size=32, lora=None, refusal_learning_rate=1e-3,
                           refusal_epochs=2.0, eval_batch_size=128, seed=0)


def compare(out: str | Path, *, task: ToyTask | None = None,
            config: AutoCEIConfig = TOY_CONFIG, progress: bool = False, log=print,
            train: bool = True, split: str = "test") -> dict[str, Any]:
    """SFT (the draft as shipped), refusal tuning and Auto-CEI (the best model by validation
    ``f``) on the ``split``; the run (resumable in ``out``) is completed first if ``train``, else
    what is there is measured. Returns ``{method: summarize(...)}`` plus the run's ``c1``,
    ``c2``, ``tau`` and steps under ``"run"``."""
    from .models import load_toy_model

    task = task or toy_task()
    resuming = (Path(out) / "state.json").is_file()
    run = AutoCEI(task, out, None if resuming else config,
                  base=None if resuming else load_toy_model("draft"), progress=progress,
                  on_stage=lambda s: log(f"  done: {s}"))
    state = run.run() if train else run.state
    results = {"SFT": run.evaluate("base", split),
               "refusal-tuning": run.evaluate("refusal_tuned", split),
               "Auto-CEI": run.evaluate("best", split)}
    results["run"] = {k: state.get(k) for k in ("c1_0", "c2", "s", "tau", "best", "steps")}
    return results


def format_table(results: dict[str, Any]) -> str:
    """A markdown table: each method's accuracy, precision, refusal rate, f, overall and by
    difficulty (steps)."""
    rows = ["| method | steps | n | accuracy | precision | refusal rate | f |",
            "|---|---|---|---|---|---|---|"]
    for method, m in results.items():
        if method == "run":
            continue
        parts = [("all", m), *m.get("by_difficulty", {}).items()]
        for d, r in parts:
            rows.append(f"| {method} | {d} | {r['n']} | {r['accuracy']:.3f} | "
                        f"{r['precision']:.3f} | {r['refusal_rate']:.3f} | {r['f']:.3f} |")
    return "\n".join(rows)
