"""The trainers' fused scalar losses (gradient computed in the forward) against the per-token
path: OREO's exact-KL term (``kl_to_reference_sum``) and FIRST's SFT baseline
(``token_logprobs_sum``) give the same losses and the same gradients."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from ponder.ops.lm_head import kl_to_reference, token_logprobs
from ponder.train.oreo import (
    OREOCollator,
    OREOConfig,
    OREOModels,
    ValueModel,
    _batch_terms,
    _oreo_forward,
    kl_token_weights,
    loss_counts,
    oreo_losses,
    rows_to_dataset,
)

from tests.train.oreo_common import tiny_policy, tiny_rows, tokenizer

NL = 4  # the toy tokenizer's "\n"


def _oreo_setup():
    tok = tokenizer()
    batch = OREOCollator(0)(rows_to_dataset(tok, tiny_rows(6)))
    policy = tiny_policy(0)
    value = ValueModel.from_policy(policy)
    with torch.no_grad():
        value.head.weight.normal_(generator=torch.Generator().manual_seed(1))
    ref = tiny_policy(1).eval().requires_grad_(False)  # another model: the KL is not ~0
    return batch, OREOModels(policy, value), ref


@pytest.mark.parametrize("averaging", ["token", "sequence"])
def test_oreo_fused_kl_matches_the_per_token_path(averaging, monkeypatch):
    from ponder.train import oreo

    calls = []
    for name in ("kl_to_reference", "kl_to_reference_sum"):
        op = getattr(oreo, name)
        monkeypatch.setattr(oreo, name, lambda *a, _op=op, _n=name, **k: (calls.append(_n),
                                                                          _op(*a, **k))[1])
    batch, models, ref = _oreo_setup()
    _, mask, starts = _batch_terms(batch, OREOConfig(level="step", step_delimiter=(NL, NL)))
    assert not mask.all()  # padding and prompts: masked tokens are present
    # a global normalizer larger than this batch's, as under gradient accumulation
    norm = loss_counts(mask, starts, OREOConfig(level="step", step_delimiter=(NL, NL))) * 3
    out, grads = {}, {}
    for fused in (False, True):
        cfg = OREOConfig(level="step", step_delimiter=(NL, NL), kl="exact", alpha=0.7,
                         averaging=averaging, fused=fused)
        m = copy.deepcopy(models)
        calls.clear()
        res = _oreo_forward(m, ref, batch, cfg, normalizer=norm)
        assert calls == ["kl_to_reference_sum" if fused else "kl_to_reference"]
        (res.value + res.policy).backward()
        out[fused] = res
        grads[fused] = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    a, b = out[False], out[True]
    assert float(a.kl) > 1e-3  # a real KL term
    torch.testing.assert_close(b.kl, a.kl, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(b.policy, a.policy, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(b.value, a.value, rtol=1e-6, atol=0)
    assert grads[True].keys() == grads[False].keys()
    assert "policy.lm_head.weight" in grads[True]
    for k in grads[False]:
        torch.testing.assert_close(grads[True][k], grads[False][k], rtol=1e-4, atol=1e-7, msg=k)


@pytest.mark.parametrize("averaging", ["token", "sequence"])
def test_kl_token_weights_reproduce_the_reduction(averaging):
    gen = torch.Generator().manual_seed(0)
    kl = torch.rand(4, 7, generator=gen, dtype=torch.float64)
    mask = torch.rand(4, 7, generator=gen) > 0.4
    mask[3] = False  # a row without response tokens
    cfg = OREOConfig(kl="exact", averaging=averaging)
    z = torch.zeros(4, 7, dtype=torch.float64)
    norm = loss_counts(mask, mask, cfg) + torch.tensor([0.0, 0.0, 5.0, 2.0], dtype=torch.float64)
    want = oreo_losses(z, z, z, torch.zeros(4), mask, mask, cfg, kl=kl, normalizer=norm).kl
    got = (kl_token_weights(mask, cfg, norm).double() * kl).sum()
    torch.testing.assert_close(got, want.double(), rtol=1e-6, atol=0)


def test_oreo_losses_kl_arguments_are_checked():
    z = torch.zeros(2, 3)
    m = torch.ones(2, 3, dtype=torch.bool)
    exact = OREOConfig(kl="exact")
    with pytest.raises(ValueError, match="needs kl .* exactly one"):
        oreo_losses(z, z, z, torch.zeros(2), m, m, exact)
    with pytest.raises(ValueError, match="needs kl .* exactly one"):
        oreo_losses(z, z, z, torch.zeros(2), m, m, exact, kl=z, kl_loss=z.sum())
    with pytest.raises(ValueError, match="kl_loss must be a scalar"):
        oreo_losses(z, z, z, torch.zeros(2), m, m, exact, kl_loss=z)
    with pytest.raises(ValueError, match="kl_loss is for"):
        oreo_losses(z, z, z, torch.zeros(2), m, m, OREOConfig(kl="k3"), kl_loss=z.sum())
    with pytest.raises(TypeError, match="fused must be a bool"):
        OREOConfig(fused=1)


def test_oreo_per_token_kl_of_the_models_is_the_op():
    # the per-token path still returns the op's per-token KL (the fused one sums it)
    batch, models, ref = _oreo_setup()
    targets, mask, _ = _batch_terms(batch, OREOConfig())
    ids, att = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        rh = ref.get_decoder()(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1]
        rw = ref.lm_head.weight
        _, kl, _ = models(ids, att, targets=targets, mask=mask, ref_hidden=rh, ref_head=(rw, None))
        w = kl_token_weights(mask, OREOConfig())
        _, kl_sum, _ = models(ids, att, targets=targets, mask=mask, ref_hidden=rh,
                              ref_head=(rw, None), kl_weights=w)
        h = models.policy.get_decoder()(input_ids=ids, attention_mask=att).last_hidden_state
        H = h.shape[-1]
        direct = kl_to_reference(h[:, :-1].reshape(-1, H), models.policy.lm_head.weight,
                                 rh.reshape(-1, H), rw, mask=mask.reshape(-1))
    torch.testing.assert_close(kl.reshape(-1), direct)
    assert kl_sum.dim() == 0
    torch.testing.assert_close(kl_sum, (w * kl).sum(), rtol=1e-5, atol=1e-8)


def test_first_sft_fused_matches_the_per_token_sum(tmp_path, monkeypatch):
    from ponder.train import first
    from ponder.train.first import FIRSTTrainer, hidden_states_and_head
    from transformers import TrainingArguments

    calls = []
    op = first.token_logprobs_sum
    monkeypatch.setattr(first, "token_logprobs_sum",
                        lambda *a, **k: (calls.append(1), op(*a, **k))[1])
    from tests.train.first_tiny import examples, tiny_model

    args = TrainingArguments(output_dir=str(tmp_path / "o"), max_steps=1, report_to="none",
                             use_cpu=True, per_device_train_batch_size=4, disable_tqdm=True)
    model = tiny_model(seed=0)
    trainer = FIRSTTrainer(model, args, examples(4), mode="sft")
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    fused = trainer._token_loss_sum(model, batch)
    assert calls == [1]  # the fused scalar loss ran
    fused.backward()
    g_fused = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    hidden, weight, bias = hidden_states_and_head("t", model, batch["input_ids"],
                                                  batch["attention_mask"])
    resp = batch["labels"][:, 1:] != -100
    per_token = -token_logprobs(hidden[:, :-1][resp], weight, batch["labels"][:, 1:][resp],
                                bias).sum()
    per_token.backward()
    torch.testing.assert_close(fused, per_token, rtol=1e-6, atol=1e-6)
    assert float(per_token.detach()) > 1.0
    for k, p in model.named_parameters():
        torch.testing.assert_close(g_fused[k], p.grad, rtol=1e-4, atol=1e-7, msg=k)


@pytest.mark.parametrize("mode", ["sft", "first"])
def test_first_chunk_tokens_changes_the_blocks_not_the_loss(tmp_path, mode):
    from ponder.toy import make_tokenizer
    from ponder.train.first import FIRSTTrainer, extract_topk
    from transformers import TrainingArguments

    from tests.train.first_tiny import examples, records, tiny_model

    store = tmp_path / "store"
    if mode == "first":
        extract_topk(tiny_model(seed=1), records(4), 5, out_dir=store, tokenizer=make_tokenizer())
    args = TrainingArguments(output_dir=str(tmp_path / "o"), max_steps=1, report_to="none",
                             use_cpu=True, per_device_train_batch_size=4, disable_tqdm=True,
                             remove_unused_columns=False)
    out = {}
    for chunk in (None, 3):
        model = tiny_model(seed=0)
        kw = {"store": store, "temperature_c": 0.7, "other_bucket": True} if mode == "first" \
            else {}
        trainer = FIRSTTrainer(model, args, examples(4), mode=mode, chunk_tokens=chunk, **kw)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        loss = trainer._token_loss_sum(model, batch)
        loss.backward()
        out[chunk] = (loss.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(out[3][0], out[None][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(out[3][1], out[None][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # summation order
    with pytest.raises(ValueError, match="chunk_tokens"):
        FIRSTTrainer(tiny_model(seed=0), args, examples(4), mode="sft", chunk_tokens=0)
