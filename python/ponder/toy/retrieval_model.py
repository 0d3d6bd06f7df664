"""The toy retrieval model: a small Llama that answers the key-value lookups of
:mod:`ponder.toy.retrieval`, the long-context workload ThinK is shown on.

It is trained from scratch on short contexts (a few hundred tokens, cheap on a CPU) and works at
longer ones, because the lookup is content-based: a head that matches the queried key does not
care how far back the pair is (rotary position embeddings are relative). Its accuracy by context
length is measured after training and kept in ``recipe.json``.

    from ponder.toy import load_toy_model, make_retrieval
    from ponder.toy.retrieval_model import evaluate_retrieval
    model, tok = load_toy_model("retrieval")
    evaluate_retrieval(model, tok, make_retrieval(50, context_tokens=1024, seed=1))

Retrain it with :func:`train_retrieval_model` (``ponder toy train --only retrieval``).
"""

from __future__ import annotations

import contextlib
import json
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .models import _BASE_CONFIG, _no_progress_bars, generate_solutions, load_toy_model
from .retrieval import ANSWER_PREFIX, RetrievalExample, make_retrieval, verify_retrieval
from .tokenizer import make_tokenizer

__all__ = ["RETRIEVAL_SPEC", "RetrievalSpec", "evaluate_retrieval", "train_retrieval_model"]


@dataclass(frozen=True)
class RetrievalSpec:
    """How the retrieval model is built and trained (the recipe of the shipped weights).

    ``train_context`` is the range of prompt lengths (characters = tokens) trained on;
    ``eval_context`` the lengths the accuracy in ``recipe.json`` is measured at, each on
    ``eval_examples`` held-out lookups (a different seed from training).
    """

    name: str = "retrieval"
    description: str = ("key-value lookup among distractors: 3 layers, hidden 128, "
                        "trained on 32-384-token contexts")
    config: dict[str, Any] = field(default_factory=lambda: {
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 16384})
    steps: int = 2500
    batch_size: int = 16
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    train_examples: int = 32_000
    train_context: tuple[int, int] = (32, 384)
    key_digits: int = 3
    value_digits: int = 3
    data_seed: int = 0
    eval_seed: int = 1
    eval_context: tuple[int, ...] = (512, 1024, 2048)
    eval_examples: int = 100

    def llama_config(self):
        from transformers import LlamaConfig

        return LlamaConfig(**{**_BASE_CONFIG, **self.config})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RETRIEVAL_SPEC = RetrievalSpec()

# "Answer: v0087" is 13 characters; a little slack lets a wrong answer show itself.
_ANSWER_TOKENS = len(ANSWER_PREFIX) + 8


def evaluate_retrieval(
    model, tokenizer, examples: Sequence[RetrievalExample], *, batch_size: int = 8
) -> dict[str, Any]:
    """Greedy lookup accuracy of ``model`` on ``examples``.

    Returns ``{"accuracy": float, "n": int, "mean_prompt_tokens": float}``; an example counts
    when :func:`ponder.toy.verify_retrieval` accepts the continuation.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("evaluate_retrieval: examples is empty")
    texts = generate_solutions(model, tokenizer, [e.prompt for e in examples],
                               batch_size=batch_size, max_new_tokens=_ANSWER_TOKENS)
    right = sum(verify_retrieval(e, t) for e, t in zip(examples, texts))
    return {
        "accuracy": right / len(examples),
        "n": len(examples),
        "mean_prompt_tokens": sum(len(e.prompt) for e in examples) / len(examples),
    }


def train_retrieval_model(
    out_dir: str | Path,
    *,
    spec: RetrievalSpec = RETRIEVAL_SPEC,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
    eval_examples: int | None = None,
) -> dict[str, Any]:
    """Train the retrieval model from scratch and save it to ``out_dir/<spec.name>/``.

    Same conventions as :func:`ponder.toy.train.train_toy_model` (a ``transformers.Trainer``,
    AdamW with warm-up and cosine decay, loss on the answer and ``<eos>`` only, fp16 weights and a
    ``recipe.json``); ``load_toy_model(spec.name, weights_dir=out_dir)`` loads the result.
    """
    from .train import _collate, _Examples

    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"train_retrieval_model: steps must be an integer >= 1, got {steps!r}")
        spec = replace(spec, steps=steps)
    if eval_examples is not None:
        spec = replace(spec, eval_examples=int(eval_examples))
    folder = Path(out_dir) / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer()
    examples = make_retrieval(spec.train_examples, context_tokens=spec.train_context,
                              seed=spec.data_seed, key_digits=spec.key_digits,
                              value_digits=spec.value_digits)
    with contextlib.nullcontext() if progress else _no_progress_bars():
        return _train(spec, folder, examples, tokenizer, _Examples, _collate, seed=seed,
                      progress=progress, out_dir=out_dir)


def _train(spec, folder, examples, tokenizer, examples_cls, collate, *, seed, progress, out_dir):
    import transformers
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    train_set = examples_cls(examples, tokenizer)
    transformers.set_seed(seed)
    model = LlamaForCausalLM(spec.llama_config())
    n_params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory(prefix="ponder-toy-train-") as scratch:
        args = TrainingArguments(
            output_dir=scratch, max_steps=spec.steps, per_device_train_batch_size=spec.batch_size,
            learning_rate=spec.learning_rate, weight_decay=spec.weight_decay, adam_beta1=0.9,
            adam_beta2=0.98, max_grad_norm=1.0, lr_scheduler_type="cosine",
            warmup_steps=spec.warmup, logging_steps=max(1, spec.steps // 50),
            save_strategy="no", eval_strategy="no", report_to="none", use_cpu=True, seed=seed,
            data_seed=seed, dataloader_num_workers=0, remove_unused_columns=False,
            disable_tqdm=not progress,
        )
        trainer = Trainer(model=model, args=args, train_dataset=train_set,
                          data_collator=collate(tokenizer.pad_token_id))
        if not progress:
            trainer.remove_callback(PrinterCallback)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        losses = [[h["step"], round(h["loss"], 5)] for h in trainer.state.log_history
                  if "loss" in h]

    model.config.use_cache = True
    model.generation_config.update(bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id, do_sample=False)
    model.to(torch.float16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for file in folder.iterdir():
        file.chmod(0o644)

    result: dict[str, Any] = {
        "name": spec.name, "spec": spec.to_dict(), "seed": seed, "steps": spec.steps,
        "parameters": n_params, "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(), "loss": losses, "test": {},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }
    if spec.eval_examples > 0:
        saved, tok = load_toy_model(spec.name, weights_dir=out_dir)
        for length in spec.eval_context:
            held_out = make_retrieval(spec.eval_examples, context_tokens=length,
                                      seed=spec.eval_seed, key_digits=spec.key_digits,
                                      value_digits=spec.value_digits)
            result["test"][str(length)] = evaluate_retrieval(saved, tok, held_out)
    (folder / "recipe.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
