"""Run by tests/train/test_first.py under tests/train/ddp.py's launcher: two FIRST optimiser steps
on a fixed global batch of 8 examples (8 / world size per process), written as JSON by rank 0."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from tests.train.ddp import script_args, world_size, write_result  # noqa: E402
from tests.train.first_tiny import examples, tiny_model  # noqa: E402


def train_and_digest(store: str, world: int = 1) -> dict:
    """Two SGD steps (lr 0.5, no clipping) of FIRST with the other bucket on 8 examples, 8 /
    world per process; the logged losses and a digest of the parameters."""
    from transformers import TrainingArguments

    from ponder.train.first import FIRSTTrainer

    model = tiny_model(seed=0)
    with tempfile.TemporaryDirectory() as scratch:
        targs = TrainingArguments(
            output_dir=scratch, max_steps=2, per_device_train_batch_size=8 // world,
            learning_rate=0.5, optim="sgd", max_grad_norm=0.0, lr_scheduler_type="constant",
            report_to="none", use_cpu=True, remove_unused_columns=False, save_strategy="no",
            disable_tqdm=True, logging_steps=1, seed=0, data_seed=0, dataloader_num_workers=0,
            ddp_backend="gloo" if world > 1 else None,
        )
        trainer = FIRSTTrainer(model, targs, examples(8), store=store, temperature_c=0.7,
                               other_bucket=True)
        trainer.train()
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    return {"losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "params": params[:64].tolist(), "param_sum": float(params.double().sum())}


def main() -> None:
    args = script_args("store")
    write_result(args.out, train_and_digest(args.store, world_size()))

if __name__ == "__main__":
    main()
