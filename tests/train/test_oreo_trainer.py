"""OREOTrainer: the value model, gradient accumulation, checkpoints with both optimizers, DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from ponder.train.oreo import (OREOConfig, OREOTrainer, ValueModel, load_value_model,  # noqa: E402
                               rows_to_dataset, save_value_model)
from tests.train.ddp import launch  # noqa: E402
from tests.train.oreo_common import tiny_policy, tiny_rows, tokenizer, train_args  # noqa: E402

NL = 4  # the toy tokenizer's "\n"


def _train(tmp_path, name, cfg=None, resume=None, **kw):
    tok = tokenizer()
    policy = tiny_policy(0)
    data = rows_to_dataset(tok, tiny_rows(16))
    trainer = OREOTrainer(policy, oreo=cfg or OREOConfig(), critic_learning_rate=5e-2,
                          args=train_args(tmp_path / name, **kw), train_dataset=data,
                          processing_class=tok)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_value_model_zero_head_and_save_load(tmp_path):
    policy = tiny_policy(0)
    vm = ValueModel.from_policy(policy)
    ids = torch.tensor([[1, 5, 6, 7]])
    assert torch.all(vm(ids) == 0)
    assert vm.head.bias is None and tuple(vm.head.weight.shape) == (1, 16)
    with torch.no_grad():
        vm.head.weight.normal_()
    save_value_model(vm, tmp_path / "v")
    back = load_value_model(tmp_path / "v")
    torch.testing.assert_close(back(ids), vm(ids))
    assert (tmp_path / "v" / "value_head.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="value_head"):
        load_value_model(tmp_path)


def test_accumulation_equals_one_big_batch(tmp_path):
    cfg = OREOConfig(level="step", step_delimiter=(NL, NL), kl="exact", alpha=0.1)
    big = _train(tmp_path, "big", cfg, per_device_train_batch_size=8,
                 gradient_accumulation_steps=1)
    acc = _train(tmp_path, "acc", cfg, per_device_train_batch_size=2,
                 gradient_accumulation_steps=4)
    pb, pa = _params(big), _params(acc)
    init = tiny_policy(0).state_dict()
    moved = max((pb["policy." + k] - v).abs().max().item() for k, v in init.items())
    assert moved > 1e-3  # the updates are real
    assert pb["value.head.weight"].abs().max() > 1e-3  # the critic moved from its zero head
    # Adam turns an entry whose gradient is ~0 into a +-lr step whatever its rounding, so a few
    # entries may differ by summation order: 2e-4 is 1% of the ~2e-2 the parameters moved
    for k in pb:
        torch.testing.assert_close(pa[k], pb[k], rtol=1e-4, atol=2e-4, msg=k)
    # the losses logged per step agree too
    lb = [h["loss"] for h in big.state.log_history if "loss" in h]
    la = [h["loss"] for h in acc.state.log_history if "loss" in h]
    assert lb == pytest.approx(la, rel=1e-4)


def test_checkpoint_resume_restores_both_optimizers(tmp_path):
    full = _train(tmp_path, "full", max_steps=3)
    _train(tmp_path, "part", max_steps=3, save_strategy="steps", save_steps=1)
    ckpt = tmp_path / "part" / "checkpoint-1"
    for f in ("optimizer.pt", "scheduler.pt", "critic_optimizer.pt", "critic_scheduler.pt",
              "model.safetensors", "value/value_head.safetensors"):
        assert (ckpt / f).is_file(), f
    resumed = _train(tmp_path, "resumed", max_steps=3, resume=str(ckpt))
    pf, pr = _params(full), _params(resumed)
    for k in pf:
        torch.testing.assert_close(pr[k], pf[k], rtol=1e-5, atol=1e-6, msg=k)
    # without the critic's optimizer state the critic would differ: drop it and check it does
    (ckpt / "critic_optimizer.pt").unlink()
    other = _params(_train(tmp_path, "no_critic_state", max_steps=3, resume=str(ckpt)))
    assert not torch.allclose(other["value.head.weight"], pf["value.head.weight"])


DDP_SCRIPT = Path(__file__).with_name("oreo_ddp_script.py")


def test_two_processes_match_one(tmp_path):
    from tests.train.oreo_ddp_script import run

    one = json.loads(json.dumps(run(8)))  # one process, here, on the global batch of 8
    two = launch(DDP_SCRIPT, 2, tmp_path / "two.json", "--batch", "4")
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-4)
    assert len(one["losses"]) == 2
    for k in one["params"]:
        assert one["params"][k] == pytest.approx(two["params"][k], rel=1e-4, abs=1e-6), k


def _lora_trainer(tmp_path, name, resume=None, **kw):
    peft = pytest.importorskip("peft")
    lora = dict(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    tok = tokenizer()
    base = tiny_policy(0)
    value = ValueModel.from_policy(base)
    value.backbone = peft.get_peft_model(value.backbone, peft.LoraConfig(**lora))
    policy = peft.get_peft_model(base, peft.LoraConfig(**lora))
    trainer = OREOTrainer(policy, value, tiny_policy(0), args=train_args(tmp_path / name, **kw),
                          train_dataset=rows_to_dataset(tok, tiny_rows(16)),
                          processing_class=tok)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train(resume_from_checkpoint=resume)
    return trainer, before


# transformers' Trainer reads a deprecated property of the peft-wrapped model
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_lora_on_policy_and_critic_trains_only_the_adapters_and_resumes(tmp_path):
    full, before = _lora_trainer(tmp_path, "full", max_steps=2)
    moved = [k for k, v in full.model.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("policy.") for k in moved)
    assert "value.head.weight" in moved
    assert all("lora_" in k or k == "value.head.weight" for k in moved)
    _lora_trainer(tmp_path, "part", max_steps=2, save_strategy="steps", save_steps=1)
    ckpt = tmp_path / "part" / "checkpoint-1"
    assert (ckpt / "adapter_model.safetensors").is_file()
    resumed, _ = _lora_trainer(tmp_path, "resumed", resume=str(ckpt), max_steps=2)
    pf, pr = _params(full), _params(resumed)
    for k in pf:
        torch.testing.assert_close(pr[k], pf[k], rtol=1e-5, atol=1e-6, msg=k)
