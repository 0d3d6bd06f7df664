"""Tiny models and data shared by the OREO trainer tests and their DDP script."""

from __future__ import annotations


from ponder.toy.tokenizer import make_tokenizer

from tests.tiny import tiny_llama


def tiny_policy(seed: int = 0):
    return tiny_llama(seed, vocab=31, hidden=16, layers=2, max_positions=64)


def tiny_rows(n: int = 16):
    """Arithmetic prompts with right and wrong responses of varying lengths."""
    rows = []
    for i in range(n):
        a, b = 3 + i, 5 + 2 * i
        ok = i % 2 == 0
        ans = a + b if ok else a + b + 1
        steps = f"{a}+{b}={ans}" + ("\n\n" + f"{ans}-1={ans - 1}" if i % 3 == 0 else "")
        rows.append({"prompt": f"Q: {a}+{b}=?\n\n", "response": f"{steps}\n\nAnswer: {ans}",
                     "reward": 1.0 if ok else 0.0})
    return rows


def tokenizer():
    return make_tokenizer()


def train_args(out, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(out), per_device_train_batch_size=8, gradient_accumulation_steps=1,
                max_steps=2, learning_rate=1e-2, weight_decay=0.0, warmup_steps=0,
                lr_scheduler_type="linear", report_to=[], logging_steps=1, save_strategy="no",
                use_cpu=True, seed=0, data_seed=0, disable_tqdm=True, dataloader_num_workers=0,
                adam_beta1=0.9, adam_beta2=0.95)
    base.update(kw)
    return TrainingArguments(**base)
