"""PRM training: the soft-label loss, the data set / collator, and a Trainer run whose loss falls
and whose scores reach the soft labels."""

import math
import random

import pytest
import torch
from ponder.rewards import ProcessRewardModel, toy_convention
from ponder.rewards.train import (
    PRMDataCollator,
    PRMDataset,
    prm_loss,
    read_jsonl,
    soft_label_loss,
    step_metrics,
)

transformers = pytest.importorskip("transformers")


def _tiny_model(seed=0):
    from ponder.toy.models import _BASE_CONFIG

    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(**{**_BASE_CONFIG, "hidden_size": 32,
                                      "intermediate_size": 64, "num_hidden_layers": 2,
                                      "num_attention_heads": 4, "num_key_value_heads": 2})
    return transformers.LlamaForCausalLM(cfg)


def test_soft_label_loss_is_two_way_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 2, dtype=torch.float64) * 5
    labels = torch.rand(3, 4, dtype=torch.float64)
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    logq = torch.log_softmax(logits, -1)
    per = -(labels * logq[..., 0] + (1 - labels) * logq[..., 1])
    want = per[valid].mean()
    assert soft_label_loss(logits, labels, valid).item() == pytest.approx(want.item(), rel=1e-12)
    # Hard labels are the eta -> inf case of the same loss; huge logits stay finite.
    big = torch.tensor([[[800.0, -800.0]]], dtype=torch.float64)
    assert soft_label_loss(big, torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool)).item() == 0
    assert soft_label_loss(big, torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool)).item() \
        == pytest.approx(1600.0)
    # A value logit d is the same as the two logits (d, 0).
    d = torch.randn(2, 3, dtype=torch.float64)
    two = torch.stack([d, torch.zeros_like(d)], -1)
    v = torch.ones(2, 3, dtype=torch.bool)
    assert soft_label_loss(d, labels[:2, :3], v).item() == pytest.approx(
        soft_label_loss(two, labels[:2, :3], v).item(), rel=1e-12)


def test_dataset_and_collator(tmp_path):
    from ponder.toy import make_tokenizer

    tok = make_tokenizer()
    conv = toy_convention()
    recs = [{"text": conv.format("Q: 1+2=?", ["1+2=3", "Answer: 3"]), "value": [1, 0.25]},
            {"question": "Q: 4+4=?", "steps": ["4+4=8"], "value": [0.5]}]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(__import__("json").dumps(r) for r in recs) + "\n\n")
    ds = PRMDataset(read_jsonl(path), tok, conv)
    assert len(ds) == 2 and ds.label_ids == (tok.get_vocab()["+"], tok.get_vocab()["-"])
    batch = PRMDataCollator(tok.pad_token_id)([ds[0], ds[1]])
    ids = batch["input_ids"]
    assert batch["step_positions"][1].tolist() == [ds[1]["step_positions"][0], -1]
    assert batch["step_labels"].tolist() == [[1.0, 0.25], [0.5, 0.0]]
    k = tok.get_vocab()["k"]
    for r in range(2):
        pos = batch["step_positions"][r]
        assert (ids[r, pos[pos >= 0]] == k).all()
    assert batch["attention_mask"][1].sum() == len(ds[1]["input_ids"])
    with pytest.raises(ValueError, match=r"2 step tags .* but 1 labels"):
        PRMDataset([{"text": recs[0]["text"], "value": [1]}], tok, conv)
    with pytest.raises(ValueError, match="outside"):
        PRMDataset([{"question": "Q", "steps": ["a"], "value": [1.5]}], tok, conv)
    with pytest.raises(ValueError, match="needs 'text'"):
        PRMDataset([{"value": [1]}], tok, conv)
    with pytest.raises(ValueError, match="max_length"):
        PRMDataset(recs, tok, conv, max_length=5)
    path.write_text("{bad\n")
    with pytest.raises(ValueError, match="d.jsonl:1"):
        read_jsonl(path)


def _digit_records(n, seed):
    """A synthetic PRM task: each step is one digit d, its soft label d / 9."""
    rng = random.Random(seed)
    return [{"question": "Q:", "steps": [str(rng.randrange(10)) for _ in range(rng.randint(1, 4))]}
            for _ in range(n)]


def test_trainer_loss_falls_and_scores_reach_soft_labels(tmp_path):
    from ponder.rewards.train import PRMTrainer
    from ponder.toy import make_tokenizer
    from transformers import TrainingArguments

    tok = make_tokenizer()
    conv = toy_convention()
    recs = [{**r, "value": [int(s) / 9 for s in r["steps"]]} for r in _digit_records(256, 0)]
    data = PRMDataset(recs, tok, conv)
    model = _tiny_model()
    collate = PRMDataCollator(tok.pad_token_id)
    full = collate([data[i] for i in range(len(data))])
    with torch.no_grad():
        before = prm_loss(model, full, label_ids=data.label_ids).item()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=120, per_device_train_batch_size=32,
                             learning_rate=1e-2, lr_scheduler_type="constant", report_to="none",
                             use_cpu=True, save_strategy="no", logging_steps=10, seed=0,
                             disable_tqdm=True)
    trainer = PRMTrainer(model=model, args=args, train_dataset=data, data_collator=collate,
                         label_ids=data.label_ids)
    trainer.train()
    model.eval()
    with torch.no_grad():
        after = prm_loss(model, full, label_ids=data.label_ids).item()
    # The floor is the mean binary entropy of the labels (the loss at perfect soft scores).
    floor = sum(-(lab * math.log(lab) + (1 - lab) * math.log(1 - lab)) if 0 < lab < 1 else 0.0
                for r in recs for lab in r["value"]) / sum(len(r["value"]) for r in recs)
    assert after < before - 0.5 * (before - floor), (before, after, floor)
    # The soft-label optimum is q+ = label: held-out scores track d / 9.
    prm = ProcessRewardModel(model, tok, conv)
    test = _digit_records(40, 1)
    scores = prm.score([r["question"] for r in test], [r["steps"] for r in test])
    err = [abs(s - int(d) / 9) for r, sc in zip(test, scores) for d, s in zip(r["steps"], sc)]
    # The best constant score (the median label) is off by about 0.28 on average.
    digits = [int(d) / 9 for r in test for d in r["steps"]]
    const = sum(abs(x - sorted(digits)[len(digits) // 2]) for x in digits) / len(digits)
    mean_err = sum(err) / len(err)
    assert mean_err < min(0.12, const / 2), (mean_err, const)


def test_trainer_needs_one_head():
    from ponder.rewards.train import PRMTrainer
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir="unused", report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="exactly one"):
        PRMTrainer(model=_tiny_model(), args=args)


def test_value_head_loss_has_gradients():
    from ponder.toy import make_tokenizer

    tok = make_tokenizer()
    model = _tiny_model()
    model.value = torch.nn.Linear(32, 1)
    conv = toy_convention()
    data = PRMDataset([{"question": "Q: 1+1=?", "steps": ["1+1=2"], "value": [1.0]}], tok, conv)
    loss = prm_loss(model, PRMDataCollator()([data[0]]), value_head="value")
    loss.backward()
    assert model.value.weight.grad.abs().sum() > 0
    assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_step_metrics():
    m = step_metrics([0.9, 0.8, 0.3, 0.1, 0.5], [1, 1, 0, 0, 1])
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0 and m["n_good"] == 3
    m = step_metrics([0.5, 0.5, 0.2], [1, 0, 1])  # ties count 1/2: (0.5 + 0) / 2
    assert m["auc"] == pytest.approx(0.25)
    assert math.isnan(step_metrics([0.5], [1])["auc"])
    with pytest.raises(ValueError):
        step_metrics([], [])
