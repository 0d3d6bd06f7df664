"""Two OREO steps on 16 tiny rows; writes the logged losses and a parameter digest (rank 0).
Run by tests/train/test_oreo_trainer.py under tests.train.ddp.launch with 1 and 2 processes."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ponder.train.oreo import OREOConfig, OREOTrainer, rows_to_dataset  # noqa: E402
from tests.train.oreo_common import tiny_policy, tiny_rows, tokenizer, train_args  # noqa: E402


def run(batch: int) -> dict | None:
    """Train; on the main process return the logged losses and a digest of the parameters."""
    tok = tokenizer()
    ddp = {"ddp_backend": "gloo"} if "WORLD_SIZE" in os.environ else {}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = OREOTrainer(tiny_policy(0), oreo=OREOConfig(level="step", step_delimiter=(4, 4)),
                              critic_learning_rate=5e-2,
                              args=train_args(tmp, per_device_train_batch_size=batch,
                                              **ddp),
                              train_dataset=rows_to_dataset(tok, tiny_rows(16)),
                              processing_class=tok)
        trainer.train()
    if trainer.is_world_process_zero():
        sd = trainer.accelerator.unwrap_model(trainer.model).state_dict()
        params = {k: [float(v.double().sum()), float(v.double().abs().sum())]
                  for k, v in sd.items()}
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        return {"losses": losses, "params": params}
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, required=True)  # per process
    a = ap.parse_args()
    got = run(a.batch)
    if got is not None:
        Path(a.out).write_text(json.dumps(got))


if __name__ == "__main__":
    main()
