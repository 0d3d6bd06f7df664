"""Training the toy models (:data:`ponder.toy.models.SPECS`) from scratch, on the CPU.

Each model learns to write ``Problem.target + <eos>`` after ``Problem.prompt`` (the loss is on the
solution and the ``<eos>`` only; the prompt's labels are -100), on the train split of its spec's
problems, with a ``transformers.Trainer``: AdamW, linear warm-up then cosine decay (one-cycle),
gradient clipping at 1, fp32 on the CPU. The weights are saved in fp16 next to the tokenizer and a
``recipe.json`` with the spec, the training time, the loss curve and the greedy accuracies
measured on the validation and test splits, by number of steps.

    from ponder.toy.train import train_all
    train_all("toy-weights")          # ./toy-weights/draft, ./toy-weights/target (minutes)
"""

from __future__ import annotations

import contextlib
import json
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .arithmetic import Problem
from .models import (
    SPECS,
    ToyModelSpec,
    _no_progress_bars,
    evaluate_accuracy,
    load_toy_model,
    save_toy_model,
)
from .tokenizer import make_tokenizer

__all__ = ["cpu_training_args", "format_accuracies", "run_trainer", "train_all", "train_toy_model"]


class _Examples(torch.utils.data.Dataset):
    """Tokenised problems: ``input_ids`` = bos + prompt + target + eos, ``labels`` = -100 on
    bos + prompt."""

    def __init__(self, problems: Sequence[Problem], tokenizer):
        prompts = tokenizer([p.prompt for p in problems])["input_ids"]
        targets = tokenizer([p.target for p in problems], add_special_tokens=False)["input_ids"]
        eos = tokenizer.eos_token_id
        self.items = [
            (prompt + target + [eos], [-100] * len(prompt) + target + [eos])
            for prompt, target in zip(prompts, targets)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids, labels = self.items[i]
        return {"input_ids": ids, "labels": labels}


def _collate(pad_id: int):
    def collate(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), -100, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):  # right padding
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            labels[row, :n] = torch.tensor(f["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def _resolve(name: str | ToyModelSpec) -> ToyModelSpec:
    if isinstance(name, ToyModelSpec):
        return name
    if name not in SPECS:
        raise ValueError(f"train_toy_model: unknown toy model {name!r}; known: {sorted(SPECS)}")
    return SPECS[name]


def train_toy_model(
    name: str | ToyModelSpec,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    eval_problems: int | None = None,
) -> dict[str, Any]:
    """Train one toy model from scratch and save it to ``out_dir/<name>/``.

    Parameters
    ----------
    name : str or ToyModelSpec
        ``"draft"`` or ``"target"`` (a key of :data:`ponder.toy.models.SPECS`), or a spec.
    out_dir : str or Path
        The weights folder: the model goes to ``out_dir/<spec.name>/`` (``config.json``,
        fp16 ``model.safetensors``, ``generation_config.json``, the tokenizer files and
        ``recipe.json``), which :func:`ponder.toy.load_toy_model` reads with
        ``weights_dir=out_dir``.
    steps : int, optional
        Optimiser steps; the spec's by default (the schedule follows).
    seed : int
        Seeds the initialisation and the data order.
    progress : bool
        Show the Trainer's progress bar and loss log; quiet otherwise.
    eval_problems : int, optional
        Validation and test problems measured after training (the spec's by default; 0 skips).

    Returns
    -------
    dict
        What ``recipe.json`` holds: ``spec``, ``seed``, ``steps``, ``parameters``,
        ``train_seconds``, ``loss`` (``[[step, loss], ...]``), ``validation`` and ``test``
        (:func:`ponder.toy.evaluate_accuracy` results, or None) and ``versions``.
    """
    try:
        import accelerate  # noqa: F401  (the Trainer's; a clear error here rather than there)
        import transformers  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "ponder.toy.train needs transformers, safetensors and accelerate: "
            "pip install 'ponder[hf]'"
        ) from err

    spec = _resolve(name)
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"train_toy_model: steps must be an integer >= 1, got {steps!r}")
        spec = replace(spec, steps=steps)
    eval_problems = spec.eval_problems if eval_problems is None else int(eval_problems)
    folder = Path(out_dir) / spec.name
    folder.mkdir(parents=True, exist_ok=True)

    tokenizer = make_tokenizer()
    parts = spec.splits()

    with contextlib.nullcontext() if progress else _no_progress_bars():
        return _train(spec, folder, parts, tokenizer, seed=seed, progress=progress,
                      eval_problems=eval_problems, out_dir=out_dir)


def cpu_training_args(scratch: str, *, steps: int, batch_size: int, learning_rate: float,
                      weight_decay: float, warmup: float, seed: int, progress: bool,
                      log_points: int = 50):
    """The ``TrainingArguments`` every toy model is trained with: AdamW (betas 0.9, 0.98),
    gradient clipping at 1, warm-up (``warmup``: a fraction of ``steps`` if < 1, else steps) then
    cosine decay, fp32 on the CPU, no checkpoints or reporting, ``log_points`` loss records."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=scratch, max_steps=steps, per_device_train_batch_size=batch_size,
        learning_rate=learning_rate, weight_decay=weight_decay, adam_beta1=0.9, adam_beta2=0.98,
        max_grad_norm=1.0, lr_scheduler_type="cosine", warmup_steps=warmup,
        logging_steps=max(1, steps // log_points), save_strategy="no", eval_strategy="no",
        report_to="none", use_cpu=True, seed=seed, data_seed=seed, dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=not progress,
    )


def run_trainer(trainer, *, progress: bool) -> tuple[float, list[list[float]]]:
    """``trainer.train()``; returns its wall time (s) and the logged ``[step, loss]`` pairs."""
    from transformers.trainer_callback import PrinterCallback

    if not progress:  # without tqdm the Trainer prints each log dict instead
        trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [[h["step"], round(h["loss"], 5)] for h in trainer.state.log_history if "loss" in h]
    return seconds, losses


def _train(spec, folder, parts, tokenizer, *, seed, progress, eval_problems, out_dir):
    import transformers
    from transformers import LlamaForCausalLM, Trainer

    train_set = _Examples(parts.train, tokenizer)
    transformers.set_seed(seed)
    model = LlamaForCausalLM(spec.llama_config())
    n_params = sum(p.numel() for p in model.parameters())

    with tempfile.TemporaryDirectory(prefix="ponder-toy-train-") as scratch:
        args = cpu_training_args(scratch, steps=spec.steps, batch_size=spec.batch_size,
                                 learning_rate=spec.learning_rate,
                                 weight_decay=spec.weight_decay, warmup=spec.warmup, seed=seed,
                                 progress=progress)
        trainer = Trainer(model=model, args=args, train_dataset=train_set,
                          data_collator=_collate(tokenizer.pad_token_id))
        seconds, losses = run_trainer(trainer, progress=progress)

    save_toy_model(model, tokenizer, folder)

    result: dict[str, Any] = {
        "name": spec.name,
        "spec": spec.to_dict(),
        "seed": seed,
        "steps": spec.steps,
        "parameters": n_params,
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "loss": losses,
        "validation": None,
        "test": None,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }
    if eval_problems > 0:
        # Measured on the saved (fp16) weights, as they are shipped.
        saved, tok = load_toy_model(spec.name, weights_dir=out_dir)
        for part in ("validation", "test"):
            result[part] = evaluate_accuracy(saved, tok, getattr(parts, part)[:eval_problems])
    (folder / "recipe.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def train_all(
    out_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    seed: int = 0,
    progress: bool = True,
    eval_problems: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Train every toy model of :data:`ponder.toy.models.SPECS` (or ``names``) into ``out_dir``.

    ``train_all(ponder.toy.models.default_weights_dir())`` regenerates the shipped weights.
    Returns ``{name: train_toy_model(...) result}``.
    """
    names = list(SPECS) if names is None else list(names)
    return {
        name: train_toy_model(name, out_dir, seed=seed, progress=progress,
                              eval_problems=eval_problems)
        for name in names
    }


def format_accuracies(results: dict[str, dict[str, Any]], part: str = "test") -> str:
    """A plain-text table of greedy accuracy by number of steps, one row per model."""
    rows = {name: r[part] for name, r in results.items() if r.get(part)}
    if not rows:
        return ""
    steps = sorted({int(k) for acc in rows.values() for k in acc["by_steps"]})
    head = f"{'model':<8}" + "".join(f"{f'{k} step' + ('s' if k > 1 else ''):>9}" for k in steps)
    lines = [head + f"{'all':>8}"]
    for name, acc in rows.items():
        by = {int(k): v for k, v in acc["by_steps"].items()}
        cells = "".join(f"{by[k]:>9.1%}" if k in by else f"{'-':>9}" for k in steps)
        lines.append(f"{name:<8}{cells}{acc['accuracy']:>8.1%}")
    return "\n".join(lines)

