"""Training the toy retrieval model (``load_toy_model("retrieval")``) on the lookups of
:mod:`ponder.toy.retrieval`, on the CPU.

The model has the shape of the constructed one (:func:`ponder.toy.build_retrieval_model`: a
two-layer Llama, hidden 192, 8 heads of dim 128). Its embeddings and layer 0, the eight
*offset heads* that copy each of the last eight tokens into a slot of the residual stream, are
taken from the construction and frozen: a positional prior, without which small Llamas trained
on this lookup from scratch stayed at chance in every attempt (docs/toy.md). Everything that
does the lookup is learnt from a random start: layer 1 (which slots to compare, the match, the
copy) and the unembedding. Layer 1's queries and keys are restricted to the rotary dimensions
that turn by less than 0.05 rad over 8K tokens (the others stay zero), so the match it learns on
contexts of a few hundred tokens does not drift with distance.

Training follows a curriculum: contexts start with two pairs and grow by half whenever the
teacher-forced lookup accuracy on fresh contexts reaches ``promote_at``; each training context
asks ``queries`` lookups (``"\\n\\nQ: k7310=v3"`` after the pairs, the loss on ``v`` and the
digit). It is a ``transformers.Trainer`` run (AdamW, warm-up then cosine decay), with the
curriculum as a ``TrainerCallback``. The accuracy at 1K-8K tokens is measured on the saved fp16
weights and written to ``recipe.json``.

    from ponder.toy.retrieval_train import train_retrieval_model
    train_retrieval_model("toy-weights")        # ./toy-weights/retrieval (minutes)
"""

from __future__ import annotations

import json
import math
import platform
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .models import load_toy_model, save_toy_model
from .retrieval import QUERY_PREFIX, _pair_line
from .retrieval_model import (
    build_retrieval_model,
    format_retrieval_accuracy,
    retrieval_accuracy,
    static_rotary_pairs,
)
from .train import cpu_training_args, run_trainer

__all__ = ["RETRIEVAL_SPEC", "RetrievalSpec", "format_retrieval_result", "train_retrieval_model"]


@dataclass(frozen=True)
class RetrievalSpec:
    """How the shipped retrieval model is trained (its recipe).

    ``steps`` optimiser steps of ``batch_size`` contexts, each with ``queries`` lookups; the
    curriculum starts at ``start_pairs`` pairs per context, checks the teacher-forced accuracy
    on ``check_examples`` fresh contexts every ``check_every`` steps and grows the contexts by
    ``grow`` (up to ``max_pairs``) when it is at least ``promote_at``. ``qk_init_std`` is the
    initial scale of layer 1's query and key projections (larger than the usual 0.02, which
    keeps the lookup off a long plateau). The accuracies in ``recipe.json`` are measured on
    ``eval_examples`` held-out lookups at each of ``eval_context`` tokens.
    """

    key_digits: int = 4
    steps: int = 600
    batch_size: int = 16
    queries: int = 4
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    start_pairs: int = 2
    max_pairs: int = 64
    grow: float = 1.5
    promote_at: float = 0.95
    check_every: int = 50
    check_examples: int = 32
    qk_init_std: float = 0.1
    eval_context: tuple[int, ...] = (1024, 4096, 8192)
    eval_examples: int = 24


RETRIEVAL_SPEC = RetrievalSpec()


class _Curriculum:
    """The number of pairs per training context, shared by the data stream and the callback."""

    def __init__(self, start: int) -> None:
        self.n_pairs = start
        self.history: list[dict[str, Any]] = []


def _lookup_sequence(rng: random.Random, vocab: dict[str, int], n_pairs: int, key_digits: int,
                     queries: int) -> tuple[list[int], list[int]]:
    """bos + pairs + ``queries`` times "\\n\\nQ: k<key>=v<d>"; labels on "v<d>" only."""
    keys = rng.sample(range(10**key_digits), n_pairs)
    lines = [_pair_line(k, rng.randrange(10), key_digits, 1) for k in keys]
    ids = [vocab["<bos>"], *(vocab[c] for c in "\n".join(lines))]
    labels = [-100] * len(ids)
    for _ in range(queries):
        line = lines[rng.randrange(n_pairs)]
        query = [vocab[c] for c in QUERY_PREFIX + line[: key_digits + 2]]
        answer = [vocab[c] for c in line[key_digits + 2:]]
        ids += query + answer
        labels += [-100] * len(query) + answer
    return ids, labels


class _LookupStream(torch.utils.data.IterableDataset):
    """Endless training contexts at the curriculum's current size."""

    def __init__(self, curriculum: _Curriculum, vocab, spec: RetrievalSpec, seed: int) -> None:
        self.curriculum, self.vocab, self.spec, self.seed = curriculum, vocab, spec, seed

    def __iter__(self):
        rng = random.Random(self.seed)
        while True:
            ids, labels = _lookup_sequence(rng, self.vocab, self.curriculum.n_pairs,
                                           self.spec.key_digits, self.spec.queries)
            yield {"input_ids": ids, "labels": labels}


def _collate(features):
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros((len(features), width), dtype=torch.long)  # <pad> is id 0
    labels = torch.full((len(features), width), -100, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f["input_ids"])
        ids[row, :n] = torch.tensor(f["input_ids"])
        labels[row, :n] = torch.tensor(f["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@torch.no_grad()
def _teacher_forced_accuracy(model, vocab, spec: RetrievalSpec, n_pairs: int,
                             rng: random.Random) -> float:
    """Share of fresh one-query contexts whose labelled tokens are all the argmax."""
    was_training = model.training
    model.eval()
    batch = _collate([dict(zip(("input_ids", "labels"),
                               _lookup_sequence(rng, vocab, n_pairs, spec.key_digits, 1)))
                      for _ in range(spec.check_examples)])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    pred, target = logits[:, :-1].argmax(-1), batch["labels"][:, 1:]
    labelled = target != -100
    right = ((pred == target) | ~labelled).all(dim=1)
    model.train(was_training)
    return right.float().mean().item()


def _initial_model(spec: RetrievalSpec, seed: int):
    """The constructed model with layer 1 and the unembedding re-drawn at random (seeded), and
    the embeddings and layer 0 frozen."""
    model, tok = build_retrieval_model(spec.key_digits)
    gen = torch.Generator().manual_seed(seed)
    layer = model.model.layers[1]
    with torch.no_grad():
        for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen)
                                * spec.qk_init_std)
        for linear in (layer.self_attn.v_proj, layer.self_attn.o_proj, layer.mlp.gate_proj,
                       layer.mlp.up_proj, layer.mlp.down_proj, model.lm_head):
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * 0.02)
    for p in (*model.model.embed_tokens.parameters(), *model.model.layers[0].parameters()):
        p.requires_grad_(False)
    # Layer 1's queries and keys may only use the rotary dimensions that turn by less than
    # 0.05 rad over 8K tokens: a content head, so what it learns on short contexts holds at long
    # ones. The other rows start at zero and get no gradient, so they stay zero.
    keep = _static_rows(model)
    with torch.no_grad():
        for linear in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            linear.weight.mul_(keep[:, None])
            linear.bias.mul_(keep)
            linear.weight.register_hook(lambda g: g * keep[:, None])
            linear.bias.register_hook(lambda g: g * keep)
    return model, tok


def _static_rows(model) -> torch.Tensor:
    """1.0 for the query/key rows (all heads) in :func:`static_rotary_pairs`, else 0.0."""
    static = static_rotary_pairs(model).float()
    per_head = torch.cat([static, static])  # rotate_half pairs dim i with dim i + head_dim / 2
    return per_head.repeat(model.config.num_attention_heads)


def train_retrieval_model(out_dir: str | Path, *, spec: RetrievalSpec = RETRIEVAL_SPEC,
                          seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Train the retrieval model into ``out_dir/retrieval`` (weights in fp16, the tokenizer and
    ``recipe.json``) and return the recipe: spec, seed, training time, loss curve, curriculum
    history and ``accuracy`` by context length (greedy, on the saved weights)."""
    import transformers
    from transformers import Trainer, TrainerCallback

    folder = Path(out_dir) / "retrieval"
    folder.mkdir(parents=True, exist_ok=True)
    transformers.set_seed(seed)
    model, tok = _initial_model(spec, seed)
    model.train()
    vocab = tok.get_vocab()
    curriculum = _Curriculum(spec.start_pairs)
    check_rng = random.Random(seed + 1)

    class Promote(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % spec.check_every:
                return
            acc = _teacher_forced_accuracy(model, vocab, spec, curriculum.n_pairs, check_rng)
            curriculum.history.append(
                {"step": state.global_step, "pairs": curriculum.n_pairs, "accuracy": acc})
            if acc >= spec.promote_at and curriculum.n_pairs < spec.max_pairs:
                curriculum.n_pairs = min(spec.max_pairs, math.ceil(curriculum.n_pairs * spec.grow))

    with tempfile.TemporaryDirectory(prefix="ponder-toy-retrieval-") as scratch:
        args = cpu_training_args(scratch, steps=spec.steps, batch_size=spec.batch_size,
                                 learning_rate=spec.learning_rate, weight_decay=0.0,
                                 warmup=spec.warmup_steps, seed=seed, progress=progress)
        trainer = Trainer(model=model, args=args,
                          train_dataset=_LookupStream(curriculum, vocab, spec, seed),
                          data_collator=_collate, callbacks=[Promote()])
        seconds, losses = run_trainer(trainer, progress=progress)
    save_toy_model(model, tok, folder)

    saved, saved_tok = load_toy_model("retrieval", weights_dir=out_dir)
    accuracy = retrieval_accuracy(saved, saved_tok, lengths=spec.eval_context,
                                  n=spec.eval_examples)
    result = {
        "name": "retrieval",
        "description": "key-value lookup among distractors: layer 0 constructed (offset heads, "
                       "frozen), layer 1 and the unembedding trained",
        "spec": asdict(spec),
        "seed": seed,
        "steps": spec.steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trained_parameters": sum(
            p.numel() for n, p in model.named_parameters()
            if not n.startswith(("model.embed_tokens", "model.layers.0."))),
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "loss": losses,
        "curriculum": curriculum.history,
        "accuracy": accuracy,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }
    (folder / "recipe.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def format_retrieval_result(result: dict[str, Any]) -> str:
    """One line: the greedy lookup accuracy by context length that ``result`` records."""
    return format_retrieval_accuracy(result["accuracy"], result["spec"]["eval_examples"])
