"""BOLT on the toy world: a long-thought format, a toy "instruct" model and the measured effect.

- The **long-thought format** of the toy (:data:`TOY_FORMAT`, from the toy alphabet): a thought
  that works the problem one step a line, then checks itself by undoing each step from the answer
  back to the first operand, then a short solution::

      Q: 12+34-5=?          <- the prompt (Problem.prompt)

      seek
      12+34=46              <- the steps
      46-5=41
      41+5=46               <- the checks: each step undone, back to the first operand
      46-34=12
      seen
      Answer: 41            <- the solution

- The **toy instruct model** (:func:`train_toy_instruct`): the shipped ``target`` model fine-tuned
  to answer a bare prompt directly (``"Answer: 41"``, no steps), and to follow a format shown in
  its prompt: trained on prompts with one or two examples in a format drawn from a family
  (delimiter words drawn at random from the toy letters, checks or none, or direct answers)
  followed by a query answered in the same format. 30% of the thought formats use the BOLT
  delimiters ``seek`` / ``seen``: held out entirely, the model did not copy them from the
  examples (docs/bolt.md), so bootstrapping tests format following, not generalisation.
- :func:`run_effect`: the whole method on the toy world, measured after each stage (the
  instruct model, the bootstrapped data, SFT, each DPO iteration): format rate, accuracy, mean
  thought length and reward. ``ponder bolt effect`` runs it.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..train.bolt import (
    BoltExample,
    BoltFormat,
    BoltPromptBuilder,
    VerifierReward,
    bootstrap,
    online_dpo,
    select_best,
    sft,
)
from .arithmetic import STEP_SEPARATOR, Problem, make_problems, split, verify
from .models import SPECS, load_toy_model, save_toy_model
from .oracle import ToyVerifier
from .train import _collate, cpu_training_args, run_trainer

__all__ = [
    "TOY_FORMAT",
    "ToyInstructSpec",
    "evaluate_toy_bolt",
    "run_effect",
    "toy_builder",
    "toy_examples",
    "toy_response",
    "toy_reward",
    "toy_thought",
    "train_toy_instruct",
]

TOY_FORMAT = BoltFormat(thought_open="seek\n", thought_close="\nseen\n", solution_open="",
                        solution_close="")
TOY_PROMPT_TEMPLATE = "{query}" + STEP_SEPARATOR  # the policy sees Problem.prompt
_INVERSE = {"+": "-", "-": "+"}


def toy_thought(problem: Problem, *, check: bool = True) -> str:
    """The long thought of ``problem``: its steps one a line, then (``check``) each step undone
    from the answer back to the first operand. Only ``+`` and ``-`` steps can be undone in the
    toy's integer steps, so a problem with a ``*`` gets no checks."""
    lines = list(problem.steps)
    if check and all(op in _INVERSE for op in problem.ops):
        value = problem.answer
        for op, right in zip(reversed(problem.ops), reversed(problem.operands[1:])):
            back = value - right if op == "+" else value + right
            lines.append(f"{value}{_INVERSE[op]}{right}={back}")
            value = back
    return "\n".join(lines)


def toy_response(problem: Problem, fmt: BoltFormat = TOY_FORMAT, *, check: bool = True) -> str:
    return fmt.render(toy_thought(problem, check=check), f"Answer: {problem.answer}")


def toy_examples(n: int = 10, *, seed: int = 1) -> list[BoltExample]:
    """``n`` toy in-context examples (1 to 3 steps, drawn with ``seed`` from problems outside the
    spec's test split): query ``"Q: ...=?"``, the long thought, ``"Answer: N"``."""
    pool = split(make_problems(4 * n + 40, seed=seed)).train
    picked = sorted(pool[: 3 * n], key=lambda p: p.n_steps)
    by_steps: dict[int, list[Problem]] = {}
    for p in picked:
        by_steps.setdefault(p.n_steps, []).append(p)
    chosen: list[Problem] = []
    while len(chosen) < n:  # round-robin over step counts: every length is shown
        for k in sorted(by_steps):
            if by_steps[k] and len(chosen) < n:
                chosen.append(by_steps[k].pop(0))
    return [BoltExample(p.question, toy_thought(p), f"Answer: {p.answer}") for p in chosen]


def toy_builder(m: int = 2, *, seed: int = 0, fmt: BoltFormat = TOY_FORMAT,
                examples: Sequence[BoltExample] | None = None) -> BoltPromptBuilder:
    """The bootstrapping prompt of the toy: ``m`` examples then the query, in the toy's plain
    layout (``"Q: ...=?\\n\\n"`` + response, examples separated by a blank line)."""
    return BoltPromptBuilder(toy_examples() if examples is None else examples, fmt=fmt, m=m,
                             instruction="", query_template=TOY_PROMPT_TEMPLATE,
                             response_prefix="", separator=STEP_SEPARATOR, seed=seed)


def toy_reward() -> VerifierReward:
    """1 for a solution with the right answer (:class:`ponder.toy.ToyVerifier`), else 0."""
    return VerifierReward(ToyVerifier())


# --------------------------------------------------------------------------------------------
# The toy instruct model
# --------------------------------------------------------------------------------------------

_LETTERS = "eknrsvw"  # the toy alphabet's lower-case letters


@dataclass(frozen=True)
class ToyInstructSpec:
    """How the toy instruct model is fine-tuned from the shipped ``target`` model.

    ``bare_share`` of the examples are a bare prompt answered directly; the others show 1 or 2
    examples in a format, then the query in the same format: direct answers (``direct_share``
    of them) or a thought between two random delimiter words (3-5 letters, never ``seek`` or
    ``seen``) with or without checks. ``bolt_delimiter_share`` of the thought formats use the
    BOLT delimiters ``seek`` / ``seen`` instead (default 0.3, measured in docs/bolt.md). 0 holds
    them out, so that following them in context would be generalisation; measured, the model
    then does not copy delimiter words it has not seen and bootstrapping keeps nothing."""

    steps: int = 800
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05
    bare_share: float = 0.3
    direct_share: float = 0.2
    bolt_delimiter_share: float = 0.3
    max_position_embeddings: int = 512
    n_problems: int = 20_000
    seed: int = 0


def _random_word(rng: random.Random) -> str:
    while True:
        w = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 5)))
        if w not in ("seek", "seen"):
            return w


def _instruct_text(rng: random.Random, problems: Sequence[Problem], spec: ToyInstructSpec
                   ) -> tuple[str, str]:
    """One training (prompt, target) of the instruct model."""
    query = rng.choice(problems)
    if rng.random() < spec.bare_share:
        return query.prompt, f"Answer: {query.answer}"
    shots = rng.sample(problems, rng.randint(1, 2))
    if rng.random() < spec.direct_share / (1 - spec.bare_share):
        def respond(p):
            return f"Answer: {p.answer}"
    else:
        a, b = _random_word(rng), _random_word(rng)
        while b == a:
            b = _random_word(rng)
        if rng.random() < spec.bolt_delimiter_share:
            a, b = "seek", "seen"
        fmt = BoltFormat(thought_open=f"{a}\n", thought_close=f"\n{b}\n", solution_open="",
                         solution_close="")
        check = rng.random() < 0.5

        def respond(p):
            return toy_response(p, fmt, check=check)
    prompt = "".join(p.prompt + respond(p) + STEP_SEPARATOR for p in shots) + query.prompt
    return prompt, respond(query)


class _InstructExamples(torch.utils.data.Dataset):
    def __init__(self, spec: ToyInstructSpec, problems: Sequence[Problem], tokenizer, n: int):
        rng = random.Random(spec.seed)
        eos = tokenizer.eos_token_id
        self.items = []
        for _ in range(n):
            prompt, target = _instruct_text(rng, problems, spec)
            p = tokenizer(prompt)["input_ids"]
            t = tokenizer(target, add_special_tokens=False)["input_ids"] + [eos]
            self.items.append((p + t, [-100] * len(p) + t))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        ids, labels = self.items[i]
        return {"input_ids": ids, "labels": labels}


def train_toy_instruct(out_dir: str | Path, *, spec: ToyInstructSpec = ToyInstructSpec(),
                       progress: bool = True) -> dict[str, Any]:
    """Fine-tune the shipped ``target`` model into the toy instruct model; save it to
    ``out_dir/instruct`` (loadable by ``load_toy_model("instruct", weights_dir=out_dir)``).
    Returns the recipe (spec, seconds, losses)."""
    import transformers
    from transformers import Trainer

    train_problems = split(make_problems(spec.n_problems, seed=spec.seed + 11)).train
    base, tok = load_toy_model("target")
    base.config.max_position_embeddings = spec.max_position_embeddings
    tok.padding_side = "right"
    data = _InstructExamples(spec, train_problems, tok, spec.steps * spec.batch_size)
    transformers.set_seed(spec.seed)
    base.train()
    with tempfile.TemporaryDirectory(prefix="ponder-bolt-instruct-") as scratch:
        args = cpu_training_args(scratch, steps=spec.steps, batch_size=spec.batch_size,
                                 learning_rate=spec.learning_rate,
                                 weight_decay=spec.weight_decay, warmup=spec.warmup,
                                 seed=spec.seed, progress=progress)
        trainer = Trainer(model=base, args=args, train_dataset=data,
                          data_collator=_collate(tok.pad_token_id))
        seconds, losses = run_trainer(trainer, progress=progress)
    folder = Path(out_dir) / "instruct"
    tok.padding_side = "left"
    save_toy_model(base, tok, folder)
    recipe = {"name": "instruct", "base": "target", "spec": asdict(spec),
              "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
              "loss": losses}
    (folder / "recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")
    return recipe


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@torch.inference_mode()
def _greedy(model, tok, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 64):
    from .models import generate_solutions

    return generate_solutions(model, tok, prompts, batch_size=batch_size,
                              max_new_tokens=max_new_tokens)


def evaluate_toy_bolt(model, tok, problems: Sequence[Problem], *, fmt: BoltFormat = TOY_FORMAT,
                      builder: BoltPromptBuilder | None = None, max_new_tokens: int = 160
                      ) -> dict[str, Any]:
    """Greedy responses to ``problems`` (their bare prompts, or ``builder``'s in-context prompts)
    and what they show: ``format_rate`` (:meth:`BoltFormat.parse` accepts), ``accuracy`` (the
    first ``"Answer:"`` of the text is right, whatever the format), ``thought_chars`` (mean
    thought length of the well-formed, in characters = tokens), ``reward`` (mean verifier reward
    of the solution, a malformed response counting 0)."""
    prompts = [builder(p.question) if builder is not None else p.prompt for p in problems]
    texts = _greedy(model, tok, prompts, max_new_tokens)
    parsed = [fmt.parse(t) for t in texts]
    ok = [r for r in parsed if r.ok]
    rewards = [float(verify(p, r.solution)) if r.ok else 0.0 for p, r in zip(problems, parsed)]
    return {
        "n": len(problems),
        "format_rate": len(ok) / len(problems),
        "accuracy": sum(verify(p, t) for p, t in zip(problems, texts)) / len(problems),
        "thought_chars": sum(len(r.thought) for r in ok) / len(ok) if ok else 0.0,
        "reward": sum(rewards) / len(problems),
        "example": texts[0],
    }


def run_effect(out_dir: str | Path, *, instruct_spec: ToyInstructSpec = ToyInstructSpec(),
               bootstrap_queries: int = 128, n: int = 8, m: int = 2,
               bootstrap_temperature: float = 0.7, percentile: float = 30.0,
               min_reward: float | None = 1.0, sft_epochs: float = 4.0,
               sft_learning_rate: float = 1e-3, dpo_queries: int = 96, dpo_iterations: int = 3,
               dpo_n: int = 8, dpo_temperature: float = 1.0, dpo_learning_rate: float = 5e-5,
               beta: float = 0.1, eval_problems: int = 200, seed: int = 0,
               instruct_dir: str | Path | None = None, progress: bool = True,
               log=print) -> dict[str, Any]:
    """BOLT end to end on the toy world; returns (and writes to ``out_dir/effect.json``) one row
    per stage: ``instruct`` (bare prompts), ``instruct+icl`` (the bootstrapping prompts),
    ``bootstrap`` (the selected data), ``sft``, ``dpo-1`` ... (each measured by
    :func:`evaluate_toy_bolt` on ``eval_problems`` test problems of the target spec).

    ``instruct_dir``: a folder holding a trained ``instruct/`` model to start from; else one is
    trained first (:func:`train_toy_instruct`, into ``out_dir``)."""
    from ..generation import TransformersGenerator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def record(stage: str, metrics: dict[str, Any]) -> None:
        row = {"stage": stage, **metrics, "seconds": round(time.perf_counter() - start, 1)}
        rows.append(row)
        log(_format_row(row))
        (out / "effect.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")

    if instruct_dir is None:
        log("training the toy instruct model ...")
        train_toy_instruct(out, spec=instruct_spec, progress=progress)
        instruct_dir = out
    model, tok = load_toy_model("instruct", weights_dir=instruct_dir)
    test = SPECS["target"].splits().test[:eval_problems]
    builder = toy_builder(m, seed=seed)
    log(_format_header())
    record("instruct", evaluate_toy_bolt(model, tok, test))
    record("instruct+icl", evaluate_toy_bolt(model, tok, test, builder=builder))

    # Stage 1: queries from the train split, away from the examples and the test problems
    pool = split(make_problems(4000, seed=seed + 101)).train
    boot_q = pool[:bootstrap_queries]
    dpo_q = pool[bootstrap_queries:bootstrap_queries + dpo_queries]
    gen = TransformersGenerator(model, tok, batch_size=64)
    samples = out / "bootstrap.samples.jsonl"
    if samples.exists():
        samples.unlink()
    bootstrap([{"query": p.question, "reference": p.answer} for p in boot_q], gen, builder,
              toy_reward(), samples, n=n, max_new_tokens=160,
              temperature=bootstrap_temperature, stop=["\n\nQ"], seed=seed, progress=progress)
    chosen, stats = select_best(samples, out / "bootstrap.jsonl", percentile=percentile,
                                min_reward=min_reward)
    for line in stats.lines():
        log("  " + line)
    right = [verify(r["reference"], r["solution"]) for r in chosen]
    record("bootstrap", {"n": len(chosen), "format_rate": stats.format_kept / stats.samples,
                         "accuracy": sum(right) / len(chosen) if chosen else 0.0,
                         "thought_chars": stats.mean_thought_chars_kept or 0.0,
                         "reward": stats.mean_reward_kept or 0.0, "stats": stats.to_dict()})

    if not chosen:  # nothing to fine-tune on: say so rather than fail
        log("no bootstrapped data survived the filters: stopping after stage 1")
        result = {"rows": rows, "dpo": [], "stopped": "no bootstrapped data",
                  "seconds": round(time.perf_counter() - start, 1)}
        (out / "effect.json").write_text(json.dumps(result, indent=1) + "\n")
        return result

    # Stage 2
    model.config.use_cache = False
    tok.padding_side = "right"
    sft(model, tok, chosen, out / "sft", fmt=TOY_FORMAT, prompt_template=TOY_PROMPT_TEMPLATE,
        learning_rate=sft_learning_rate, batch_size=16, epochs=sft_epochs, max_length=512,
        seed=seed, progress=progress, save=True)
    tok.padding_side = "left"
    model.config.use_cache = True
    record("sft", evaluate_toy_bolt(model, tok, test))

    # Stage 3
    def after(result, m_):
        tok.padding_side = "left"
        m_.config.use_cache = True
        record(f"dpo-{result.iteration + 1}", {
            **evaluate_toy_bolt(m_, tok, test), "pairs": result.pairs,
            "sample_format_rate": result.format_rate, "sample_reward": result.mean_reward})

    history = online_dpo(
        model, tok, [{"query": p.question, "reference": p.answer} for p in dpo_q], toy_reward(),
        out / "dpo", generator=TransformersGenerator(model, tok, batch_size=64), fmt=TOY_FORMAT,
        prompt_template=TOY_PROMPT_TEMPLATE, iterations=dpo_iterations, n=dpo_n,
        temperature=dpo_temperature, max_new_tokens=160, beta=beta, seed=seed,
        progress=progress, on_iteration=after, learning_rate=dpo_learning_rate, batch_size=16,
        max_length=512)
    result = {"rows": rows, "dpo": [asdict(h) for h in history],
              "seconds": round(time.perf_counter() - start, 1),
              "threads": torch.get_num_threads()}
    (out / "effect.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def _format_header() -> str:
    return f"{'stage':<14}{'n':>5}{'format':>9}{'accuracy':>10}{'thought':>9}{'reward':>8}"


def _format_row(row: dict[str, Any]) -> str:
    return (f"{row['stage']:<14}{row['n']:>5}{row['format_rate']:>9.1%}{row['accuracy']:>10.1%}"
            f"{row['thought_chars']:>9.1f}{row['reward']:>8.3f}")


def format_effect(result: dict[str, Any]) -> str:
    """The effect table: one line per stage."""
    return "\n".join([_format_header(), *(_format_row(r) for r in result["rows"])])

