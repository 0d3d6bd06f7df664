"""Run by tests/train/test_auto_cei_ddp.py under 1 and 2 CPU processes (tests/train/ddp.py): three
steps of the SFT Auto-CEI runs (ponder.train.sft: TRL's SFTTrainer, completion-only loss) on a fixed global batch of 4, then
write the losses and a parameter digest (rank 0)."""

import tempfile

import torch
from ponder.toy import make_tokenizer
from ponder.train.sft import run_trainer, sft_trainer

from tests.tiny import tiny_llama
from tests.train.ddp import digest, script_args, world_size, write_result

args = script_args()
world = world_size()

tok = make_tokenizer()
model = tiny_llama(0, vocab=len(tok))
init = torch.cat([p.detach().flatten() for p in model.parameters()])[::97].tolist()
# Equal lengths, so the per-process token means average to the global one; one refusal.
examples = [(f"Q: {a}+{b}=?\n\n", f"{a}+{b}={a + b}\n\nAnswer: {a + b}") for a, b in
            [(1, 2), (3, 4), (5, 1)]] + [("Q: 9*9=?\n\n", "9*9=8\n\nAnswer: ?")]
with tempfile.TemporaryDirectory() as scratch:
    rows = [{"prompt": p, "completion": c} for p, c in examples]
    trainer = sft_trainer(model, tok, rows, scratch, learning_rate=1e-2, epochs=3,
                          batch_size=4 // world, seed=0, lr_scheduler_type="cosine")
    # Plain SGD: Adam would hide a wrongly scaled gradient (it is scale-invariant), and it
    # magnifies float rounding in near-zero gradients; the SGD update is the gradient itself.
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    run_trainer(trainer)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
write_result(args.out, {"world": world, "losses": losses, "init": init, **digest(model)})
