"""The toy PRM: a process reward model for the arithmetic world, trained by ponder's own PRM
trainer (:class:`ponder.rewards.train.PRMTrainer`) on the CPU and shipped in the package.

Recipe (:data:`PRM_SPEC`, reproduced by :func:`train_toy_prm` / ``ponder toy train --models
prm``):

- **Data** (train split only): for each of ``train_problems`` problems, ``samples`` solutions
  sampled from the toy draft model at temperature 1 (its natural slips), one systematically
  corrupted solution (:func:`ponder.toy.corrupt`: one wrong result or operand, carried forward)
  and, for a share of them, the reference solution. The steps are the ``"\\n\\n"``-separated
  chunks, the ``"Answer: N"`` line included.
- **Labels**: step-level verification, "first error" hard labels (:func:`label_solution`): a
  step is good iff it and every step before it are right (:func:`ponder.toy.check_steps`), the
  answer line iff additionally the answer is right. These are the ``eta -> inf`` ER-PRM labels of
  a perfect completer: no completion recovers from an error, and from a correct prefix the
  correct continuation exists.
- **Model**: the toy ``"target"`` LM's weights as the starting point (PRMs are usually
  initialised from a policy) with two new decoder layers on top (zero-initialised outputs, see
  :func:`_init_model`), fine-tuned with the soft-label cross-entropy over the ``"+"`` / ``"-"``
  rows of its LM head at the ``" k"`` step tags (:func:`toy_convention`).
- **Measured** on held-out test problems and written to ``recipe.json``: step-level AUC and
  accuracy, and best-of-N accuracy (N draft samples) of the PRM's aggregates next to majority
  vote, the first sample and the oracle.

    from ponder.toy import load_toy_prm
    prm = load_toy_prm()
    prm.score(["Q: 12+34-5=?"], [["12+34=46", "46-5=41", "Answer: 41"]])  # ~[[1, 1, 1]]
"""

from __future__ import annotations

import contextlib
import json
import platform
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .arithmetic import STEP_SEPARATOR, Problem, check_steps, corrupt, extract_answer, verify
from .models import SPECS, _no_progress_bars, default_weights_dir, load_toy_model, save_toy_model
from .train import cpu_training_args, run_trainer

__all__ = [
    "PRM_SPEC",
    "ToyPRMSpec",
    "evaluate_toy_prm",
    "format_prm_result",
    "label_solution",
    "load_toy_prm",
    "make_prm_records",
    "train_toy_prm",
]


@dataclass(frozen=True)
class ToyPRMSpec:
    """How the toy PRM is made (see the module docstring). Sizes are counts of problems."""

    name: str = "prm"
    init: str = "target"
    extra_layers: int = 2
    freeze_base: bool = False
    train_problems: int = 1500
    samples: int = 1
    corruptions: tuple[str, ...] = ("result", "operand")
    reference_share: float = 1.0
    temperature: float = 1.0
    labels: str = "local"
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    eval_problems: int = 300
    best_of_n: int = 8
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRM_SPEC = ToyPRMSpec()


def label_solution(problem: Problem, text: str, mode: str = "first_error"
                   ) -> tuple[list[str], list[float]]:
    """The steps of a solution ``text`` of ``problem`` and their labels.

    Steps are the non-empty ``"\\n\\n"`` chunks up to and including the first ``"Answer:"``
    chunk (anything after it is not part of the solution). Returns ``(steps, labels)`` with
    labels in {0.0, 1.0}; a solution with no chunk gives two empty lists.

    ``mode="first_error"``: a step is good iff it and all steps before it are right (the answer
    line iff the answer is right, too). ``mode="local"``: each step is judged given the steps
    before it as written (:func:`ponder.toy.check_steps`; the answer line is good iff every
    step of the problem was written and it repeats the last result), the way a human grader
    marks steps: a solution is right iff all its steps are good.
    """
    if mode not in ("first_error", "local"):
        raise ValueError(f"label_solution: mode must be 'first_error' or 'local', got {mode!r}")
    chunks = [c.strip() for c in text.split(STEP_SEPARATOR) if c.strip()]
    steps: list[str] = []
    for c in chunks:
        steps.append(c)
        if "Answer:" in c:
            break
    body = [s for s in steps if "Answer:" not in s]
    flags = check_steps(problem, STEP_SEPARATOR.join(body))
    if len(steps) > len(body):
        if mode == "local":  # every step of the problem is done and the answer repeats the
            # last written result: what a correct solver writes at this point
            last = body[-1].rsplit("=", 1)[-1].strip() if body else None
            flags.append(len(body) == problem.n_steps and last is not None
                         and extract_answer(steps[-1]) == _int_or_none(last))
        else:  # the answer line: right iff the answer is
            flags.append(verify(problem, steps[-1]))
    if mode == "local":
        return steps, [1.0 if f else 0.0 for f in flags]
    labels, ok = [], True
    for f in flags:
        ok = ok and bool(f)
        labels.append(1.0 if ok else 0.0)
    return steps, labels


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def draft_generator(batch_size: int = 256, weights_dir: str | Path | None = None):
    """A :class:`ponder.generation.TransformersGenerator` on the toy draft model (the policy whose
    samples the toy PRM learns from)."""
    from ..generation import TransformersGenerator

    model, tok = load_toy_model("draft", weights_dir=weights_dir)
    return TransformersGenerator(model, tok, batch_size=batch_size)


def max_solution_tokens(problems: Sequence[Problem]) -> int:
    """A ``max_new_tokens`` for sampling solutions of ``problems`` (characters = tokens): the
    longest reference solution plus 16."""
    return max(len(p.target) for p in problems) + 16


def make_prm_records(problems: Sequence[Problem], *, samples: int = 2,
                     reference_share: float = 0.35, temperature: float = 1.0, seed: int = 0,
                     labels: str = "local", corruptions: Sequence[str] = ("any",),
                     generator=None) -> list[dict[str, Any]]:
    """PRM training records ``{"question", "steps", "value", "source"}`` for ``problems``: draft
    samples, one corruption of each kind in ``corruptions`` (see :func:`ponder.toy.corrupt`),
    and reference solutions for a ``reference_share`` of them."""
    rng = random.Random(seed)
    records: list[dict[str, Any]] = []

    def add(p: Problem, text: str, source: str) -> None:
        steps, values = label_solution(p, text, labels)
        if steps:
            records.append({"question": p.question, "steps": steps, "value": values,
                            "source": source})

    if samples > 0:
        gen = generator or draft_generator()
        outs = gen.generate([p.prompt for p in problems], n=samples,
                            max_new_tokens=max_solution_tokens(problems), temperature=temperature,
                            seed=seed)
        for p, texts in zip(problems, outs):
            for text in texts:
                add(p, text, "draft")
    for p in problems:
        # Minimal pairs: the reference next to a result slip and an operand slip of the same
        # problem, so that only the arithmetic (not the position or the problem) tells them apart.
        for kind in corruptions:
            add(p, corrupt(p, rng, kind=kind), "corrupt")
        if rng.random() < reference_share:
            add(p, p.target, "reference")
    return records


CHECK_PRM_NAMES = {"check": "prm-check", "check-draft": "prm-check-draft",
                   "check-draft-local": "prm-check-draft-local"}


def load_toy_prm(*, weights_dir: str | Path | None = None, batch_size: int = 64,
                 dtype: torch.dtype = torch.float32, kind: str = "check"):
    """The shipped toy PRM as a ready :class:`ponder.rewards.ProcessRewardModel` (offline).

    ``prm.score(questions, steps)`` takes toy questions (``"Q: 12+34-5=?"``, or the prompt with
    its trailing blank line) and step lists (``["12+34=46", "46-5=41", "Answer: 41"]``).

    ``kind="check"`` (the default): the step-checking PRM of :mod:`ponder.toy.prm_check` (a
    learned head on the frozen toy target's token log-probs, ``weights/prm-check``);
    ``kind="check-draft"``: the same head on the toy draft's log-probs (``weights/
    prm-check-draft``: a quarter of the cost, a weaker judge); ``kind="check-draft-local"``: the
    same architecture on the draft, trained on exact step labels of the draft's own greedy and
    T = 1 solutions (``weights/prm-check-draft-local``; RSD's nearly free judge: with
    ``rsd_generate(prm_from_draft=True)`` it scores a step from the draft's generation pass,
    only its 152-parameter head runs); ``kind="lm"``: the first toy PRM
    (the fine-tuned target with two extra layers, ``weights/prm``), which judges steps better
    than chance but does not help best-of-N.
    """
    from ..rewards import ProcessRewardModel, toy_convention

    if kind not in (*CHECK_PRM_NAMES, "lm"):
        raise ValueError(f"load_toy_prm: kind must be one of {[*CHECK_PRM_NAMES, 'lm']}, got "
                         f"{kind!r}")
    if kind != "lm":
        from .prm_check import load_check_prm

        folder = (default_weights_dir() if weights_dir is None else Path(weights_dir))
        return load_check_prm(folder / CHECK_PRM_NAMES[kind], weights_dir=weights_dir,
                              batch_size=batch_size)
    model, tok = load_toy_model(PRM_SPEC.name, weights_dir=weights_dir, dtype=dtype)
    return ProcessRewardModel(model, tok, toy_convention(), batch_size=batch_size)


def _init_model(spec: ToyPRMSpec, source_dir: str | Path | None):
    """The init LM with ``spec.extra_layers`` new decoder layers on top (before the final norm).

    The new layers' output projections (attention ``o_proj``, MLP ``down_proj``) start at zero,
    so the stack first computes exactly the init LM; they add the depth that judging a step
    needs on top of the LM's own computation: the LM predicts each token in its last layers,
    then a layer compares the predictions with the tokens written, then one gathers the
    mismatches at the step tag.
    """
    base, tok = load_toy_model(spec.init, weights_dir=source_dir)
    if spec.extra_layers == 0:
        return base, tok
    from transformers import LlamaForCausalLM

    cfg = base.config
    cfg.num_hidden_layers = cfg.num_hidden_layers + spec.extra_layers
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[0]] * cfg.num_hidden_layers
    model = LlamaForCausalLM(cfg)
    _missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected, unexpected
    with torch.no_grad():
        for layer in model.model.layers[-spec.extra_layers:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    if spec.freeze_base:  # keep the LM's computation; train the new layers, norm and head
        model.model.embed_tokens.requires_grad_(False)
        for layer in model.model.layers[:-spec.extra_layers]:
            layer.requires_grad_(False)
    return model, tok


def evaluate_toy_prm(prm, problems: Sequence[Problem], *, n: int = 8, temperature: float = 1.0,
                     seed: int = 1, labels: str = "local", generator=None) -> dict[str, Any]:
    """Held-out quality of a toy PRM on ``problems``.

    - ``steps``: step-level AUC / accuracy (threshold 0.5) over ``n`` draft samples of each
      problem plus one corruption each, against ``labels`` (:func:`label_solution`'s mode);
    - ``steps_draft``: the same on the draft samples alone;
    - ``steps_first_error``: all steps against first-error labels;
    - ``best_of_n``: accuracy of each selection rule among the ``n`` draft samples.
    """
    from ..rewards.best_of_n import best_of_n
    from ..rewards.train import step_metrics

    gen = generator or draft_generator()
    outs = gen.generate([p.prompt for p in problems], n=n,
                        max_new_tokens=max_solution_tokens(problems), temperature=temperature,
                        seed=seed)
    rng = random.Random(seed)
    questions, steps, values, first, is_draft = [], [], [], [], []
    for p, texts in zip(problems, outs):
        for j, text in enumerate([*texts, corrupt(p, rng)]):
            s, lab = label_solution(p, text, labels)
            questions.append(p.question)
            steps.append(s)
            values.append(lab)
            first.append(label_solution(p, text, "first_error")[1])
            is_draft.append(j < n)
    scores = prm.score(questions, steps)

    def flat(rows, keep=None):
        return [x for i, r in enumerate(rows) if keep is None or keep[i] for x in r]

    per = n + 1
    bon = best_of_n(
        [scores[i * per:i * per + n] for i in range(len(problems))],
        [[verify(p, t) for t in texts] for p, texts in zip(problems, outs)],
        [[extract_answer(t) for t in texts] for texts in outs],
    )
    return {"labels": labels,
            "steps": step_metrics(flat(scores), flat(values)),
            "steps_draft": step_metrics(flat(scores, is_draft), flat(values, is_draft)),
            "steps_first_error": step_metrics(flat(scores), flat(first)),
            "best_of_n": {"n": n, "problems": len(problems), "temperature": temperature,
                          "accuracy": bon.accuracy}}


def train_toy_prm(out_dir: str | Path | None = None, *, spec: ToyPRMSpec = PRM_SPEC,
                  source_dir: str | Path | None = None, steps: int | None = None,
                  progress: bool = True, evaluate: bool = True) -> dict[str, Any]:
    """Make the toy PRM (data, training, measurement) into ``out_dir/<spec.name>/``.

    ``out_dir`` defaults to the package's weights folder (this regenerates the shipped PRM);
    the draft model (data and evaluation) and the init model are read from ``source_dir``
    (the shipped weights by default). Returns what ``recipe.json`` holds.
    """
    import transformers

    from ..rewards import toy_convention
    from ..rewards.train import PRMDataCollator, PRMDataset, PRMTrainer

    out_dir = default_weights_dir() if out_dir is None else Path(out_dir)
    folder = Path(out_dir) / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    steps = spec.steps if steps is None else int(steps)
    parts = SPECS[spec.init].splits()
    t0 = time.perf_counter()
    draft = draft_generator(weights_dir=source_dir)
    records = make_prm_records(parts.train[:spec.train_problems], samples=spec.samples,
                               reference_share=spec.reference_share,
                               temperature=spec.temperature, seed=spec.seed,
                               labels=spec.labels, corruptions=spec.corruptions,
                               generator=draft)
    data_seconds = time.perf_counter() - t0
    model, tok = _init_model(spec, source_dir)
    model.train()
    data = PRMDataset(records, tok, toy_convention())
    transformers.set_seed(spec.seed)
    with tempfile.TemporaryDirectory(prefix="ponder-toy-prm-") as scratch, \
            (_no_progress_bars() if not progress else contextlib.nullcontext()):
        args = cpu_training_args(scratch, steps=steps, batch_size=spec.batch_size,
                                 learning_rate=spec.learning_rate,
                                 weight_decay=spec.weight_decay, warmup=spec.warmup,
                                 seed=spec.seed, progress=progress, log_points=25)
        trainer = PRMTrainer(model=model, args=args, train_dataset=data,
                             data_collator=PRMDataCollator(tok.pad_token_id),
                             label_ids=data.label_ids)
        train_seconds, losses = run_trainer(trainer, progress=progress)
    save_toy_model(model, tok, folder)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    n_steps = sum(len(r["value"]) for r in records)
    result: dict[str, Any] = {
        "name": spec.name,
        "spec": spec.to_dict(),
        "convention": "toy: '<question>\\n\\n<step> k\\n\\n<step> k...', labels '+'/'-'",
        "labels": spec.labels,
        "data": {"records": len(records), "by_source": counts, "steps": n_steps,
                 "good_steps": sum(v for r in records for v in r["value"]),
                 "seconds": round(data_seconds, 1)},
        "steps": steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 1),
        "threads": torch.get_num_threads(),
        "loss": losses,
        "test": None,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }
    if evaluate:
        prm = load_toy_prm(weights_dir=out_dir)  # measured as shipped (fp16 weights)
        result["test"] = evaluate_toy_prm(prm, parts.test[:spec.eval_problems],
                                          n=spec.best_of_n, seed=spec.seed + 1,
                                          labels=spec.labels, generator=draft)
    (folder / "recipe.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def format_prm_result(recipe: dict[str, Any]) -> str:
    """One line: the step AUC / accuracy and the best-of-N accuracies of a ``recipe.json``."""
    test = recipe.get("test") or {}
    if not test:
        return "prm     (not measured)"
    st, bon = test["steps"], test["best_of_n"]
    rules = ", ".join(f"{k} {v:.1%}" for k, v in bon["accuracy"].items())
    return (f"prm     step AUC {st['auc']:.3f}, step accuracy {st['accuracy']:.1%} on {st['n']} "
            f"held-out steps; best-of-{bon['n']} on {bon['problems']} problems: {rules}")
