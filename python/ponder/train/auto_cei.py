"""Auto-CEI: automatic curriculum expert iteration (arXiv 2410.07627).

Teaches a policy to reason longer where it can and to say "I don't know" where it cannot. The
pieces, each usable alone:

- the reward (:func:`auto_cei_reward`): a refusal is detected first, from ONE configurable list of
  phrases (:func:`is_refusal`), and is never scored right or wrong; then ``+1`` right, ``-1``
  wrong, and a refusal after ``n`` reasoning steps gets
  ``R = 2 / (1 + exp(-c2 (n - c1))) - 1`` (:func:`refusal_reward`): refusing after a long attempt
  earns more than refusing at once. How steps are counted depends on the task's format
  (:func:`blank_line_steps` by default: chunks separated by blank lines, as in the toy world);
- ``c1`` and ``c2`` from the refusal-tuned model's outputs (:func:`init_curriculum`);
- the objective ``f = (1 - lambda) precision + lambda (1 - refusal rate)`` (:func:`objective`,
  :func:`summarize` for the metrics overall and by difficulty);
- the curriculum's hill climb on ``c1`` (:class:`HillClimb`), a resumable state machine;
- the expert-iteration data (:func:`resample_examples`) and the refusal-tuning data
  (:func:`refusal_tuning_example`); SFT through TRL's ``SFTTrainer`` (:func:`sft`);
- the whole loop (:class:`AutoCEI`): refusal tuning, initialisation, then curriculum steps of at
  most 3 expert iterations each, with its state written after every stage so that a killed run
  continues where it stopped.

This module knows nothing of the toy world: a task is anything with the :class:`Task` methods
(``ponder.toy.auto_cei`` has the toy one; ``ponder auto-cei`` runs it).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import statistics
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..validation import check_int, check_probability, check_real
from .sft import LoraSettings, run_trainer, sft_trainer

__all__ = [
    "DEFAULT_REFUSAL_PHRASES",
    "DEFAULT_REFUSAL_SENTENCE",
    "AutoCEI",
    "AutoCEIConfig",
    "CurriculumInit",
    "HillClimb",
    "LoraSettings",
    "Task",
    "auto_cei_reward",
    "blank_line_steps",
    "init_curriculum",
    "is_refusal",
    "objective",
    "outcome",
    "refusal_reward",
    "refusal_tuning_example",
    "resample_examples",
    "sft",
    "summarize",
]

# One list, used for the reward, the initialisation and the evaluation alike (the original had
# three different ones). Matched case-insensitively as substrings. "Answer: ?" is the toy world's
# refusal: its character tokenizer cannot write "I don't know".
DEFAULT_REFUSAL_PHRASES: tuple[str, ...] = (
    "I don't know",
    "I do not know",
    "I am not sure",
    "I'm not sure",
    "I cannot solve",
    "I can't solve",
    "Answer: ?",
)
DEFAULT_REFUSAL_SENTENCE = "Answer: ?"

RIGHT, WRONG, REFUSED = "right", "wrong", "refused"


# --------------------------------------------------------------------------------------------
# Reward
# --------------------------------------------------------------------------------------------


def is_refusal(text: str, phrases: Sequence[str] = DEFAULT_REFUSAL_PHRASES) -> bool:
    """Whether ``text`` contains any of ``phrases`` (case-insensitive substring)."""
    if not isinstance(text, str):
        raise TypeError(f"is_refusal: text must be a str, got {type(text).__name__}")
    low = text.lower()
    return any(p.lower() in low for p in phrases if p)


def blank_line_steps(text: str, *, stop_markers: Sequence[str] = ("Answer:",)) -> int:
    """The number of reasoning steps in ``text``: its non-empty blank-line-separated chunks before
    the first chunk holding any of ``stop_markers`` (the answer line or a refusal is no step).

    ``"12+34=46\\n\\n46-5=41\\n\\nAnswer: ?"`` -> 2.
    """
    n = 0
    for chunk in text.split("\n\n"):
        if any(m in chunk for m in stop_markers):
            break
        n += bool(chunk.strip())
    return n


def refusal_reward(n_steps: float, c1: float, c2: float) -> float:
    """``2 / (1 + exp(-c2 (n - c1))) - 1``: in ``(-1, 1)``, 0 at ``n = c1``, rising with ``n``
    (for ``c2 > 0``). Written as ``tanh(c2 (n - c1) / 2)``, the same function without overflow."""
    return math.tanh(0.5 * c2 * (float(n_steps) - c1))


def outcome(text: str, correct: bool, phrases: Sequence[str] = DEFAULT_REFUSAL_PHRASES) -> str:
    """``"refused"`` if ``text`` is a refusal (checked first, whatever ``correct`` says), else
    ``"right"`` or ``"wrong"``."""
    if is_refusal(text, phrases):
        return REFUSED
    return RIGHT if correct else WRONG


def auto_cei_reward(
    text: str,
    correct: bool,
    *,
    c1: float,
    c2: float,
    phrases: Sequence[str] = DEFAULT_REFUSAL_PHRASES,
    count_steps: Callable[[str], int] = blank_line_steps,
) -> float:
    """Auto-CEI's reward of one response: refusal first (:func:`refusal_reward` of its
    ``count_steps(text)``), then ``+1`` if ``correct`` else ``-1``."""
    kind = outcome(text, correct, phrases)
    if kind == REFUSED:
        return refusal_reward(count_steps(text), c1, c2)
    return 1.0 if kind == RIGHT else -1.0


# --------------------------------------------------------------------------------------------
# Initialisation, objective, metrics
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurriculumInit:
    """``c1``, ``c2`` and the hill climb's step ``s``, and what they came from."""

    c1: float
    c2: float
    s: float
    sigma: float
    mean_refusal_steps: float


def init_curriculum(step_counts: Sequence[float], refused: Sequence[bool]) -> CurriculumInit:
    """``c1``, ``c2``, ``s`` from the refusal-tuned model's responses.

    ``sigma`` is the standard deviation of the step counts over ALL responses (population form,
    ``ddof = 0``), ``mean`` their mean over the REFUSALS only; ``s = min(0.2 sigma, 0.5)``,
    ``c1 = mean + s``, ``c2 = ln(10) / (4 sigma)`` (so the refusal reward goes from -0.8 to 0.8
    over ``c1 -+ 2 sigma``).

    Raises ValueError when there is no refusal or ``sigma`` is 0 (every response equally long).
    """
    counts = [float(x) for x in step_counts]
    refused = [bool(r) for r in refused]
    if len(counts) != len(refused) or not counts:
        raise ValueError(f"init_curriculum: need as many refusal flags as step counts (> 0), got "
                         f"{len(refused)} and {len(counts)}")
    mine = [n for n, r in zip(counts, refused) if r]
    if not mine:
        raise ValueError("init_curriculum: no response is a refusal, so c1 has no mean to start "
                         "from; refusal-tune the model first (or check the refusal phrases)")
    sigma = statistics.pstdev(counts)
    if sigma <= 0:
        raise ValueError(f"init_curriculum: every response has {counts[0]:g} steps (sigma = 0): "
                         "c2 = ln(10) / (4 sigma) is undefined")
    mean = statistics.fmean(mine)
    s = min(0.2 * sigma, 0.5)
    return CurriculumInit(c1=mean + s, c2=math.log(10) / (4 * sigma), s=s, sigma=sigma,
                          mean_refusal_steps=mean)


def objective(precision: float, refusal_rate: float, lam: float = 0.2) -> float:
    """``f = (1 - lam) precision + lam (1 - refusal_rate)``."""
    return (1 - lam) * precision + lam * (1 - refusal_rate)


def _rates(kinds: Sequence[str], lam: float) -> dict[str, float]:
    n = len(kinds)
    right, refused = kinds.count(RIGHT), kinds.count(REFUSED)
    answered = n - refused
    # Nothing answered: precision 0 (never a division by zero, and no reward for refusing all).
    precision = right / answered if answered else 0.0
    rate = refused / n if n else 0.0
    return {"n": n, "accuracy": right / n if n else 0.0, "precision": precision,
            "refusal_rate": rate, "f": objective(precision, rate, lam)}


def summarize(kinds: Sequence[str], difficulties: Sequence[Hashable] | None = None, *,
              lam: float = 0.2) -> dict[str, Any]:
    """Accuracy (right / all), precision (right / answered; 0 when nothing is answered), refusal
    rate and ``f``, overall and, given ``difficulties`` (one per response), by difficulty
    (``"by_difficulty": {str(d): {...}}``, in sorted order)."""
    kinds = list(kinds)
    out = _rates(kinds, lam)
    if difficulties is not None:
        difficulties = list(difficulties)
        if len(difficulties) != len(kinds):
            raise ValueError(f"summarize: {len(kinds)} outcomes but {len(difficulties)} "
                             "difficulties")
        groups: dict[Hashable, list[str]] = {}
        for d, k in zip(difficulties, kinds):
            groups.setdefault(d, []).append(k)
        out["by_difficulty"] = {str(d): _rates(groups[d], lam) for d in sorted(groups)}
    return out


# --------------------------------------------------------------------------------------------
# The curriculum: hill climb on c1
# --------------------------------------------------------------------------------------------


@dataclass
class HillClimb:
    """The hill climb on ``c1`` by ``+-s`` while ``f`` improves, as a resumable state machine.

    ``c1`` moves on the grid ``c1_0 + i s``; every score is stored under the ``i`` it was
    measured at, and no point is measured twice. From the incumbent (the best point so far), a
    step goes in the current ``direction``; if it improves ``f`` (strictly) it becomes the
    incumbent and the climb goes on the same way; if not, the climb turns once and tries the
    other side of the incumbent; when both sides fail (or ``max_evals`` points are measured), it
    is done. (The original stopped moving after one failed step, stored scores under the next
    ``c1``, never decreased ``c1`` and compared with stale scores.)

        climb = HillClimb(c1_0=2.0, s=0.5)
        while (c1 := climb.propose()) is not None:
            climb.report(f(c1))
        climb.best_c1, climb.best_f
    """

    c1_0: float
    s: float
    direction: int = 1
    max_evals: int = 20
    scores: dict[int, float] = field(default_factory=dict)
    incumbent: int | None = None
    turned: bool = False
    pending: int | None = None
    done: bool = False

    def __post_init__(self):
        check_real("HillClimb", "c1_0", self.c1_0)
        check_real("HillClimb", "s", self.s, positive=True)
        if self.direction not in (1, -1):
            raise ValueError(f"HillClimb: direction must be 1 or -1, got {self.direction!r}")
        check_int("HillClimb", "max_evals", self.max_evals, 1)
        self.scores = {int(k): float(v) for k, v in self.scores.items()}

    def c1(self, index: int) -> float:
        return self.c1_0 + index * self.s

    @property
    def best_c1(self) -> float | None:
        return None if self.incumbent is None else self.c1(self.incumbent)

    @property
    def best_f(self) -> float | None:
        return None if self.incumbent is None else self.scores[self.incumbent]

    def _step(self, index: int, f: float) -> None:
        """Move on the score of ``index`` (a neighbour of the incumbent, or the start)."""
        if self.incumbent is None or f > self.scores[self.incumbent]:
            self.incumbent = index
        elif not self.turned:
            self.direction, self.turned = -self.direction, True
        else:
            self.done = True

    def propose(self) -> float | None:
        """The next ``c1`` to measure, or None when the climb is done. Neighbours measured
        before are not measured again: their stored score decides the move."""
        if self.pending is not None:
            return self.c1(self.pending)
        while not self.done:
            index = 0 if self.incumbent is None else self.incumbent + self.direction
            if index in self.scores:
                self._step(index, self.scores[index])
                continue
            if len(self.scores) >= self.max_evals:
                self.done = True
                break
            self.pending = index
            return self.c1(index)
        return None

    def report(self, f: float) -> None:
        """The score ``f`` of the ``c1`` that :meth:`propose` returned."""
        if self.pending is None:
            raise ValueError("HillClimb.report: nothing was proposed")
        f = check_real("HillClimb.report", "f", f)
        index, self.pending = self.pending, None
        self.scores[index] = f
        self._step(index, f)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scores"] = {str(k): v for k, v in self.scores.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HillClimb:
        return cls(**{**d, "scores": {int(k): v for k, v in d["scores"].items()}})


# --------------------------------------------------------------------------------------------
# Training data
# --------------------------------------------------------------------------------------------


def refusal_tuning_example(response: str, *, cut_at: Callable[[str], str],
                           sentence: str = DEFAULT_REFUSAL_SENTENCE) -> str:
    """A wrong ``response`` turned into a refusal: ``cut_at(response)`` (the response up to its
    final answer, as the task's format defines it) followed by the refusal ``sentence``, one
    blank line between them when the cut text is not empty."""
    head = cut_at(response).rstrip()
    return f"{head}\n\n{sentence}" if head else sentence


def resample_examples(
    rewards: Sequence[float],
    *,
    n_resample: int,
    tau: float,
    rng: random.Random,
) -> list[int]:
    """The indices of one question's samples that go into the SFT data.

    ``n_resample`` draws with replacement with probability ``exp(R / tau)`` (normalised), plus
    every original once; then only those with ``R > -1`` are kept (a wrong answer never is).
    Returns indices into ``rewards`` (repeats allowed), the draws first.
    """
    rewards = [float(r) for r in rewards]
    if not rewards:
        return []
    tau = check_real("resample_examples", "tau", tau, positive=True)
    top = max(rewards)
    weights = [math.exp((r - top) / tau) for r in rewards]  # shifted: no overflow for small tau
    drawn = rng.choices(range(len(rewards)), weights=weights, k=n_resample) if n_resample else []
    return [i for i in (*drawn, *range(len(rewards))) if rewards[i] > -1]


# --------------------------------------------------------------------------------------------
# The task a run is on
# --------------------------------------------------------------------------------------------


class Task(Protocol):
    """What :class:`AutoCEI` needs to know about a task (``ponder.toy.auto_cei.ToyTask``).

    ``train`` / ``validation`` / ``test`` are sequences of problems (any objects); the methods
    read them. ``cut_at_answer(text)`` is ``text`` up to (not including) its final answer, for
    refusal tuning; ``count_steps(text)`` counts reasoning steps for the reward.
    """

    name: str
    train: Sequence[Any]
    validation: Sequence[Any]
    test: Sequence[Any]
    max_new_tokens: int

    def prompt(self, problem: Any) -> str: ...
    def is_correct(self, problem: Any, text: str) -> bool: ...
    def difficulty(self, problem: Any) -> Hashable: ...
    def count_steps(self, text: str) -> int: ...
    def cut_at_answer(self, text: str) -> str: ...


# --------------------------------------------------------------------------------------------
# SFT
# --------------------------------------------------------------------------------------------


def sft(model, tokenizer, examples: Sequence[tuple[str, str]], *, learning_rate: float,
        epochs: float = 1.0, batch_size: int = 16, lora: LoraSettings | None = None,
        seed: int = 0, max_length: int = 1024):
    """One round's SFT on ``(prompt, completion)`` pairs (:func:`ponder.train.sft.sft_trainer`:
    TRL, the loss on the completion only; cosine schedule, no warm-up, in a temporary folder,
    nothing saved) and return the trained model, in eval mode with its KV cache on; a LoRA
    adapter is merged into the weights. No examples: the model as it is."""
    import tempfile

    if not examples:
        return model
    side = tokenizer.padding_side
    rows = [{"prompt": p, "completion": c} for p, c in examples]
    with tempfile.TemporaryDirectory(prefix="ponder-sft-") as out:
        trainer = sft_trainer(model, tokenizer, rows, out, learning_rate=learning_rate,
                              epochs=epochs, batch_size=batch_size, lora=lora, seed=seed,
                              max_length=max_length, lr_scheduler_type="cosine")
        run_trainer(trainer)
        trained = trainer.model
    tokenizer.padding_side = side
    if lora is not None:
        trained = trained.merge_and_unload()
    trained.config.use_cache = True  # the Trainer turns it off; generation wants the KV cache
    trained.eval()
    return trained


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoCEIConfig:
    """Auto-CEI's settings; the defaults are the paper's / original code's where it has them.

    Attributes
    ----------
    refusal_phrases : tuple of str
        The ONE list of refusal phrases (reward, initialisation, evaluation).
    refusal_sentence : str
        What refusal tuning appends to a cut wrong answer; must contain one of the phrases.
    keep_answer : bool
        Refusal tuning keeps the wrong final answer before the refusal sentence (True) or cuts
        it off (False, the default; "cut at the final answer" is read as "before it":
        unconfirmed against the original).
    lam : float
        ``lambda`` of the objective (0.2).
    k : int
        Samples per question per expert iteration (16), at ``temperature`` (1.0).
    n_resample : int
        Draws with replacement by ``exp(R / tau)`` added to the ``k`` originals (16).
    tau : float or None
        The resampling temperature; None: the refusal-tuned model's precision on its own
        training samples (the original used the initial model's precision).
    refusal_k : int
        Samples per training question for the refusal-tuning data.
    max_iterations : int
        Expert iterations per curriculum step (3); ``tol`` (0.003): stop when precision and
        refusal rate each move less than this from the previous iteration.
    max_curriculum_evals : int
        The most values of ``c1`` the hill climb measures.
    direction : int
        Which way the hill climb tries first (+1: a larger ``c1``, more reasoning before a
        refusal pays).
    retrain_from : {"base", "continue"}
        Each SFT starts from the run's base model (the original: a fresh LoRA on the base) or
        from the model that generated the samples.
    learning_rate, epochs, batch_size, lora
        The SFT: lr 3e-4, one epoch, LoRA r 128 / alpha 64 (None: full fine-tuning).
    refusal_learning_rate, refusal_epochs
        The refusal-tuning SFT (None: as the expert iterations').
    eval_batch_size : int
        Sequences per generate call.
    seed : int
    """

    refusal_phrases: tuple[str, ...] = DEFAULT_REFUSAL_PHRASES
    refusal_sentence: str = DEFAULT_REFUSAL_SENTENCE
    keep_answer: bool = False
    lam: float = 0.2
    k: int = 16
    temperature: float = 1.0
    n_resample: int = 16
    tau: float | None = None
    refusal_k: int = 1
    max_iterations: int = 3
    tol: float = 0.003
    max_curriculum_evals: int = 10
    direction: int = 1
    retrain_from: str = "base"
    learning_rate: float = 3e-4
    epochs: float = 1.0
    batch_size: int = 16
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    refusal_learning_rate: float | None = None
    refusal_epochs: float | None = None
    eval_batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        fn = "AutoCEIConfig"
        phrases = self.refusal_phrases
        if isinstance(phrases, str) or not phrases or not all(
                isinstance(p, str) and p for p in phrases):
            raise ValueError(f"{fn}: refusal_phrases must be a non-empty sequence of non-empty "
                             f"strings, got {phrases!r}")
        object.__setattr__(self, "refusal_phrases", tuple(phrases))
        if not is_refusal(self.refusal_sentence, self.refusal_phrases):
            raise ValueError(f"{fn}: refusal_sentence {self.refusal_sentence!r} contains none of "
                             f"the refusal_phrases {self.refusal_phrases}: its refusals would "
                             "not be recognised")
        check_probability(fn, "lam", self.lam)
        for name in ("k", "refusal_k", "max_iterations", "max_curriculum_evals", "batch_size",
                     "eval_batch_size"):
            check_int(fn, name, getattr(self, name), 1)
        check_int(fn, "n_resample", self.n_resample, 0)
        check_real(fn, "temperature", self.temperature, positive=True)
        check_real(fn, "tol", self.tol, nonnegative=True)
        check_real(fn, "learning_rate", self.learning_rate, positive=True)
        check_real(fn, "epochs", self.epochs, positive=True)
        if self.tau is not None:
            check_real(fn, "tau", self.tau, positive=True)
        if self.direction not in (1, -1):
            raise ValueError(f"{fn}: direction must be 1 or -1, got {self.direction!r}")
        if self.retrain_from not in ("base", "continue"):
            raise ValueError(f"{fn}: retrain_from must be 'base' or 'continue', got "
                             f"{self.retrain_from!r}")
        if isinstance(self.lora, Mapping):
            object.__setattr__(self, "lora", LoraSettings(**self.lora))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AutoCEIConfig:
        d = dict(d)
        d["refusal_phrases"] = tuple(d["refusal_phrases"])
        if isinstance(d.get("lora"), Mapping):
            lora = dict(d["lora"])
            if isinstance(lora.get("target_modules"), list):
                lora["target_modules"] = tuple(lora["target_modules"])
            d["lora"] = LoraSettings(**lora)
        return cls(**d)


def _write_json(path: Path, obj: Any) -> None:
    """Write atomically: a run killed while writing keeps the previous file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class AutoCEI:
    """One Auto-CEI run in a folder, resumable.

    Stages, each recorded in ``<out>/state.json`` once its output is complete (a run killed at
    any point redoes at most the stage it was in):

    1. ``base``: the starting policy is saved (``models/base``);
    2. ``refusal_data``: ``refusal_k`` samples per training question from it; a right response
       is kept as it is, a wrong one becomes :func:`refusal_tuning_example`;
    3. ``refusal_tune``: SFT on that (``models/refusal_tuned``); its validation metrics;
    4. ``init``: ``k`` samples per training question from the refusal-tuned model give ``c1``,
       ``c2``, ``s`` (:func:`init_curriculum`) and, unless set, ``tau`` (their precision);
    5. curriculum steps: the hill climb proposes ``c1``; up to ``max_iterations`` expert
       iterations, each ``sample`` (``k`` per training question from the current policy: the
       best model so far for the first iteration of a step, the previous iteration's model
       after), ``train`` (rewards with this ``c1``, :func:`resample_examples`, :func:`sft`) and
       ``eval`` (greedy on the validation split, :func:`summarize`). The step's score is its
       best iteration's ``f``; the best model over all steps is kept (``state["best"]``).

    ``c1`` is never fitted on the test split: the initialisation uses training samples and the
    hill climb validation metrics. :meth:`evaluate` measures any stored model on any split.

    Parameters
    ----------
    task : Task
    out : str or Path
        The run's folder (created).
    config : AutoCEIConfig, optional
        Needed for a new run; a resumed run reads its own (giving a different one is an error).
    base : (model, tokenizer), optional
        The starting policy, needed until the ``base`` stage is done.
    on_stage : callable, optional
        Called with each stage's name once it is recorded (progress reports, tests).
    progress : bool
        Progress bars for sampling.
    """

    def __init__(self, task: Task, out: str | Path, config: AutoCEIConfig | None = None, *,
                 base=None, on_stage: Callable[[str], None] | None = None,
                 progress: bool = False):
        self.task = task
        self.out = Path(out)
        self.on_stage = on_stage
        self.progress = progress
        self.base = base
        state_path = self.out / "state.json"
        if state_path.is_file():
            self.state = json.loads(state_path.read_text())
            saved = AutoCEIConfig.from_dict(self.state["config"])
            if config is not None and config != saved:
                raise ValueError(f"AutoCEI: {self.out} holds a run with another config; use a "
                                 "new folder or pass config=None to resume it")
            self.config = saved
            if self.state.get("task") != task.name:
                raise ValueError(f"AutoCEI: {self.out} holds a run on task "
                                 f"{self.state.get('task')!r}, not {task.name!r}")
        else:
            if config is None:
                raise ValueError(f"AutoCEI: {self.out} holds no run; give a config to start one")
            self.config = config
            self.state = {"version": 1, "task": task.name, "config": config.to_dict(),
                          "done": [], "metrics": {}, "steps": []}
            self.out.mkdir(parents=True, exist_ok=True)
            self._save()

    # -- bookkeeping --------------------------------------------------------------------------

    def _save(self) -> None:
        _write_json(self.out / "state.json", self.state)

    def _done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def _finish(self, stage: str) -> None:
        self.state["done"].append(stage)
        self._save()
        if self.on_stage is not None:
            self.on_stage(stage)

    def model_dir(self, name: str) -> Path:
        return self.out / "models" / name

    def _save_model(self, model, tokenizer, name: str) -> None:
        final = self.model_dir(name)
        tmp = final.with_name(name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)

    def load_model(self, name: str):
        """``(model, tokenizer)`` of a stored model (``"base"``, ``"refusal_tuned"``,
        ``"s0_i1"``, ...; ``"best"`` is the best by ``f``), in eval mode."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if name == "best":
            name = self.state.get("best", {}).get("model", "refusal_tuned")
        folder = self.model_dir(name)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"AutoCEI: no model {name!r} in {self.out / 'models'}")
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a bar per small checkpoint is noise
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        model.eval()
        return model, tokenizer

    def _samples_path(self, name: str) -> Path:
        return self.out / "samples" / f"{name}.jsonl"

    def _write_samples(self, name: str, rows: list[dict]) -> None:
        path = self._samples_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)

    def _read_samples(self, name: str) -> list[dict]:
        return [json.loads(line) for line in self._samples_path(name).read_text().splitlines()]

    # -- generation and scoring --------------------------------------------------------------

    def _generate(self, model, tokenizer, problems, *, n: int, temperature: float, seed: int,
                  desc: str) -> list[list[str]]:
        from ..generation import TransformersGenerator

        gen = TransformersGenerator(model, tokenizer, batch_size=self.config.eval_batch_size)
        prompts = [self.task.prompt(p) for p in problems]
        per_call = max(1, self.config.eval_batch_size // n)
        chunks = range(0, len(prompts), per_call)
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), desc=desc, unit="q", leave=False)
        out: list[list[str]] = []
        try:
            for c, start in enumerate(chunks):
                out += gen.generate(prompts[start:start + per_call], n=n,
                                    max_new_tokens=self.task.max_new_tokens,
                                    temperature=temperature, seed=seed * 100_003 + c)
                if bar is not None:
                    bar.update(len(prompts[start:start + per_call]))
        finally:
            if bar is not None:
                bar.close()
        return out

    def _sample_rows(self, model, tokenizer, *, n: int, seed: int, desc: str) -> list[dict]:
        """``n`` samples at the config's temperature per training question, judged."""
        texts = self._generate(model, tokenizer, self.task.train, n=n,
                               temperature=self.config.temperature, seed=seed, desc=desc)
        rows = []
        for q, (problem, group) in enumerate(zip(self.task.train, texts)):
            for t in group:
                rows.append({"q": q, "text": t,
                             "outcome": outcome(t, self.task.is_correct(problem, t),
                                                self.config.refusal_phrases),
                             "steps": self.task.count_steps(t)})
        return rows

    def evaluate(self, model_name: str = "best", split: str = "validation", *,
                 model_and_tokenizer=None) -> dict[str, Any]:
        """Greedy outcomes of a stored model (or the given one) on a split of the task:
        :func:`summarize` overall and by difficulty."""
        if split not in ("train", "validation", "test"):
            raise ValueError(f"AutoCEI.evaluate: split must be train, validation or test, got "
                             f"{split!r}")
        model, tokenizer = model_and_tokenizer or self.load_model(model_name)
        problems = list(getattr(self.task, split))
        texts = self._generate(model, tokenizer, problems, n=1, temperature=0.0, seed=0,
                               desc=f"eval {split}")
        kinds = [outcome(t[0], self.task.is_correct(p, t[0]), self.config.refusal_phrases)
                 for p, t in zip(problems, texts)]
        return summarize(kinds, [self.task.difficulty(p) for p in problems], lam=self.config.lam)

    # -- stages -------------------------------------------------------------------------------

    def _sft(self, start_name: str, examples, *, learning_rate=None, epochs=None, seed: int):
        cfg = self.config
        model, tokenizer = self.load_model(start_name)
        tokenizer.padding_side = "right"
        return sft(model, tokenizer, examples, learning_rate=learning_rate or cfg.learning_rate,
                   epochs=epochs or cfg.epochs, batch_size=cfg.batch_size, lora=cfg.lora,
                   seed=seed, max_length=4 * self.task.max_new_tokens + 256), tokenizer

    def init(self) -> dict[str, Any]:
        """Stages 1-4 (those not done yet). Returns the state."""
        cfg, task = self.config, self.task
        if not self._done("base"):
            if self.base is None:
                raise ValueError("AutoCEI.init: give base=(model, tokenizer), the starting policy")
            self._save_model(*self.base, "base")
            self._finish("base")
        if not self._done("refusal_data"):
            model, tok = self.load_model("base")
            rows = self._sample_rows(model, tok, n=cfg.refusal_k, seed=cfg.seed,
                                     desc="refusal data")
            self._write_samples("refusal_data", rows)
            self._finish("refusal_data")
        if not self._done("refusal_tune"):
            examples = []
            for r in self._read_samples("refusal_data"):
                prompt = task.prompt(task.train[r["q"]])
                if r["outcome"] == RIGHT:
                    examples.append((prompt, r["text"]))
                elif r["outcome"] == WRONG:
                    cut = (lambda t: t) if cfg.keep_answer else task.cut_at_answer
                    examples.append((prompt, refusal_tuning_example(
                        r["text"], cut_at=cut, sentence=cfg.refusal_sentence)))
            model, tok = self._sft("base", examples, learning_rate=cfg.refusal_learning_rate,
                                   epochs=cfg.refusal_epochs, seed=cfg.seed)
            self._save_model(model, tok, "refusal_tuned")
            self.state["metrics"]["refusal_tuned"] = self.evaluate(
                model_and_tokenizer=(model, tok))
            self._finish("refusal_tune")
        if not self._done("init"):
            model, tok = self.load_model("refusal_tuned")
            rows = self._sample_rows(model, tok, n=cfg.k, seed=cfg.seed + 1, desc="init samples")
            self._write_samples("init", rows)
            ini = init_curriculum([r["steps"] for r in rows],
                                  [r["outcome"] == REFUSED for r in rows])
            sampled = summarize([r["outcome"] for r in rows], lam=cfg.lam)
            tau = cfg.tau if cfg.tau is not None else sampled["precision"]
            if tau <= 0:
                raise ValueError("AutoCEI.init: the refusal-tuned model answered nothing right "
                                 "(precision 0), so tau = precision is 0; set config.tau")
            self.state.update(c1_0=ini.c1, c2=ini.c2, s=ini.s, sigma=ini.sigma,
                              mean_refusal_steps=ini.mean_refusal_steps, tau=tau,
                              init_samples=sampled)
            self.state["climb"] = HillClimb(ini.c1, ini.s, direction=cfg.direction,
                                            max_evals=cfg.max_curriculum_evals).to_dict()
            # The refusal-tuned model is the incumbent until an expert iteration beats it.
            self.state["best"] = {"model": "refusal_tuned", "c1": None,
                                  "f": self.state["metrics"]["refusal_tuned"]["f"]}
            self._finish("init")
        return self.state

    def run(self) -> dict[str, Any]:
        """Everything not done yet (``init`` first); returns the state (``state["best"]``:
        the best model by validation ``f``)."""
        self.init()
        cfg = self.config
        while True:
            climb = HillClimb.from_dict(self.state["climb"])
            c1 = climb.propose()
            self.state["climb"] = climb.to_dict()  # propose may have moved on cached scores
            if c1 is None:
                break
            j = len(climb.scores)  # the step's number: points measured before it
            step = self._step_record(j, c1)
            prev_metrics = self.state["metrics"][step["start"]]
            for i in range(cfg.max_iterations):
                name = f"s{j}_i{i}"
                policy = step["start"] if i == 0 else f"s{j}_i{i - 1}"
                if not self._done(f"sample {name}"):
                    if j == 0 and i == 0 and policy == "refusal_tuned":
                        rows = self._read_samples("init")  # the same policy: reuse its samples
                    else:
                        model, tok = self.load_model(policy)
                        rows = self._sample_rows(model, tok, n=cfg.k,
                                                 seed=cfg.seed + 1000 * (j + 1) + i,
                                                 desc=f"samples {name}")
                    self._write_samples(name, rows)
                    self._finish(f"sample {name}")
                if not self._done(f"train {name}"):
                    examples = self._expert_data(self._read_samples(name), c1,
                                                 seed=cfg.seed + 7919 * (j + 1) + i)
                    start = "base" if cfg.retrain_from == "base" else policy
                    model, tok = self._sft(start, examples, seed=cfg.seed + j * 10 + i)
                    self._save_model(model, tok, name)
                    self.state["data_sizes"] = {**self.state.get("data_sizes", {}),
                                                name: len(examples)}
                    self._finish(f"train {name}")
                if not self._done(f"eval {name}"):
                    m = self.evaluate(name)
                    self.state["metrics"][name] = m
                    step["iterations"].append(name)
                    self._finish(f"eval {name}")
                m = self.state["metrics"][name]
                if (abs(m["precision"] - prev_metrics["precision"]) < cfg.tol
                        and abs(m["refusal_rate"] - prev_metrics["refusal_rate"]) < cfg.tol):
                    break
                prev_metrics = m
            if not self._done(f"step {j}"):
                best_it = max(step["iterations"], key=lambda n: self.state["metrics"][n]["f"])
                f = self.state["metrics"][best_it]["f"]
                step.update(best=best_it, f=f)
                if f > self.state["best"]["f"]:
                    self.state["best"] = {"model": best_it, "c1": c1, "f": f}
                climb.report(f)
                self.state["climb"] = climb.to_dict()
                self._finish(f"step {j}")
        self.state["finished"] = True
        self._save()
        return self.state

    def _step_record(self, j: int, c1: float) -> dict:
        steps = self.state["steps"]
        if len(steps) <= j:
            steps.append({"index": j, "c1": c1, "start": self.state["best"]["model"],
                          "iterations": []})
            self._save()
        return steps[j]

    def _expert_data(self, rows: list[dict], c1: float, *, seed: int) -> list[tuple[str, str]]:
        """The SFT pairs of one expert iteration: per question, the rewards under ``c1`` and
        :func:`resample_examples`."""
        cfg, task = self.config, self.task
        by_q: dict[int, list[dict]] = {}
        for r in rows:
            by_q.setdefault(r["q"], []).append(r)
        rng = random.Random(seed)
        examples = []
        for q in sorted(by_q):
            group = by_q[q]
            rewards = [refusal_reward(r["steps"], c1, self.state["c2"]) if r["outcome"] == REFUSED
                       else (1.0 if r["outcome"] == RIGHT else -1.0) for r in group]
            prompt = task.prompt(task.train[q])
            for i in resample_examples(rewards, n_resample=cfg.n_resample,
                                       tau=self.state["tau"], rng=rng):
                examples.append((prompt, group[i]["text"]))
        return examples

