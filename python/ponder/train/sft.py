"""Supervised fine-tuning on prompt-completion pairs through TRL, shared by the methods.

Auto-CEI's expert-iteration rounds and BOLT's stage 2 both fine-tune a causal LM on
``{"prompt", "completion"}`` rows with the loss on the completion only; BOLT's stage 3 runs TRL's
``DPOTrainer`` with the same settings. What they share lives here, once:

- :func:`trl_args`: the ``SFTConfig`` / ``DPOConfig`` fields ponder sets (no activation
  checkpointing, fp32 on a CPU, nothing reported, nothing checkpointed, one log entry per step);
- :class:`LoraSettings` and :func:`lora_config`: a fresh peft LoRA adapter;
- :func:`sft_trainer`: a ready ``trl.SFTTrainer``;
- :func:`run_trainer`: train with TRL's known warning about transformers' deprecations kept out of the
  caller's warnings, quietly when asked;
- :func:`quiet`: no datasets or transformers progress bars inside.

TRL's own defaults that ponder overrides, and why: ``bf16=True`` (TRL turns on bf16 mixed
precision whenever fp16 is off; on a CPU that is an autocast the toy models neither need nor run
faster with) and ``activation_checkpointing=True`` (small models: memory is not the limit).
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["LoraSettings", "lora_config", "quiet", "run_trainer", "sft_trainer", "trl_args"]


@dataclass(frozen=True)
class LoraSettings:
    """A fresh LoRA adapter for an SFT run (peft's ``LoraConfig`` fields)."""

    r: int = 128
    alpha: int = 64
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"


def lora_config(lora: LoraSettings):
    """``peft.LoraConfig`` for a causal LM from ``lora``."""
    from peft import LoraConfig

    targets = lora.target_modules
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=targets if isinstance(targets, str) else list(targets),
                      task_type="CAUSAL_LM")


def _on_cuda(model) -> bool:
    return next(model.parameters()).device.type == "cuda"


def trl_args(model, output_dir: str | Path, *, learning_rate: float, batch_size: int,
             epochs: float = 1.0, max_steps: int = -1, seed: int = 0,
             gradient_accumulation_steps: int = 1, progress: bool = False,
             **extra: Any) -> dict[str, Any]:
    """Keyword arguments for ``trl.SFTConfig`` / ``trl.DPOConfig``; ``extra`` adds or overrides
    any field (``lr_scheduler_type``, ``max_length``, ``beta``, ...)."""
    cpu = model is None or not _on_cuda(model)
    # gradient_checkpointing=None rather than False: transformers warns about the old name
    # whenever it is set, and TRL reads activation_checkpointing instead.
    args = dict(output_dir=str(output_dir), learning_rate=learning_rate,
                per_device_train_batch_size=batch_size, num_train_epochs=epochs,
                max_steps=max_steps, gradient_accumulation_steps=gradient_accumulation_steps,
                seed=seed, data_seed=seed, gradient_checkpointing=None,
                activation_checkpointing=False, bf16=False if cpu else None, use_cpu=cpu,
                report_to="none", save_strategy="no", logging_steps=1,
                disable_tqdm=not progress, dataloader_num_workers=0)
    args.update(extra)
    return args


@contextlib.contextmanager
def quiet(progress: bool = False) -> Iterator[None]:
    """Without ``progress``: no datasets bars (TRL's tokenising passes) and no transformers bars
    (saving weights) while inside; the previous settings come back afterwards."""
    if progress:
        yield
        return
    import datasets
    from transformers.utils import logging as hf_logging

    was, hf_was = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()
        if hf_was:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _trl_deprecations() -> Iterator[None]:
    # TRL 1.16 (and peft) read model.is_gradient_checkpointing, which transformers 5.2x
    # deprecates: a warning about their code, not the caller's, with nothing to act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*",
                                category=FutureWarning)
        yield


def run_trainer(trainer, progress: bool = False) -> None:
    """``trainer.train()``; without ``progress`` no metrics dict is printed per log step (the
    Trainer prints them when tqdm is off)."""
    from transformers.trainer_callback import PrinterCallback

    if not progress:
        trainer.remove_callback(PrinterCallback)
    with _trl_deprecations():
        trainer.train()


def sft_trainer(model, tokenizer, rows: Sequence[Mapping[str, Any]], output_dir: str | Path, *,
                learning_rate: float, batch_size: int, epochs: float = 1.0,
                max_length: int | None = 1024, lora: LoraSettings | None = None,
                progress: bool = False, **args: Any):
    """TRL's ``SFTTrainer`` on prompt-completion ``rows`` (``{"prompt", "completion"}``, plain
    text or conversational), the loss on the completion only (TRL appends the end-of-sequence
    token to each completion). With ``lora``, a fresh peft adapter on ``model``. ``args``: any
    other :func:`trl_args` keyword or ``trl.SFTConfig`` field. Call :func:`run` to train."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise ValueError("sft_trainer: rows is empty (expected prompt-completion pairs)")
    config = SFTConfig(**trl_args(model, output_dir, learning_rate=learning_rate,
                                  batch_size=batch_size, epochs=epochs, progress=progress,
                                  completion_only_loss=True, max_length=max_length, **args))
    with quiet(progress), _trl_deprecations():
        return SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(list(rows)),
                          processing_class=tokenizer,
                          peft_config=None if lora is None else lora_config(lora))
