"""OREO on the toy arithmetic world: collection, training, search and the effect experiment.

The SFT policy is the toy draft model (:func:`ponder.toy.load_toy_model`). :func:`toy_collect`
samples its responses to train-split questions and keeps a balanced set; :func:`toy_train_oreo`
trains OREO (policy + value model) on it; :func:`toy_train_rft` is the rejection-sampling
fine-tuning baseline (SFT on the right samples of the same data, same steps and optimiser);
:func:`effect` runs the whole comparison on the test split (``ponder oreo effect``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .arithmetic import Problem, verify
from .models import SPECS, evaluate_accuracy, load_toy_model

__all__ = [
    "ToyOREORecipe",
    "effect",
    "load_toy_oreo",
    "toy_collect",
    "toy_questions",
    "toy_train_oreo",
    "toy_train_rft",
    "wilson_interval",
]


@dataclass
class ToyOREORecipe:
    """The toy experiment's settings (the defaults are what ``ponder oreo effect`` runs).

    Sized to run in about 15 minutes on 2 CPU cores (one sampling round on 500 train questions,
    200 steps). The learning rates are far above the paper's 5e-6 (the toy models have 0.27M
    parameters and train for a few hundred steps) and ``beta`` is 0.3, not the paper's 0.03:
    in short pilot runs (100 steps on 256 questions, first 200 test problems; docs/oreo.md)
    beta = 0.03 with lr 1e-4 lowered the draft's greedy accuracy (86 / 200 against 112 / 200)
    and 1e-3 wrecked it (12 / 200), while beta = 0.3 left it unchanged.
    """

    train_questions: int = 500
    k: int = 8
    rounds: int = 1
    max_right: int = 4
    max_wrong: int = 4
    top_p: float = 0.9
    steps: int = 200
    batch_size: int = 32
    learning_rate: float = 1e-4
    critic_learning_rate: float = 3e-3
    beta: float = 0.3
    alpha: float = 0.01
    kl: str = "exact"
    warmup: float = 0.03
    test_problems: int = 400
    search_problems: int = 300
    beam_widths: tuple[int, ...] = (4, 7)
    seed: int = 0


def toy_questions(split: str = "train", n: int | None = None) -> list[dict[str, Any]]:
    """Rows ``{"id", "prompt", "problem"}`` of the draft's split (``"train"``, ``"validation"``,
    ``"test"``)."""
    parts = SPECS["draft"].splits()
    problems = list(getattr(parts, split))[:n]
    return [{"id": f"{split}-{i}", "prompt": p.prompt, "problem": p}
            for i, p in enumerate(problems)]


def _verify(q: dict[str, Any], response: str) -> bool:
    return verify(q["problem"], response)


def _max_new_tokens(problems: Sequence[Problem]) -> int:
    return max(len(p.target) for p in problems) + 16


def load_toy_oreo(*, weights_dir: str | Path | None = None):
    """The shipped step-level OREO policy and value model: ``(policy, value_model, tokenizer)``,
    float32, eval mode, the tokenizer padding on the left.

    Trained from the toy draft by :func:`toy_collect` and :func:`toy_train_oreo` with
    :class:`ToyOREORecipe`'s defaults (``weights/oreo/recipe.json``); on the toy world they do
    not beat the draft (docs/oreo.md): they are there to run value-guided search offline.
    """
    from ..train.oreo import load_value_model
    from .models import _no_progress_bars, default_weights_dir

    root = default_weights_dir() if weights_dir is None else Path(weights_dir)
    policy, tok = load_toy_model("oreo", weights_dir=root)
    with _no_progress_bars():  # a bar for a 0.5 MB file is noise
        value = load_value_model(root / "oreo" / "value")
    return policy, value.eval(), tok


def toy_collect(path: str | Path, recipe: ToyOREORecipe | None = None, *,
                policy=None, progress: Callable[[int, int], None] | None = None
                ) -> dict[str, int]:
    """Collect OREO data from the draft (or ``policy``) on the train split into ``path``."""
    from ..generation import TransformersGenerator
    from ..train.oreo import collect

    r = recipe or ToyOREORecipe()
    model, tok = load_toy_model("draft")
    if policy is not None:
        model = policy
    qs = toy_questions("train", r.train_questions)
    gen = TransformersGenerator(model, tok, batch_size=512)
    return collect(gen, qs, _verify, path, k=r.k, rounds=r.rounds, max_right=r.max_right,
                   max_wrong=r.max_wrong, temperature=1.0, top_p=r.top_p,
                   max_new_tokens=_max_new_tokens([q["problem"] for q in qs]), chunk=128,
                   seed=r.seed, progress=progress)


def _args(out: Path, r: ToyOREORecipe, lr: float):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=r.batch_size, max_steps=r.steps,
        learning_rate=lr, weight_decay=0.0, warmup_steps=max(1, round(r.warmup * r.steps)),
        lr_scheduler_type="cosine", adam_beta1=0.9, adam_beta2=0.95, report_to=[],
        logging_steps=max(1, r.steps // 10), save_strategy="no", use_cpu=True, seed=r.seed,
        data_seed=r.seed, disable_tqdm=True, dataloader_num_workers=0, max_grad_norm=1.0)


def toy_train_oreo(rows: Sequence[dict[str, Any]], out: str | Path,
                   recipe: ToyOREORecipe | None = None, *, level: str = "step"):
    """Train OREO from the draft on JSONL ``rows``; returns ``(policy, value_model, trainer)``
    (eval mode, not saved)."""
    from ..train.oreo import OREOConfig, OREOTrainer, ValueModel, rows_to_dataset

    r = recipe or ToyOREORecipe()
    torch.manual_seed(r.seed)
    policy, tok = load_toy_model("draft")
    policy.train()
    delim = tuple(tok("\n\n", add_special_tokens=False)["input_ids"])
    cfg = OREOConfig(beta=r.beta, alpha=r.alpha, kl=r.kl, level=level, step_delimiter=delim)
    trainer = OREOTrainer(policy, ValueModel.from_policy(policy), oreo=cfg,
                          critic_learning_rate=r.critic_learning_rate,
                          args=_args(Path(out), r, r.learning_rate),
                          train_dataset=rows_to_dataset(tok, rows), processing_class=tok)
    trainer.train()
    trainer.policy.eval()
    trainer.value_model.eval()
    return trainer.policy, trainer.value_model, trainer


def _sft_trainer_class():
    from transformers import Trainer

    from ..ops.lm_head import token_logprobs

    class _RFTTrainer(Trainer):
        """SFT on the response tokens (the mean negative log-likelihood per token), the same
        fused op as OREO's."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids, att = inputs["input_ids"], inputs["attention_mask"]
            h = model.get_decoder()(input_ids=ids, attention_mask=att,
                                    use_cache=False).last_hidden_state[:, :-1]
            mask = (inputs["action_mask"][:, 1:] * att[:, 1:]).bool().reshape(-1)
            lp = token_logprobs(h.reshape(-1, h.shape[-1]), model.lm_head.weight,
                                ids[:, 1:].reshape(-1), mask=mask)
            return -lp.sum() / mask.sum().clamp_min(1)

    return _RFTTrainer


def toy_train_rft(rows: Sequence[dict[str, Any]], out: str | Path,
                  recipe: ToyOREORecipe | None = None):
    """Rejection-sampling fine-tuning: SFT of the draft on the right rows, same steps, batch,
    learning rate and schedule as OREO's actor. Returns the model (eval mode)."""
    from ..train.oreo import OREOCollator, rows_to_dataset

    r = recipe or ToyOREORecipe()
    torch.manual_seed(r.seed)
    model, tok = load_toy_model("draft")
    model.train()
    right = [x for x in rows if float(x["reward"]) > 0.5]
    args = _args(Path(out), r, r.learning_rate)
    args.remove_unused_columns = False
    trainer = _sft_trainer_class()(model=model, args=args,
                                   train_dataset=rows_to_dataset(tok, right),
                                   data_collator=OREOCollator(tok.pad_token_id))
    trainer.train()
    model.eval()
    return model


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (c - h, c + h)


def _row(name: str, right: int, n: int, **extra) -> dict[str, Any]:
    lo, hi = wilson_interval(right, n)
    return {"method": name, "accuracy": right / n, "ci95": [lo, hi], "n": n, **extra}


def _greedy(model, tok, problems) -> int:
    acc = evaluate_accuracy(model, tok, problems, batch_size=256)
    return round(acc["accuracy"] * acc["n"])


def effect(out: str | Path, recipe: ToyOREORecipe | None = None, *,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """The toy-world comparison (one seeded run): collect from the draft, train RFT and OREO
    (token and step level), then greedy test accuracy of each, and on the step-level OREO
    policy value-guided beam search (each beam width) vs greedy vs best-of-N by the value with
    N = B * B. Writes ``effect.json`` and the data under ``out``; returns the result."""
    from ..decoding.value_search import value_beam_search, value_best_of_n
    from ..train.oreo import read_jsonl

    r = recipe or ToyOREORecipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(r.seed)
    data = out / "oreo_data.jsonl"
    stats = toy_collect(data, r)
    rows = read_jsonl(data)
    log(f"collected {len(rows)} rows ({sum(x['reward'] > 0.5 for x in rows)} right) from "
        f"{r.train_questions} train questions in {time.time() - t0:.0f} s")
    _, tok = load_toy_model("draft")
    test = [q["problem"] for q in toy_questions("test", r.test_problems)]
    results: dict[str, Any] = {"recipe": asdict(r), "collect": stats, "rows": len(rows),
                               "greedy": [], "search": []}
    draft, _ = load_toy_model("draft")
    results["greedy"].append(_row("SFT policy (toy draft)", _greedy(draft, tok, test), len(test)))
    t = time.time()
    rft = toy_train_rft(rows, out / "rft", r)
    results["greedy"].append(_row("RFT", _greedy(rft, tok, test), len(test),
                                  train_seconds=round(time.time() - t)))
    log(f"RFT trained in {time.time() - t:.0f} s")
    models = {}
    for level in ("token", "step"):
        t = time.time()
        policy, value, _ = toy_train_oreo(rows, out / f"oreo_{level}", r, level=level)
        models[level] = (policy, value)
        results["greedy"].append(_row(f"OREO ({level} level)", _greedy(policy, tok, test),
                                      len(test), train_seconds=round(time.time() - t)))
        log(f"OREO {level} level trained in {time.time() - t:.0f} s")
    for row in results["greedy"]:
        log(f"  greedy  {row['method']:<24} {row['accuracy']:.3f} "
            f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] n={row['n']}")
    # test-time search with the step-level OREO policy and value model
    policy, value = models["step"]
    sp = test[:r.search_problems]
    prompts = [p.prompt for p in sp]
    mnt = _max_new_tokens(sp)

    def right(texts):
        return sum(verify(p, x) for p, x in zip(sp, texts))

    results["search"].append(_row("greedy", _greedy(policy, tok, sp), len(sp)))
    for B in r.beam_widths:
        t = time.time()
        bs = value_beam_search(policy, value, tok, prompts, beam_width=B, max_new_tokens=mnt,
                               max_step_tokens=32, seed=r.seed, batch_size=512)
        results["search"].append(_row(f"value beam search B={B}", right(bs.texts), len(sp),
                                      sampled_tokens=bs.sampled_tokens,
                                      seconds=round(time.time() - t)))
        t = time.time()
        bon = value_best_of_n(policy, value, tok, prompts, n=B * B, max_new_tokens=mnt,
                              seed=r.seed, batch_size=512)
        results["search"].append(_row(f"best-of-{B * B} by value", right(bon.texts), len(sp),
                                      sampled_tokens=bon.sampled_tokens,
                                      seconds=round(time.time() - t)))
    for row in results["search"]:
        log(f"  search  {row['method']:<24} {row['accuracy']:.3f} "
            f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] n={row['n']}"
            + (f" tokens={row['sampled_tokens']}" if "sampled_tokens" in row else ""))
    results["seconds"] = round(time.time() - t0)
    (out / "effect.json").write_text(json.dumps(results, indent=1))
    results["models"] = models
    return results
