"""One OREO training step (critic + actor) with the fused LM-head ops against the eager way.

The issue-15 workload: a 4-layer Llama, hidden 1536, vocabulary 151936, batch 4 x 1024 tokens,
float32, CPU. One step = the forward of the policy + value model (one module) and of the frozen
reference, both losses (token level, exact KL), one backward, the critic's AdamW step and the
actor's AdamW step. The implementations differ only in how the per-token quantities are
computed from the last hidden states:

  ponder   the trainer's step: ponder.ops.lm_head.token_logprobs (policy, reference) and the
           fused scalar kl_to_reference_sum for the KL term (gradient computed in the forward):
           chunked, never [tokens, vocab];
  ponder-per-token  the same with OREOConfig(fused=False): the per-token kl_to_reference
           (6 matrix products for the KL against the fused loss's 4);
  eager    what the original code does: full logits, log_softmax for the policy and the reference
           (and the policy's softmax for the exact KL), gather.

Each implementation runs in a fresh process: models and optimizers built, one warm-up step on 8
tokens, then one timed step. Peak extra memory = the peak resident set during the step (VmHWM,
reset through /proc/self/clear_refs just before) minus the resident set before it.

Run:  python bench/oreo_step.py                 (the issue's size: needs ~30 GB, run it alone)
      python bench/oreo_step.py --layers 1 --hidden 256 --vocab 32000 --seq 256   (smaller)
      --impls eager,ponder,ponder-per-token   (the rows, in this order; the first is the baseline)
Measured figures and their commands: docs/oreo.md, "Benchmark".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))


IMPLS = ("eager", "ponder", "ponder-per-token")


def _kib(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _eager_terms(models, ref, ids, att, targets, mask):
    import torch

    hidden, values = models(ids, att)
    logits = hidden[:, :-1] @ models.policy.lm_head.weight.T
    logp_all = logits.log_softmax(-1)
    logp = logp_all.gather(-1, targets[..., None])[..., 0] * mask
    with torch.no_grad():
        rh = ref.get_decoder()(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1]
        ref_all = (rh @ ref.lm_head.weight.T).log_softmax(-1)
        ref_logp = ref_all.gather(-1, targets[..., None])[..., 0] * mask
    kl = (logp_all.exp() * (logp_all - ref_all)).sum(-1) * mask
    return logp, ref_logp, kl, values


def _child(a) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ponder.train.oreo import (OREOConfig, OREOModels, ValueModel, action_starts,
                                   oreo_losses)
    from ponder.train.oreo import _oreo_forward  # the trainer's own step

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.hidden, intermediate_size=a.hidden * 8 // 3,
                      num_hidden_layers=a.layers, num_attention_heads=a.hidden // 128,
                      num_key_value_heads=a.hidden // 128, max_position_embeddings=a.seq,
                      tie_word_embeddings=False)
    policy = LlamaForCausalLM(cfg)
    ref = LlamaForCausalLM(cfg).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    models = OREOModels(policy, ValueModel.from_policy(policy))
    opt_a = torch.optim.AdamW(models.policy.parameters(), lr=5e-6, betas=(0.9, 0.95))
    opt_c = torch.optim.AdamW(models.value.parameters(), lr=5e-6, betas=(0.9, 0.95))
    oreo = OREOConfig(kl="exact", fused=a.impl != "ponder-per-token")

    def batch(b, n):
        ids = torch.randint(3, a.vocab, (b, n))
        act = torch.zeros(b, n, dtype=torch.long)
        act[:, n // 4:] = 1
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "action_mask": act,
                "reward": (torch.arange(b) % 2).float()}

    def step(inputs):
        if a.impl.startswith("ponder"):
            out = _oreo_forward(models, ref, inputs, oreo)
        else:
            ids, att = inputs["input_ids"], inputs["attention_mask"]
            targets = ids[:, 1:]
            mask = inputs["action_mask"][:, 1:].bool()
            logp, ref_logp, kl, values = _eager_terms(models, ref, ids, att, targets, mask)
            starts = action_starts(targets, mask, "token")
            out = oreo_losses(logp, ref_logp, values[:, :-1], inputs["reward"], mask, starts,
                              oreo, kl=kl)
        (out.value + out.policy).backward()
        opt_c.step()
        opt_a.step()
        opt_a.zero_grad(set_to_none=True)
        opt_c.zero_grad(set_to_none=True)
        return float((out.value + out.policy).detach())

    step(batch(1, 8))  # warm-up: one-off costs, optimizer states allocated
    big = batch(a.batch, a.seq)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _kib("VmRSS")
    t = time.perf_counter()
    loss = step(big)
    seconds = time.perf_counter() - t
    peak = _kib("VmHWM")
    print(json.dumps({"impl": a.impl, "seconds": seconds, "peak_extra_mib": (peak - before) / 1024,
                      "loss": loss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--impl", choices=IMPLS, default=None)
    ap.add_argument("--impls", default="eager,ponder",
                    help="comma-separated rows, the first is the baseline (default eager,ponder)")
    a = ap.parse_args()
    if a.impl is not None:
        _child(a)
        return
    rows = []
    impls = a.impls.split(",")
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        ap.error(f"--impls: unknown {bad}; choose from {IMPLS}")
    for impl in impls:
        cmd = [sys.executable, __file__, "--impl", impl] + [
            f"--{k}={getattr(a, k)}" for k in ("layers", "hidden", "vocab", "batch", "seq")]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    eager = rows[0]
    print(f"OREO step, {a.layers} layers, hidden {a.hidden}, vocab {a.vocab}, batch {a.batch} x "
          f"{a.seq}, fp32, torch threads {__import__('torch').get_num_threads()}")
    print("| implementation | time | vs eager | peak extra memory | fraction of eager's | loss |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['seconds']:.2f} s | {eager['seconds'] / r['seconds']:.2f}x | "
              f"{r['peak_extra_mib']:,.0f} MiB | "
              f"{100 * r['peak_extra_mib'] / eager['peak_extra_mib']:.1f}% | {r['loss']:.6f} |")


if __name__ == "__main__":
    main()
