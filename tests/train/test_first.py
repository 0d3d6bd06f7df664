"""ponder.train.first: the teacher pass against the full-logits reference, resuming, vocabulary
checks, the losses' values, and the loss scaling under gradient accumulation and two-process DDP.
Tiny Llamas built from configs over the toy tokenizer (31 tokens)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from ponder.ops.lm_head import topk_logprobs_reference  # noqa: E402
from ponder.toy import make_tokenizer  # noqa: E402
from ponder.train.first import (  # noqa: E402
    FIRSTTrainer,
    TopKStore,
    calibrate_store,
    extract_topk,
)

from tests.train.first_tiny import examples, records, tiny_model  # noqa: E402

HERE = Path(__file__).resolve().parent


def _store(tmp_path: Path, n: int = 8, **kwargs) -> Path:
    folder = tmp_path / "store"
    extract_topk(tiny_model(seed=1), records(n), 5, out_dir=folder, tokenizer=make_tokenizer(),
                 **kwargs)
    return folder


def _args(tmp_path: Path, batch: int, accumulation: int = 1, steps: int = 1):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation, learning_rate=0.5, optim="sgd",
        max_grad_norm=0.0, lr_scheduler_type="constant", report_to="none", use_cpu=True,
        remove_unused_columns=False, save_strategy="no", disable_tqdm=True, logging_steps=1,
        seed=0, data_seed=0)


def test_extract_matches_the_full_logits_reference(tmp_path):
    teacher = tiny_model(seed=1)
    tok = make_tokenizer()
    meta = extract_topk(teacher, records(7), 5, out_dir=tmp_path / "s", tokenizer=tok,
                        dtype=torch.float32, shard_size=3, batch_size=2)
    store = TopKStore(tmp_path / "s")
    assert len(store) == 7 and meta["shards"] == 3 and meta["complete"]
    total = 0
    for i, ex in enumerate(examples(7)):
        ids = torch.tensor([ex["input_ids"]])
        with torch.no_grad():
            logits = teacher(input_ids=ids).logits[0, :-1]
        labels = torch.tensor(ex["labels"][1:])
        resp = labels != -100
        ref = topk_logprobs_reference(logits[resp], torch.eye(31), 5)
        got_ids, got_lp, got_tgt = store[i]
        assert torch.equal(got_ids, ref.ids)
        torch.testing.assert_close(got_lp, ref.logprobs, rtol=1e-5, atol=1e-5)
        assert torch.equal(got_tgt, labels[resp])
        total += int(resp.sum())
    assert meta["tokens"] == total
    t = store.all()
    torch.testing.assert_close(t["mass"], t["logprobs"].exp().sum(-1), rtol=1e-5, atol=1e-5)
    assert meta["mass"]["mean"] == pytest.approx(float(t["mass"].double().mean()), rel=1e-6)
    assert sum(meta["mass_histogram"]) == total
    # 5 int32 ids + 5 float32 log-probs + target + mass per token, against 31 logits
    assert meta["full_logits_bytes"]["float32"] == total * 31 * 4
    assert store.nbytes() == meta["bytes"]


def test_extract_resumes_and_refuses_other_data(tmp_path):
    folder = _store(tmp_path, n=7, shard_size=3)
    before = [TopKStore(folder)[i] for i in range(7)]
    (folder / "topk-00001.safetensors").unlink()
    teacher = tiny_model(seed=1)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    meta = extract_topk(teacher, records(7), 5, out_dir=folder, tokenizer=make_tokenizer(),
                        shard_size=3, batch_size=16)
    assert meta["shards_computed"] == 1 and len(calls) == 1
    after = TopKStore(folder)
    for i in range(7):
        for a, b in zip(before[i], after[i]):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="other data or settings"):
        extract_topk(teacher, records(6), 5, out_dir=folder, tokenizer=make_tokenizer(),
                     shard_size=3)
    meta = extract_topk(teacher, records(6), 5, out_dir=folder, tokenizer=make_tokenizer(),
                        shard_size=3, overwrite=True)
    assert meta["examples"] == 6 and meta["shards_computed"] == 2


def test_vocabulary_mismatch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        extract_topk(tiny_model(seed=1, vocab=20), records(2), 5, out_dir=tmp_path / "a",
                     tokenizer=make_tokenizer())
    folder = _store(tmp_path, n=4)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        FIRSTTrainer(tiny_model(seed=0, vocab=40), _args(tmp_path, 2), examples(4),
                     store=folder)
    with pytest.raises(ValueError, match="needs the teacher's top-k store"):
        FIRSTTrainer(tiny_model(seed=0), _args(tmp_path, 2), examples(4), mode="topk")


def _first_loss(trainer, batch) -> float:
    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def test_losses_at_known_points(tmp_path):
    tok = make_tokenizer()
    student = tiny_model(seed=0)
    ex = examples(4)
    # the student's own full top-k (k = V) as the teacher: the top-k KL is zero
    folder = tmp_path / "self"
    extract_topk(student, records(4), 31, out_dir=folder, tokenizer=tok, dtype=torch.float32)
    trainer = FIRSTTrainer(student, _args(tmp_path, 4), ex, mode="topk", store=folder)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert abs(_first_loss(trainer, batch)) < 1e-5
    # a copy of the student as the on-the-fly teacher: the full-vocabulary KL is zero
    kd = FIRSTTrainer(student, _args(tmp_path, 4), ex, mode="kd", teacher=tiny_model(seed=0))
    assert abs(_first_loss(kd, batch)) < 1e-5
    # sft is the per-token mean cross-entropy, transformers' own causal-LM loss
    sft = FIRSTTrainer(student, _args(tmp_path, 4), ex, mode="sft")
    with torch.no_grad():
        hf = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
    assert _first_loss(sft, batch) == pytest.approx(float(hf), rel=1e-5)


@pytest.mark.parametrize("mode", ["first", "kd"])
def test_gradient_accumulation_equals_one_big_batch(tmp_path, mode):
    folder = _store(tmp_path, n=8)
    runs = {}
    for batch, accumulation in ((8, 1), (2, 4)):
        model = tiny_model(seed=0)
        trainer = FIRSTTrainer(model, _args(tmp_path, batch, accumulation), examples(8),
                               mode=mode, store=folder if mode == "first" else None,
                               temperature_c=0.7 if mode == "first" else None,
                               other_bucket=mode == "first",
                               teacher=tiny_model(seed=1) if mode == "kd" else None)
        trainer.train()
        loss = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        runs[(batch, accumulation)] = (loss, [p.detach().clone() for p in model.parameters()])
    (loss_a, params_a), (loss_b, params_b) = runs[(8, 1)], runs[(2, 4)]
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    moved = max((p - q).abs().max().item()
                for p, q in zip(params_a, tiny_model(seed=0).parameters()))
    assert moved > 1e-3  # the step did something
    for p, q in zip(params_a, params_b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_calibrate_store_and_first_reads_its_c(tmp_path):
    folder = _store(tmp_path, n=8)
    found = calibrate_store(folder, coarse=[0.5, 1.0, 2.0])
    assert found["tokens"] == TopKStore(folder).meta["tokens"]
    assert found["ece"] <= found["ece_at_1"] + 1e-12
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "temperature_c": 0.42}))
    trainer = FIRSTTrainer(tiny_model(seed=0), _args(tmp_path, 2), examples(8), store=folder)
    assert trainer.temperature_c == 0.42


def test_two_process_ddp_matches_one_process(tmp_path):
    from tests.train.ddp import launch
    from tests.train.first_ddp_script import train_and_digest

    folder = _store(tmp_path, n=8)
    one = train_and_digest(str(folder))  # in this process: one launch less
    two = launch(HERE / "first_ddp_script.py", 2, tmp_path / "two.json", "--store", str(folder))
    assert len(one["losses"]) == 2
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-5)
    assert one["params"] == pytest.approx(two["params"], rel=1e-4, abs=1e-6)
    assert one["param_sum"] == pytest.approx(two["param_sum"], rel=1e-6)


def test_command_line_on_jsonl(tmp_path, capsys):
    from ponder.cli import main

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records(8)))
    store, val = tmp_path / "store", tmp_path / "val"
    assert main(["first", "extract", "--data", str(data), "--out", str(store), "--quiet"]) == 0
    assert main(["first", "extract", "--data", str(data), "--out", str(val), "--quiet"]) == 0
    assert main(["first", "calibrate", "--store", str(val), "--apply-to", str(store),
                 "--grid", "0.5", "1", "2"]) == 0
    assert "temperature_c" in json.loads((store / "meta.json").read_text())
    student = tmp_path / "student"
    assert main(["first", "train", "--data", str(data), "--store", str(store), "--out",
                 str(student), "--steps", "2", "--batch-size", "4", "--quiet"]) == 0
    diagram = tmp_path / "r.png"
    capsys.readouterr()
    assert main(["first", "eval", "--model", str(student), "--data", str(data), "--diagram",
                 str(diagram)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["token"]["ece"] <= 1 and diagram.is_file()
    # a folder that is not a store: one line naming the flag, exit status 2
    assert main(["first", "train", "--data", str(data), "--store", str(tmp_path), "--out",
                 str(student), "--mode", "topk", "--steps", "1", "--quiet"]) == 2
    assert "--store" in capsys.readouterr().err


def test_first_loss_is_the_per_token_mean_of_the_topk_kl(tmp_path):
    folder = _store(tmp_path, n=4)
    student = tiny_model(seed=0)
    trainer = FIRSTTrainer(student, _args(tmp_path, 4), examples(4), store=folder,
                           temperature_c=0.6)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        logits = student(input_ids=batch["input_ids"],
                         attention_mask=batch["attention_mask"]).logits[:, :-1]
    rows = logits[batch["labels"][:, 1:] != -100]  # [T, V], the same order as the store
    p = torch.softmax(batch["teacher_logprobs"] / 0.6, -1)
    log_q = torch.log_softmax(rows.gather(1, batch["teacher_ids"]), -1)
    expected = (p * (p.log() - log_q)).sum(-1).mean()
    assert _first_loss(trainer, batch) == pytest.approx(float(expected), rel=1e-4)


def test_a_model_with_scaled_logits_is_refused(tmp_path):
    teacher = tiny_model(seed=1)
    # logits that are not lm_head(hidden) (as with soft-capping): the fused ops would be wrong
    teacher.lm_head.register_forward_hook(lambda module, args, out: 30 * torch.tanh(out / 3))
    with pytest.raises(ValueError, match="not lm_head"):
        extract_topk(teacher, records(2), 5, out_dir=tmp_path / "s", tokenizer=make_tokenizer())


def test_wilson_interval_covers_the_proportion_and_narrows_with_n():
    from ponder.toy.first_world import wilson_interval

    lo, hi = wilson_interval(0, 300)
    assert lo == pytest.approx(0.0, abs=1e-12) and 0.005 < hi < 0.02  # an empty count still gets a width (not [0, 0])
    small, large = wilson_interval(15, 30), wilson_interval(150, 300)
    assert small[0] < 0.5 < small[1] and large[0] < 0.5 < large[1]
    assert large[1] - large[0] < small[1] - small[0]
    # the textbook value for 50 / 100: [0.4038, 0.5962]
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 4)


def test_the_toy_comparison_refuses_an_unknown_init(tmp_path):
    from ponder.toy.first_world import run_first_effect

    with pytest.raises(ValueError, match="init must be one of"):
        run_first_effect(tmp_path, steps=1, init="teacher")
