"""The toy language models: a weaker ``"draft"`` and a stronger ``"target"``, shipped in the package.

Both are small ``transformers.LlamaForCausalLM`` models over the character tokenizer of
:mod:`ponder.toy.tokenizer`, trained from scratch by :mod:`ponder.toy.train` on the train split
of the arithmetic world (:mod:`ponder.toy.arithmetic`) to write ``Problem.target`` (the steps
and the ``"Answer: N"`` line) followed by ``<eos>`` after ``Problem.prompt``. Their weights ship
in ``ponder/toy/weights/<name>/`` (``config.json``, fp16 ``model.safetensors``, the tokenizer and
``recipe.json``: the spec they were trained with and their measured accuracies), so that a folder
is also loadable by transformers alone (``AutoModelForCausalLM.from_pretrained(folder)``).

    from ponder.toy import load_toy_model, evaluate_accuracy, SPECS
    model, tok = load_toy_model("target")          # offline, fp32, eval mode; tok pads left
    test = SPECS["target"].splits().test[:300]
    evaluate_accuracy(model, tok, test)            # {"accuracy": ..., "by_steps": {1: ..}, ..}

Retrain them with :func:`ponder.toy.train.train_all` (``ponder toy train``).

transformers is imported only when a model is built or loaded, so ``import ponder.toy`` never
needs it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .arithmetic import ArithmeticConfig, Problem, Splits, split, verify
from .tokenizer import ALPHABET, SPECIAL_TOKENS, make_tokenizer

__all__ = [
    "SPECS",
    "ToyModelSpec",
    "default_weights_dir",
    "evaluate_accuracy",
    "generate_solutions",
    "load_toy_model",
    "read_recipe",
]

VOCAB_SIZE = len(SPECIAL_TOKENS) + len(ALPHABET)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2  # fixed by SPECIAL_TOKENS' order

# What every toy model shares; a spec's ``config`` is applied on top.
_BASE_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "pad_token_id": PAD_ID,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-5,
    "attention_dropout": 0.0,
}


@dataclass(frozen=True)
class ToyModelSpec:
    """How one toy model is built and trained (the recipe that reproduces the shipped weights).

    Attributes
    ----------
    name : str
        ``"draft"``, ``"target"``; also the weights' folder name.
    description : str
        One line, for reports.
    config : Mapping[str, Any]
        ``transformers.LlamaConfig`` keyword arguments (layers, sizes, heads); the vocabulary
        size, special token ids and position range come from the tokenizer (see
        :meth:`llama_config`).
    steps : int
        Optimiser steps.
    batch_size : int
        Problems per step.
    learning_rate, weight_decay : float
        AdamW's peak learning rate and decoupled weight decay.
    warmup : float
        Fraction of the steps of linear warm-up before the cosine decay to zero (one-cycle).
    data : ArithmeticConfig
        The problems drawn (then split by ``split_seed``; the model trains on the train part).
    split_seed : int
        The seed of :func:`ponder.toy.split`.
    eval_problems : int
        How many validation and test problems the accuracies in ``recipe.json`` are measured on.
    """

    name: str
    description: str
    config: Mapping[str, Any]
    steps: int
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    data: ArithmeticConfig = field(default_factory=lambda: ArithmeticConfig(n=100_000, seed=0))
    split_seed: int = 0
    eval_problems: int = 300

    def llama_config(self):
        """The ``transformers.LlamaConfig`` of this model."""
        from transformers import LlamaConfig

        return LlamaConfig(**{**_BASE_CONFIG, **self.config})

    def splits(self, n: int | None = None) -> Splits:
        """The train / validation / test problems of this spec.

        ``n`` draws only the first ``n`` problems of ``data`` (same seed and knobs): since the
        first problems do not depend on how many are drawn and the split is by question, each
        part is then a subset of the full part (a test problem stays a test problem).
        """
        data = self.data if n is None else ArithmeticConfig(**{**asdict(self.data), "n": n})
        return split(data, seed=self.split_seed)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = dict(self.config)
        return d


SPECS: dict[str, ToyModelSpec] = {
    "draft": ToyModelSpec(
        name="draft",
        description="the weaker model: 4 layers, hidden 64 (0.27M parameters), 2000 steps",
        config={"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 4,
                "num_attention_heads": 4, "num_key_value_heads": 4},
        steps=2000,
        batch_size=32,
    ),
    "target": ToyModelSpec(
        name="target",
        description="the stronger model: 4 layers, hidden 128 (1M parameters), 4000 steps",
        config={"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4,
                "num_attention_heads": 4, "num_key_value_heads": 4},
        steps=4000,
        batch_size=32,
    ),
}


def default_weights_dir() -> Path:
    """The folder the shipped weights live in: ``<ponder>/toy/weights`` (one sub-folder a model)."""
    return Path(__file__).resolve().parent / "weights"


@contextlib.contextmanager
def _no_progress_bars():
    """Silence transformers' progress bars (loading and saving weights) for a while."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _spec_name(name: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"toy model name must be a str, got {type(name).__name__}")
    return name


def load_toy_model(
    name: str,
    *,
    weights_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
):
    """Load a trained toy model and its tokenizer, offline.

    Parameters
    ----------
    name : str
        ``"draft"`` or ``"target"`` (or any folder name under ``weights_dir``).
    weights_dir : str or Path, optional
        The folder holding ``<name>/`` (``config.json`` and ``model.safetensors``), as written by
        :func:`ponder.toy.train.train_all`; the weights shipped in the package by default.
    dtype : torch.dtype
        The dtype of the returned model's parameters (stored as fp16; fp32 by default).

    Returns
    -------
    (transformers.LlamaForCausalLM, transformers.PreTrainedTokenizerFast)
        The model in eval mode on the CPU, and the toy tokenizer padding on the left (for batched
        generation).

    Raises
    ------
    FileNotFoundError
        If the weights are not there; the message says how to train them.
    """
    name = _spec_name(name)
    root = default_weights_dir() if weights_dir is None else Path(weights_dir)
    folder = root / name
    missing = [f for f in ("config.json", "model.safetensors") if not (folder / f).is_file()]
    if missing:
        known = ", ".join(repr(n) for n in (*SPECS, "prm", "retrieval"))
        raise FileNotFoundError(
            f"load_toy_model: no trained toy model {name!r} in {folder} (missing "
            f"{', '.join(missing)}; the known models are {known}). Train them with "
            f"`ponder toy train` or, in Python, "
            f"ponder.toy.train.train_all({str(root)!r}) (a few minutes on a CPU)"
        )
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as err:
        raise ImportError(
            "ponder.toy.load_toy_model needs transformers and safetensors: "
            "pip install 'ponder[hf]'"
        ) from err
    with _no_progress_bars():  # a bar for a 2 MB file is noise
        rope = _rope_for_older_transformers(folder, LlamaConfig)
        model = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True,
                                                 **rope)
    model.eval()
    tokenizer = make_tokenizer(padding_side="left")
    if model.config.vocab_size != len(tokenizer):
        raise ValueError(
            f"load_toy_model: {folder} has a vocabulary of {model.config.vocab_size} tokens but "
            f"the toy tokenizer has {len(tokenizer)}: the weights are from another version of "
            "ponder; retrain them with `ponder toy train`"
        )
    return model, tokenizer


def _rope_for_older_transformers(folder: Path, config_class) -> dict:
    """The weights' config names RoPE's base as ``rope_parameters`` (transformers 5); older
    releases read only ``rope_theta`` and would silently use their default: pass it to them."""
    if hasattr(config_class(), "rope_parameters"):
        return {}
    saved = json.loads((Path(folder) / "config.json").read_text())
    theta = (saved.get("rope_parameters") or {}).get("rope_theta")
    return {} if theta is None else {"rope_theta": theta}


def save_toy_model(model, tokenizer, folder: str | Path) -> None:
    """Write a trained toy model the way :func:`load_toy_model` reads it: fp16 safetensors, the
    tokenizer, greedy generation defaults and world-readable files (they ship in the package)."""
    folder = Path(folder)
    model.config.use_cache = True  # the Trainer turns it off for training
    model.generation_config.update(bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id, do_sample=False)
    with _no_progress_bars():
        model.to(torch.float16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for file in folder.iterdir():  # safetensors writes 0600
        file.chmod(0o644)


def read_recipe(name: str, *, weights_dir: str | Path | None = None) -> dict[str, Any]:
    """The ``recipe.json`` written next to a trained model (spec, training time, accuracies)."""
    root = default_weights_dir() if weights_dir is None else Path(weights_dir)
    return json.loads((root / _spec_name(name) / "recipe.json").read_text())


@torch.inference_mode()
def generate_solutions(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    batch_size: int = 64,
    max_new_tokens: int = 64,
) -> list[str]:
    """Greedy continuations of ``prompts`` (batched, left padded), decoded without special tokens.

    Each continuation ends at ``<eos>`` (not included) or after ``max_new_tokens`` tokens.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(
            f"generate_solutions: batch_size and max_new_tokens must be >= 1, got "
            f"{batch_size} and {max_new_tokens}"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt",
                              padding=True, padding_side="left").to(device)
            ids = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = ids[:, batch["input_ids"].shape[1]:]
            out.extend(tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out


def evaluate_accuracy(
    model,
    tokenizer,
    problems: Sequence[Problem],
    *,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
) -> dict[str, Any]:
    """Greedy accuracy of ``model`` on ``problems``, overall and by number of steps.

    A problem counts as solved when :func:`ponder.toy.verify` accepts the greedy continuation of
    its prompt (the final answer is right; the steps are not checked).

    Parameters
    ----------
    model, tokenizer
        A causal LM and the toy tokenizer (e.g. from :func:`load_toy_model`).
    problems : sequence of Problem
    batch_size : int
        Prompts generated together (left padded).
    max_new_tokens : int, optional
        Generation limit; by default the longest reference solution (in characters, one token
        each) plus 16.

    Returns
    -------
    dict
        ``{"accuracy": float, "n": int, "by_steps": {k: float}, "n_by_steps": {k: int}}`` with
        ``k`` the number of steps (ints, ascending).
    """
    problems = list(problems)
    if not problems:
        raise ValueError("evaluate_accuracy: problems is empty")
    if any(not isinstance(p, Problem) for p in problems):
        raise TypeError("evaluate_accuracy: problems must be ponder.toy.Problem objects")
    if max_new_tokens is None:
        max_new_tokens = max(len(p.target) for p in problems) + 16
    texts = generate_solutions(model, tokenizer, [p.prompt for p in problems],
                               batch_size=batch_size, max_new_tokens=max_new_tokens)
    right: dict[int, int] = {}
    count: dict[int, int] = {}
    for p, text in zip(problems, texts):
        count[p.n_steps] = count.get(p.n_steps, 0) + 1
        right[p.n_steps] = right.get(p.n_steps, 0) + bool(verify(p, text))
    steps = sorted(count)
    return {
        "accuracy": sum(right.values()) / len(problems),
        "n": len(problems),
        "by_steps": {k: right[k] / count[k] for k in steps},
        "n_by_steps": {k: count[k] for k in steps},
    }
