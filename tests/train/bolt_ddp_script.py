"""Run by tests/train/test_bolt_ddp.py under 1 and 2 CPU processes (tests/train/ddp.py): a few
steps of BOLT's SFT and of one DPO pass on a fixed global batch of 4, then write the losses and a
parameter digest (rank 0)."""

import tempfile

from ponder.toy import make_tokenizer
from ponder.train.bolt import BoltFormat, _frozen_copy, dpo_pass, sft

from tests.tiny import tiny_llama
from tests.train.ddp import digest, script_args, world_size, write_result

args = script_args()
world = world_size()

tok = make_tokenizer()
model = tiny_llama(0, vocab=len(tok))
fmt = BoltFormat(thought_open="seek\n", thought_close="\nseen\n", solution_open="",
                 solution_close="")
# Every example has the same length, so the per-process token means average to the global one.
records = [{"query": f"Q: {a}+{b}=?", "thought": f"{a}+{b}={a + b}", "solution": f"Answer: {a + b}"}
           for a, b in [(1, 2), (3, 4), (5, 1), (2, 2)]]
pairs = [{"query": r["query"], "chosen": fmt.render(r["thought"], r["solution"]),
          "rejected": fmt.render(r["thought"], "Answer: 0")} for r in records]
per_device = 4 // world
with tempfile.TemporaryDirectory() as scratch:
    tr = sft(model, tok, records, f"{scratch}/sft", fmt=fmt, prompt_template="{query}\n\n",
             learning_rate=1e-2, batch_size=per_device, max_steps=3, progress=False, save=False)
    sft_losses = [h["loss"] for h in tr.state.log_history if "loss" in h]
    ref = _frozen_copy(model)
    dp = dpo_pass(model, ref, tok, pairs, f"{scratch}/dpo", prompt_template="{query}\n\n",
                  learning_rate=1e-2, batch_size=per_device, max_steps=3, progress=False)
    dpo_losses = [h["loss"] for h in dp.state.log_history if "loss" in h]
write_result(args.out, {"world": world, "sft": sft_losses, "dpo": dpo_losses, **digest(model)})
