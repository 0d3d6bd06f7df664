"""FIRST on the toy world: the shipped toy target teaches a draft-sized student four ways.

:func:`run_first_effect` trains one student per mode of :mod:`ponder.train.first` (``sft``,
``kd``, ``topk``, ``first``) from the same initialisation, on the same problems, for the same
steps and seed, then measures on the test split:

- **answer level**: greedy accuracy (:func:`ponder.toy.verify`) and the calibration of the
  model's confidence in its final answer: the probability it gives, teacher-forced on its own
  greedy output, to the answer's tokens (the number after ``"Answer: "`` and the ``<eos>``)
  given everything before them; a response without an answer line gets the probability of the
  whole response;
- **token level**: next-token top-1 confidence on the reference solutions' tokens (teacher
  forcing), with :func:`ponder.train.calibration.calibration_metrics` over the full vocabulary.

FIRST's c is calibrated on the validation split's top-k (:func:`ponder.train.first.calibrate_store`
over ``coarse``, which by default goes past 1). Reliability diagrams are written as PNGs, and the
bytes of the top-k store are set against the full logits of the same tokens.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..train.calibration import (
    binary_calibration_metrics,
    calibration_metrics,
    reliability_diagram,
)
from ..train.first import (
    MODES,
    FIRSTTrainer,
    TopKStore,
    calibrate_store,
    extract_topk,
    tokenize_records,
)
from .arithmetic import ANSWER_PREFIX, Problem, verify
from .models import SPECS, _no_progress_bars, generate_solutions, load_toy_model

__all__ = ["answer_confidences", "evaluate_calibration", "format_first_table", "run_first_effect",
           "token_metrics", "token_metrics_records", "wilson_interval"]

INITS = ("draft", "scratch")
# Why lower than the draft's own 2e-3: the students start trained; a full-size step would undo
# much of the draft before the teacher's signal could act.
FINETUNE_LR = 5e-4
DEFAULT_COARSE = tuple(round(0.1 * i, 10) for i in range(1, 21))  # 0.1 ... 2.0


def _records(problems: Sequence[Problem]) -> list[dict[str, str]]:
    return [{"prompt": p.prompt, "response": p.target} for p in problems]


def token_metrics(model, tokenizer, problems: Sequence[Problem], batch_size: int = 64):
    """``(metrics, confidence [T], correct [T])`` of the next-token predictions on the reference
    solutions of ``problems`` (teacher forcing, response tokens and ``<eos>`` only)."""
    return token_metrics_records(model, tokenizer, _records(problems), batch_size)


@torch.no_grad()
def token_metrics_records(model, tokenizer, records: Sequence[dict], batch_size: int = 64):
    """:func:`token_metrics` on ``{"prompt", "response"}`` records (any model and tokenizer)."""
    examples = tokenize_records(tokenizer, records)
    probs, labels = [], []
    for start in range(0, len(examples), batch_size):
        part = examples[start:start + batch_size]
        width = max(len(e["input_ids"]) for e in part)
        ids = torch.zeros((len(part), width), dtype=torch.long)
        lab = torch.full((len(part), width), -100, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, e in enumerate(part):
            ids[row, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
            lab[row, :len(e["labels"])] = torch.tensor(e["labels"])
            mask[row, :len(e["input_ids"])] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        resp = lab[:, 1:] != -100
        probs.append(torch.softmax(logits[resp], dim=-1))
        labels.append(lab[:, 1:][resp])
    p, y = torch.cat(probs), torch.cat(labels)
    conf, top = p.max(-1)
    return calibration_metrics(p, y), conf, top == y


@torch.no_grad()
def answer_confidences(model, tokenizer, problems: Sequence[Problem], texts: Sequence[str],
                       batch_size: int = 64) -> torch.Tensor:
    """``[n]`` the model's probability of the final answer it wrote (see the module docstring)."""
    eos = tokenizer.eos_token_id
    out = []
    for start in range(0, len(problems), batch_size):
        rows, spans = [], []
        for p, text in zip(problems[start:start + batch_size], texts[start:start + batch_size]):
            prompt = tokenizer(p.prompt)["input_ids"]
            cut = text.rfind(ANSWER_PREFIX)
            head = text if cut < 0 else text[:cut + len(ANSWER_PREFIX)]
            tail = "" if cut < 0 else text[cut + len(ANSWER_PREFIX):]
            head_ids = tokenizer(head, add_special_tokens=False)["input_ids"] if head else []
            tail_ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
            ids = prompt + head_ids + tail_ids + [eos]
            first = len(prompt) + (len(head_ids) if cut >= 0 else 0)
            rows.append(ids)
            spans.append((first, len(ids)))
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = 1
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for i, (a, b) in enumerate(spans):
            # token t is predicted at position t - 1
            tok_lp = logp[i, a - 1:b - 1].gather(1, ids[i, a:b, None])[:, 0]
            out.append(float(tok_lp.sum().exp()))
    return torch.tensor(out, dtype=torch.float64)


def evaluate_calibration(name: str, model, tokenizer, test: Sequence[Problem],
                         out: str | Path) -> dict[str, Any]:
    """``{"token": ..., "answer": ...}`` metrics of ``model`` on toy ``test`` problems (module
    docstring), and its two reliability diagrams ``out/reliability-{token,answer}-NAME.png``."""
    out = Path(out)
    model.eval()
    tok_m, tok_conf, tok_ok = token_metrics(model, tokenizer, test)
    texts = generate_solutions(model, tokenizer, [p.prompt for p in test],
                               max_new_tokens=max(len(p.target) for p in test) + 16)
    right = torch.tensor([verify(p, t) for p, t in zip(test, texts)])
    conf = answer_confidences(model, tokenizer, test, texts)
    ans_m = binary_calibration_metrics(conf, right)
    reliability_diagram(tok_conf, tok_ok, out / f"reliability-token-{name}.png",
                        title=f"{name}, tokens")
    reliability_diagram(conf, right, out / f"reliability-answer-{name}.png",
                        title=f"{name}, answers")
    return {"token": tok_m, "answer": ans_m}


def run_first_effect(out_dir: str | Path, *, steps: int = 1000, batch_size: int = 32,
                     seed: int = 0, k: int = 5, validation_problems: int = 500,
                     test_problems: int = 300, modes: Sequence[str] = ("sft", "kd", "topk",
                                                                       "first"),
                     other_bucket: bool = False, coarse: Sequence[float] = DEFAULT_COARSE,
                     learning_rate: float | None = None, init: str = "draft",
                     progress: bool = True) -> dict[str, Any]:
    """Train the draft-sized student ``modes`` ways and measure them (module docstring).

    The student has the toy draft's config and hyperparameters (:data:`ponder.toy.SPECS`) and
    sees the first ``steps * batch_size`` training problems once, in the same order, whatever the
    mode. ``init="draft"`` (default) starts every student from the shipped toy draft's weights
    (a fine-tune, peak learning rate :data:`FINETUNE_LR` unless ``learning_rate`` is given);
    ``init="scratch"`` from the seeded random initialisation (the draft's learning rate). Writes ``out_dir/results.json``, ``out_dir/results.md``
    and the reliability diagrams; returns the results.
    """
    from transformers import LlamaForCausalLM, set_seed

    from .train import cpu_training_args, run_trainer

    if init not in INITS:
        raise ValueError(f"run_first_effect: init must be one of {INITS}, got {init!r}")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"run_first_effect: unknown modes {unknown}; known: {MODES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = SPECS["draft"]
    parts = spec.splits()
    n_train = steps * batch_size
    if n_train > len(parts.train):
        raise ValueError(f"run_first_effect: steps * batch_size = {n_train} exceeds the "
                         f"{len(parts.train)} training problems")
    train, valid = parts.train[:n_train], parts.validation[:validation_problems]
    test = parts.test[:test_problems]
    teacher, tokenizer = load_toy_model("target")
    results: dict[str, Any] = {"steps": steps, "batch_size": batch_size, "seed": seed, "k": k,
                               "init": init,
                               "train_problems": n_train, "test_problems": len(test),
                               "threads": torch.get_num_threads(), "models": {}}
    clock = time.perf_counter()
    train_meta = extract_topk(teacher, _records(train), k, out_dir=out / "store-train",
                              tokenizer=tokenizer, batch_size=64, progress=progress)
    extract_topk(teacher, _records(valid), k, out_dir=out / "store-validation",
                 tokenizer=tokenizer, batch_size=64, progress=False)
    found = calibrate_store(out / "store-validation", coarse=coarse)
    results["extract_seconds"] = round(time.perf_counter() - clock, 1)
    results["calibration"] = {key: found[key] for key in ("temperature_c", "ece", "ece_at_1",
                                                           "tokens")}
    vocab = train_meta["vocab_size"]
    per_token_topk = k * 4 + k * (2 if train_meta["dtype"] == "float16" else 4)
    results["storage"] = {
        "tokens": train_meta["tokens"], "store_bytes": train_meta["bytes"],
        "topk_payload_bytes": train_meta["tokens"] * per_token_topk,
        "full_logits_bytes": train_meta["full_logits_bytes"], "vocab_size": vocab,
        "bytes_per_token": {"topk": per_token_topk, "full_fp16": 2 * vocab,
                            "full_fp16_at_V151936": 2 * 151936},
        "mass": train_meta["mass"],
    }
    results["models"]["teacher"] = evaluate_calibration("teacher", teacher, tokenizer, test, out)
    if init == "draft":  # the common starting point, measured like the students
        results["models"]["draft (start)"] = evaluate_calibration(
            "draft", load_toy_model("draft")[0], tokenizer, test, out)

    examples = tokenize_records(tokenizer, _records(train))
    store = TopKStore(out / "store-train")
    if learning_rate is not None:
        lr = learning_rate
    else:
        lr = FINETUNE_LR if init == "draft" else spec.learning_rate
    results["learning_rate"] = lr
    for mode in modes:
        set_seed(seed)
        if init == "draft":
            student = load_toy_model("draft")[0]
            student.train()
        else:
            student = LlamaForCausalLM(spec.llama_config())
        with tempfile.TemporaryDirectory(prefix="ponder-first-") as scratch, \
                _no_progress_bars() if not progress else contextlib.nullcontext():
            args = cpu_training_args(scratch, steps=steps, batch_size=batch_size,
                                     learning_rate=lr, weight_decay=spec.weight_decay,
                                     warmup=spec.warmup, seed=seed, progress=progress)
            trainer = FIRSTTrainer(
                student, args, examples, mode=mode,
                store=store if mode in ("first", "topk") else None,
                temperature_c=found["temperature_c"] if mode == "first" else None,
                other_bucket=other_bucket, teacher=teacher if mode == "kd" else None,
                tokenizer=tokenizer)
            seconds, losses = run_trainer(trainer, progress=progress)
        measured = evaluate_calibration(mode, student, tokenizer, test, out)
        measured["train_seconds"] = round(seconds, 1)
        measured["loss"] = losses[-1][1] if losses else None
        results["models"][mode] = measured
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    results["seconds"] = round(time.perf_counter() - clock, 1)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(format_first_table(results) + "\n")
    return results


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``successes / n`` (``n >= 1``)."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval: need 0 <= successes <= n and n >= 1, got "
                         f"successes={successes}, n={n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def format_first_table(results: dict[str, Any]) -> str:
    """The markdown table of :func:`run_first_effect`'s results."""
    lines = ["| model | answer accuracy [95% CI] | answer ECE | answer ECE (mass) | answer Brier | "
             "token accuracy | token ECE | token ECE (mass) | token NLL | token Brier |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    n = results["test_problems"]
    for name, m in results["models"].items():
        a, t = m["answer"], m["token"]
        lo, hi = wilson_interval(round(a["accuracy"] * n), n)
        lines.append(f"| {name} | {a['accuracy']:.1%} [{lo:.1%}, {hi:.1%}] | {a['ece']:.3f} | {a['ece_mass']:.3f} | "
                     f"{a['brier']:.3f} | {t['accuracy']:.2%} | {t['ece']:.4f} | "
                     f"{t['ece_mass']:.4f} | {t['nll']:.4f} | {t['brier']:.4f} |")
    c = results["calibration"]
    s = results["storage"]
    lines += ["", f"FIRST's c = {c['temperature_c']:g} (validation top-{results['k']} ECE "
                  f"{c['ece']:.4f}, at c = 1: {c['ece_at_1']:.4f}, {c['tokens']} tokens).",
              f"Storage: {s['tokens']} response tokens; top-{results['k']} store "
              f"{s['store_bytes']:,} bytes on disk ({s['topk_payload_bytes']:,} of ids and "
              f"log-probabilities) against {s['full_logits_bytes']['float16']:,} bytes of full "
              f"fp16 logits (V = {s['vocab_size']}); per token {s['bytes_per_token']['topk']} "
              f"bytes against {s['bytes_per_token']['full_fp16_at_V151936']:,} at V = 151936. "
              f"Captured mass: mean {s['mass']['mean']:.4f}, 5th percentile "
              f"{s['mass']['p5']:.4f}, min {s['mass']['min']:.4f}."]
    return "\n".join(lines)
