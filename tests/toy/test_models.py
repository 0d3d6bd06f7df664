"""ponder.toy.models and ponder.toy.train: the shipped draft and target models, and the training
code that made them."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

import torch
from ponder.toy import ArithmeticConfig, make_problems
from ponder.toy.models import (
    SPECS,
    default_weights_dir,
    evaluate_accuracy,
    load_toy_model,
    read_recipe,
)

# Greedy accuracy floors on the first 100 test problems (deterministic: greedy decoding of fixed
# problems with fixed weights), a few points below what the shipped weights score there (see
# recipe.json and the README): by number of steps, and on the 2- and 3-step problems together.
# Measured there (40 / 32 / 28 problems of 1 / 2 / 3 steps): draft 80% / 47% / 25%, target
# 100% / 97% / 100%.
FLOORS = {
    "draft": {1: 0.70, 2: 0.35, 3: 0.15},
    "target": {1: 0.90, 2: 0.85, 3: 0.85},
}
# How much better the target must be than the draft on the 2- and 3-step problems (measured:
# 98% against 37%).
TARGET_MARGIN = 0.30

N_TEST = 100


def _test_problems(name: str):
    # The first 5000 problems of the spec's data: their test part is a subset of the full test
    # split (the split is by question, and the first problems do not depend on n).
    return SPECS[name].splits(5000).test[:N_TEST]


@pytest.fixture(scope="module")
def models():
    return {name: load_toy_model(name) for name in SPECS}


@pytest.fixture(scope="module")
def accuracy(models):
    return {
        name: evaluate_accuracy(model, tok, _test_problems(name), batch_size=N_TEST)
        for name, (model, tok) in models.items()
    }


def _multi_step(acc: dict) -> float:
    right = sum(acc["by_steps"][k] * acc["n_by_steps"][k] for k in (2, 3))
    return right / sum(acc["n_by_steps"][k] for k in (2, 3))


# ---- the shipped weights ---------------------------------------------------------------------


def test_shipped_weights_are_small_and_complete():
    root = default_weights_dir()
    total = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert total < 10 * 2**20, f"the shipped toy weights take {total / 2**20:.1f} MiB"
    for name in SPECS:
        for file in ("config.json", "model.safetensors", "recipe.json", "tokenizer.json"):
            assert (root / name / file).is_file(), f"{name}/{file} is missing"


@pytest.mark.parametrize("name", list(SPECS))
def test_shipped_weights_follow_their_spec(name, models):
    model, tok = models[name]
    spec = SPECS[name]
    recipe = read_recipe(name)
    # The weights were trained with the spec in the code: a changed spec needs retrained weights.
    assert recipe["spec"] == json.loads(json.dumps(spec.to_dict()))
    assert recipe["steps"] == spec.steps
    for key, value in spec.config.items():
        assert getattr(model.config, key) == value
    assert model.config.vocab_size == len(tok)
    assert not model.training and model.dtype == torch.float32
    assert tok.padding_side == "left"
    assert sum(p.numel() for p in model.parameters()) == recipe["parameters"]


def test_the_target_is_bigger_than_the_draft(models):
    sizes = {name: sum(p.numel() for p in model.parameters()) for name, (model, _) in models.items()}
    assert sizes["target"] > 2 * sizes["draft"]


def test_a_weights_folder_loads_with_transformers_alone(models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = default_weights_dir() / "target"
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ours, our_tok = models["target"]
    text = "Q: 12+34-5=?\n\n12+34=46"
    assert tok(text)["input_ids"] == our_tok(text)["input_ids"]
    ids = torch.tensor([our_tok(text)["input_ids"]])
    with torch.inference_mode():
        torch.testing.assert_close(model(ids).logits, ours(ids).logits)


@pytest.mark.parametrize("name", list(SPECS))
def test_shipped_models_beat_their_stated_accuracy(name, accuracy):
    acc = accuracy[name]
    assert acc["n"] == N_TEST and set(acc["by_steps"]) == {1, 2, 3}
    for k, floor in FLOORS[name].items():
        assert acc["by_steps"][k] >= floor, (name, k, acc)


def test_the_target_is_clearly_better_than_the_draft_on_multi_step_problems(accuracy):
    draft, target = _multi_step(accuracy["draft"]), _multi_step(accuracy["target"])
    assert target >= draft + TARGET_MARGIN, (draft, target)


def test_missing_weights_say_how_to_train_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="ponder toy train"):
        load_toy_model("draft", weights_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="'nonesuch'"):
        load_toy_model("nonesuch")


def test_evaluate_accuracy_counts_by_steps_and_validates(models):
    model, tok = models["draft"]
    problems = make_problems(6, seed=5, min_steps=1, max_steps=2)
    acc = evaluate_accuracy(model, tok, problems, batch_size=4, max_new_tokens=1)
    # One new token cannot reach "Answer:": nothing is solved, and every problem is counted.
    assert acc["accuracy"] == 0.0 and acc["n"] == 6
    assert sum(acc["n_by_steps"].values()) == 6 and set(acc["by_steps"]) <= {1, 2}
    with pytest.raises(ValueError, match="empty"):
        evaluate_accuracy(model, tok, [])
    with pytest.raises(TypeError, match="Problem"):
        evaluate_accuracy(model, tok, ["Q: 1+2=?"])


# ---- training --------------------------------------------------------------------------------


def test_a_tiny_training_run_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    pytest.importorskip("accelerate")  # the Trainer's
    from ponder.toy.train import train_toy_model

    spec = replace(
        SPECS["draft"],
        name="tiny",
        config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 2},
        steps=60,
        batch_size=32,
        learning_rate=5e-3,
        data=ArithmeticConfig(n=3000, seed=0, max_steps=2),
        eval_problems=8,
    )
    result = train_toy_model(spec, tmp_path, progress=False)
    losses = [loss for _, loss in result["loss"]]
    assert len(losses) >= 10
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.7 * first, losses
    assert result["test"]["n"] == 8 and result["validation"]["n"] == 8
    recipe = json.loads((tmp_path / "tiny" / "recipe.json").read_text())
    assert recipe["steps"] == 60 and recipe["spec"]["config"]["hidden_size"] == 32
    model, _ = load_toy_model("tiny", weights_dir=tmp_path)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert (tmp_path / "tiny" / "model.safetensors").stat().st_size < 100_000  # fp16


def test_train_toy_model_validates(tmp_path):
    from ponder.toy.train import train_toy_model

    with pytest.raises(ValueError, match="unknown toy model"):
        train_toy_model("nonesuch", tmp_path)
    with pytest.raises(ValueError, match="steps"):
        train_toy_model("draft", tmp_path, steps=0)
