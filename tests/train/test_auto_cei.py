"""Auto-CEI (ponder.train.auto_cei): the reward, the initialisation, the objective and the hill
climb against hand-computed values (no model), then the loop on a tiny model built from a config:
the data it trains on, resuming after interruptions, the metrics."""

from __future__ import annotations

import math
import random

import pytest

from ponder.train import auto_cei as ac
from ponder.train.auto_cei import (
    AutoCEIConfig,
    HillClimb,
    auto_cei_reward,
    blank_line_steps,
    init_curriculum,
    is_refusal,
    objective,
    outcome,
    refusal_reward,
    refusal_tuning_example,
    resample_examples,
    summarize,
)

# --------------------------------------------------------------------------------------------
# The reward
# --------------------------------------------------------------------------------------------


def test_refusal_reward_hand_values():
    # c2 = ln 3, n - c1 = +-1: exp(-+ln 3) = 1/3 or 3 -> 2 / (4/3) - 1 = 0.5, 2 / 4 - 1 = -0.5
    assert refusal_reward(4, 3, math.log(3)) == pytest.approx(0.5)
    assert refusal_reward(2, 3, math.log(3)) == pytest.approx(-0.5)
    assert refusal_reward(3, 3, 5.0) == 0.0
    # the formula as written, at a few points, and bounded for huge arguments
    for n, c1, c2 in [(0, 2.5, 0.7), (7, 2.5, 0.7), (3, 1.0, 2.0)]:
        assert refusal_reward(n, c1, c2) == pytest.approx(2 / (1 + math.exp(-c2 * (n - c1))) - 1)
    assert refusal_reward(10_000, 0, 10) == 1.0 and refusal_reward(-10_000, 0, 10) == -1.0


def test_refusal_is_detected_first_from_one_list():
    text = "12+34=46\n\n46-5=41\n\nAnswer: ?"
    # a refusal is never right, whatever the verifier says, and gets the step-dependent reward
    assert outcome(text, True) == "refused"
    assert auto_cei_reward(text, True, c1=2, c2=1.0) == 0.0  # 2 steps, c1 = 2
    assert auto_cei_reward(text, False, c1=1, c2=math.log(3) * 1.0) == pytest.approx(0.5)
    assert auto_cei_reward("12+34=46\n\nAnswer: 46", True, c1=2, c2=1.0) == 1.0
    assert auto_cei_reward("12+34=46\n\nAnswer: 47", False, c1=2, c2=1.0) == -1.0
    # case-insensitive, any phrase of the list; a custom list replaces the default everywhere
    assert is_refusal("Well, i DON'T know.") and not is_refusal("Answer: 5")
    assert is_refusal("no idea", ["No idea"]) and not is_refusal("I don't know", ["No idea"])
    assert outcome("I don't know", True, ["No idea"]) == "right"


def test_step_counting():
    assert blank_line_steps("12+34=46\n\n46-5=41\n\nAnswer: ?") == 2
    assert blank_line_steps("Answer: 5") == 0
    assert blank_line_steps("1+1=2\n\n\n\n2+1=3") == 2  # an empty chunk is no step
    assert blank_line_steps("1+1=2\n\nAnswer: 2\n\n2+1=3") == 1  # nothing after the answer
    # the counter is the task's: the reward takes any function
    assert auto_cei_reward("a. b. c. I don't know", False, c1=3, c2=1.0,
                           count_steps=lambda t: t.count(".")) == 0.0


# --------------------------------------------------------------------------------------------
# Initialisation, objective, metrics
# --------------------------------------------------------------------------------------------


def test_init_curriculum_hand_values():
    # sigma over ALL: pstdev(1, 2, 3, 4) = sqrt(1.25); mean over the REFUSALS only: 3.5
    ini = init_curriculum([1, 2, 3, 4], [False, False, True, True])
    sigma = math.sqrt(1.25)
    assert ini.sigma == pytest.approx(sigma)
    assert ini.mean_refusal_steps == 3.5
    assert ini.s == pytest.approx(0.2 * sigma)
    assert ini.c1 == pytest.approx(3.5 + 0.2 * sigma)
    assert ini.c2 == pytest.approx(math.log(10) / (4 * sigma))
    # s is capped at 0.5: sigma = 5 -> s = min(1, 0.5)
    ini = init_curriculum([0, 10], [True, False])
    assert (ini.s, ini.c1, ini.c2) == pytest.approx((0.5, 0.5, math.log(10) / 20))
    with pytest.raises(ValueError, match="no response is a refusal"):
        init_curriculum([1, 2], [False, False])
    with pytest.raises(ValueError, match="sigma = 0"):
        init_curriculum([3, 3], [True, False])


def test_objective_and_summary_hand_values():
    assert objective(0.9, 0.25) == pytest.approx(0.8 * 0.9 + 0.2 * 0.75)
    assert objective(0.9, 0.25, lam=0.5) == pytest.approx(0.45 + 0.375)
    m = summarize(["right", "wrong", "refused", "right"], [1, 1, 2, 2])
    assert m["accuracy"] == 0.5 and m["refusal_rate"] == 0.25
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["f"] == pytest.approx(0.8 * 2 / 3 + 0.2 * 0.75)
    assert m["by_difficulty"]["1"] == pytest.approx(
        {"n": 2, "accuracy": 0.5, "precision": 0.5, "refusal_rate": 0.0, "f": 0.6})
    assert m["by_difficulty"]["2"] == pytest.approx(
        {"n": 2, "accuracy": 0.5, "precision": 1.0, "refusal_rate": 0.5, "f": 0.9})
    # nothing answered: precision 0, not a division by zero
    assert summarize(["refused", "refused"])["f"] == 0.0


# --------------------------------------------------------------------------------------------
# The hill climb, on objectives with a known optimum
# --------------------------------------------------------------------------------------------


def _climb(f, c1_0, s, **kw):
    climb, seen = HillClimb(c1_0, s, **kw), []
    while (c1 := climb.propose()) is not None:
        seen.append(c1)
        climb.report(f(c1))
    return climb, seen


@pytest.mark.parametrize("c1_0", [0.0, 1.0, 3.5, 6.0, 9.0])
@pytest.mark.parametrize("direction", [1, -1])
def test_hill_climb_finds_the_grid_optimum(c1_0, direction):
    f = lambda c1: -(c1 - 3.7) ** 2  # noqa: E731  the grid's best point is 3.5 (|0.2| < |0.3|)
    climb, seen = _climb(f, c1_0, 0.5, direction=direction, max_evals=50)
    assert climb.best_c1 == pytest.approx(3.5)
    assert climb.best_f == pytest.approx(f(3.5))
    assert len(set(round(c, 9) for c in seen)) == len(seen)  # never measured twice
    for index, score in climb.scores.items():  # every score is stored under its own c1
        assert score == pytest.approx(f(c1_0 + index * 0.5))


def test_hill_climb_turns_after_a_failed_move_and_keeps_going():
    # start at 6 going up: 6.5 is worse, so it must turn and walk down 5 steps (the original
    # stopped moving after the failed step and never decreased c1)
    climb, seen = _climb(lambda c1: -abs(c1 - 3.5), 6.0, 0.5, direction=1)
    assert seen == pytest.approx([6.0, 6.5, 5.5, 5.0, 4.5, 4.0, 3.5, 3.0])
    assert climb.best_c1 == 3.5 and climb.done


def test_hill_climb_budget_and_resume():
    f = lambda c1: c1  # noqa: E731  no optimum: the budget stops it
    climb, seen = _climb(f, 0.0, 1.0, max_evals=4)
    assert seen == [0.0, 1.0, 2.0, 3.0] and climb.best_c1 == 3.0
    # the state survives a round trip mid-climb, a pending proposal included
    a = HillClimb(0.0, 0.5)
    for _ in range(3):
        a.report(-abs(a.propose() - 1.2))
    pending = a.propose()
    b = HillClimb.from_dict(a.to_dict())
    assert b.propose() == pending
    with pytest.raises(ValueError, match="nothing was proposed"):
        HillClimb(0.0, 1.0).report(1.0)
    with pytest.raises(ValueError, match="s must be > 0"):
        HillClimb(0.0, 0.0)


# --------------------------------------------------------------------------------------------
# The training data
# --------------------------------------------------------------------------------------------


def test_resampling_weights_and_filter():
    # n_resample 0: the originals with R > -1, each once
    assert resample_examples([1.0, -1.0, 0.5], n_resample=0, tau=0.7,
                             rng=random.Random(0)) == [0, 2]
    # draws follow exp(R / tau): with R = 1 and 0 and tau = 1, about e : 1; -1 never kept
    picks = resample_examples([1.0, 0.0, -1.0], n_resample=20_000, tau=1.0,
                              rng=random.Random(1))
    assert 2 not in picks
    ratio = (picks.count(0) - 1) / (picks.count(1) - 1)
    assert ratio == pytest.approx(math.e / 1.0, rel=0.05)
    # a small tau makes the draws greedy without overflowing
    picks = resample_examples([1.0, 0.9], n_resample=100, tau=1e-3, rng=random.Random(2))
    assert picks[:100] == [0] * 100


def test_refusal_tuning_example_cuts_at_the_final_answer():
    from ponder.toy.auto_cei import ToyTask

    wrong = "12+34=46\n\n46-5=40\n\nAnswer: 40"
    cut = ToyTask([], [], [], max_new_tokens=8).cut_at_answer
    assert refusal_tuning_example(wrong, cut_at=cut) == "12+34=46\n\n46-5=40\n\nAnswer: ?"
    assert refusal_tuning_example("Answer: 3", cut_at=cut) == "Answer: ?"
    kept = refusal_tuning_example(wrong, cut_at=lambda t: t, sentence="I don't know")
    assert kept == wrong + "\n\nI don't know"


def test_config_checks():
    with pytest.raises(ValueError, match="refusal_sentence"):
        AutoCEIConfig(refusal_phrases=("No idea",))
    with pytest.raises(ValueError, match="retrain_from"):
        AutoCEIConfig(retrain_from="scratch")
    with pytest.raises(ValueError, match="lam"):
        AutoCEIConfig(lam=1.5)
    cfg = AutoCEIConfig()
    assert (cfg.k, cfg.n_resample, cfg.max_iterations, cfg.tol, cfg.lam) == (16, 16, 3, 0.003,
                                                                          0.2)
    assert (cfg.lora.r, cfg.lora.alpha, cfg.learning_rate) == (128, 64, 3e-4)
    assert AutoCEIConfig.from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------------------------
# The loop, on a tiny model
# --------------------------------------------------------------------------------------------


def _tiny_policy():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ponder.toy import make_tokenizer
    from ponder.toy.models import _BASE_CONFIG

    torch.manual_seed(0)
    cfg = LlamaConfig(**{**_BASE_CONFIG, "hidden_size": 16, "intermediate_size": 32,
                         "num_hidden_layers": 1, "num_attention_heads": 2,
                         "num_key_value_heads": 2})
    return LlamaForCausalLM(cfg).eval(), make_tokenizer(padding_side="left")


def _tiny_task():
    from ponder.toy.auto_cei import ToyTask
    from ponder.toy.arithmetic import make_problems

    ps = make_problems(20, seed=3, min_steps=1, max_steps=3, digits=1)
    return ToyTask(ps[:10], ps[10:15], ps[15:], max_new_tokens=12)


# An untrained model writes near-random characters: "?" (a refusal here) in about half of them.
# tau is set since such a model is never right (its precision, the default tau, would be 0).
TINY = AutoCEIConfig(refusal_phrases=("?",), k=3, n_resample=2, refusal_k=1, max_iterations=2,
                     max_curriculum_evals=2, lora=None, batch_size=8, learning_rate=1e-3,
                     tau=0.5, tol=0.0, eval_batch_size=32, retrain_from="continue")


def test_run_resumes_without_repeating_a_finished_stage(tmp_path, monkeypatch):
    task, recorded = _tiny_task(), []

    class Stop(Exception):
        pass

    def stop_after(n):
        def hook(stage):
            recorded.append(stage)
            if len(recorded) == n:
                raise Stop(stage)
        return hook

    out = tmp_path / "run"
    # 1. killed between stages, right after the 4th
    with pytest.raises(Stop):
        ac.AutoCEI(task, out, TINY, base=_tiny_policy(), on_stage=stop_after(4)).run()
    assert recorded == ["base", "refusal_data", "refusal_tune", "init"]
    # 2. killed inside a stage: the second SFT of this session fails half-way
    calls = {"sft": 0}
    real_sft = ac.sft

    def failing_sft(*args, **kw):
        calls["sft"] += 1
        if calls["sft"] == 2:
            raise Stop("inside train")
        return real_sft(*args, **kw)

    monkeypatch.setattr(ac, "sft", failing_sft)
    with pytest.raises(Stop):
        ac.AutoCEI(task, out, on_stage=recorded.append).run()
    monkeypatch.setattr(ac, "sft", real_sft)
    # 3. the rest: a config is not needed to resume, and another config is refused
    with pytest.raises(ValueError, match="another config"):
        ac.AutoCEI(task, out, AutoCEIConfig())
    run = ac.AutoCEI(task, out, on_stage=recorded.append)
    state = run.run()
    assert state["finished"]
    assert len(recorded) == len(set(recorded)), recorded  # nothing done twice
    assert recorded == state["done"]
    trains = [s for s in recorded if s.startswith("train ")]
    assert trains[0] == "train s0_i0" and "sample s0_i0" in recorded
    # the hill climb measured the points it was allowed, each step one score
    climb = HillClimb.from_dict(state["climb"])
    assert climb.done and len(climb.scores) == len(state["steps"]) <= TINY.max_curriculum_evals
    for step in state["steps"]:
        assert step["f"] == max(state["metrics"][n]["f"] for n in step["iterations"])
        assert 1 <= len(step["iterations"]) <= TINY.max_iterations
    # c1 starts where the initialisation put it
    assert state["steps"][0]["c1"] == pytest.approx(state["c1_0"])
    ini = init_curriculum([r["steps"] for r in run._read_samples("init")],
                          [r["outcome"] == "refused" for r in run._read_samples("init")])
    assert (state["c1_0"], state["c2"]) == pytest.approx((ini.c1, ini.c2))
    # metrics have every part, by difficulty too; the best model loads and evaluates
    m = run.evaluate("best", "test")
    assert set(m) >= {"accuracy", "precision", "refusal_rate", "f", "by_difficulty"}
    assert sum(d["n"] for d in m["by_difficulty"].values()) == len(task.test)
    assert state["best"]["f"] >= state["metrics"]["refusal_tuned"]["f"]


def test_expert_data_follows_the_reward(tmp_path):
    task = _tiny_task()
    run = ac.AutoCEI(task, tmp_path / "r", TINY)
    run.state.update(c2=1.0, tau=0.5)
    rows = [{"q": 0, "text": "A", "outcome": "right", "steps": 0},
            {"q": 0, "text": "B", "outcome": "wrong", "steps": 3},
            {"q": 0, "text": "C", "outcome": "refused", "steps": 0},   # R = tanh(-1) > -1
            {"q": 1, "text": "D", "outcome": "wrong", "steps": 1}]
    data = run._expert_data(rows, c1=2.0, seed=0)
    texts = [c for _, c in data]
    assert "B" not in texts and "D" not in texts  # wrong answers never trained on
    assert texts.count("A") >= 1 and texts.count("C") >= 1
    assert len(texts) <= TINY.n_resample + 2  # draws of question 0 plus its kept originals
    assert all(p == task.prompt(task.train[0]) for p, _ in data)


def test_sft_trains_on_completions_only(tmp_path):
    import torch

    from ponder.train.sft import sft_trainer

    model, tok = _tiny_policy()

    prompt, completion = "Q: 1+2=?\n\n", "1+2=3\n\nAnswer: 3"
    trainer = sft_trainer(model, tok, [{"prompt": prompt, "completion": completion}], tmp_path,
                          learning_rate=1e-2, batch_size=16)
    row = trainer.train_dataset[0]
    # <bos> + prompt carry no loss (label -100); the completion and the <eos> TRL appends do
    n_prompt = 1 + len(prompt)  # one token a character
    assert row["labels"][:n_prompt] == [-100] * n_prompt
    assert row["labels"][n_prompt:] == row["input_ids"][n_prompt:]
    assert len(row["input_ids"]) == n_prompt + len(completion) + 1
    assert row["input_ids"][-1] == tok.eos_token_id

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tok.padding_side = "right"
    trained = ac.sft(model, tok, [("Q: 1+2=?\n\n", "1+2=3\n\nAnswer: 3")] * 8,
                     learning_rate=1e-2, batch_size=4, seed=0)
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    # with LoRA the adapter is merged: the same module names come back, with new weights
    model, tok = _tiny_policy()
    trained = ac.sft(model, tok, [("Q: 1+2=?\n\n", "1+2=3\n\nAnswer: 3")] * 8,
                     learning_rate=1e-2, batch_size=4, seed=0,
                     lora=ac.LoraSettings(r=4, alpha=8, dropout=0.0))
    assert {n for n, _ in trained.named_parameters()} == set(before)
