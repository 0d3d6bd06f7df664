"""Run by tests/train/test_auto_cei_ddp.py under 1 and 2 CPU processes (tests/train/ddp.py): three
steps of Auto-CEI's SFT (TRL's SFTTrainer, completion-only loss) on a fixed global batch of 4, then
write the losses and a parameter digest (rank 0)."""

import argparse
import json
import os
import tempfile

import torch
from ponder.toy import make_tokenizer
from ponder.train.auto_cei import sft_trainer
from transformers import LlamaConfig, LlamaForCausalLM

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
args = parser.parse_args()
world = int(os.environ.get("WORLD_SIZE", "1"))

tok = make_tokenizer()
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
torch.manual_seed(0)
model = LlamaForCausalLM(cfg)
init = torch.cat([p.detach().flatten() for p in model.parameters()])[::97].tolist()
# Equal lengths, so the per-process token means average to the global one; one refusal.
examples = [(f"Q: {a}+{b}=?\n\n", f"{a}+{b}={a + b}\n\nAnswer: {a + b}") for a, b in
            [(1, 2), (3, 4), (5, 1)]] + [("Q: 9*9=?\n\n", "9*9=8\n\nAnswer: ?")]
with tempfile.TemporaryDirectory() as scratch:
    trainer = sft_trainer(model, tok, examples, output_dir=scratch, learning_rate=1e-2,
                          epochs=3, batch_size=4 // world, seed=0)
    trainer.args.logging_strategy = "steps"
    trainer.args.logging_steps = 1
    # Plain SGD: Adam would hide a wrongly scaled gradient (it is scale-invariant), and it
    # magnifies float rounding in near-zero gradients; the SGD update is the gradient itself.
    trainer.optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
if int(os.environ.get("RANK", "0")) == 0:
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    with open(args.out, "w") as f:
        json.dump({"world": world, "losses": losses, "init": init, "digest": params[::97].tolist(),
                   "norm": float(params.norm())}, f)
