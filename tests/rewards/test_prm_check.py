"""The step-checking toy PRM (ponder.toy.prm_check): its features are the frozen LM's own token
log-probs on the untagged text, PRMTrainer trains only its head, it round-trips through its
folder, and the shipped one checks the arithmetic within a problem."""

import math
import random

import pytest
import torch
from ponder.toy import SPECS, corrupt
from ponder.toy.prm import label_solution

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def fresh():
    from ponder.toy.prm_check import build_check_prm

    return build_check_prm(("target",), seed=0)


def test_features_are_the_lm_log_probs_of_the_untagged_text(fresh):
    from ponder.toy import load_toy_model
    from ponder.toy.prm_check import FEATURES, as_prm

    model, tok = fresh
    prm = as_prm(model, tok)
    target, _ = load_toy_model("target")
    p = SPECS["target"].splits().test[1]  # three operations
    steps = label_solution(p, corrupt(p, random.Random(0), kind="result"))[0]
    ids, pos = prm.encode(p.question, steps)
    f = model.features.step_features(torch.tensor([ids]))[0]
    # the same text without tags, as the LM was trained on it
    text = p.prompt + "\n\n".join(steps)
    plain = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = target(input_ids=plain).logits.log_softmax(-1)[0]
    tok_lp = logp[:-1].gather(-1, plain[0, 1:, None])[:, 0]
    # token j of the plain text is predicted at j - 1; split by lines, skip the question line
    chars = list(text)
    lines, cur = [], []
    for j, ch in enumerate(chars):
        if ch == "\n":
            if cur:
                lines.append(cur)
            cur = []
        else:
            cur.append(float(tok_lp[j]))  # chars[j] is token j + 1 (after <bos>)
    lines.append(cur)
    step_lines = lines[1:]
    assert len(step_lines) == len(steps) == len(pos)
    i_min, i_sum, i_prefix = FEATURES.index("min"), FEATURES.index("sum"), \
        FEATURES.index("prefix_min")
    prefix = 0.0
    for row, lp in zip(f[pos], step_lines):
        prefix = min(prefix, min(lp))
        assert row[i_min].item() * 5 == pytest.approx(max(min(lp), -30), abs=1e-3)
        assert row[i_sum].item() * 20 == pytest.approx(sum(max(x, -30) for x in lp), abs=1e-3)
        assert row[i_prefix].item() * 5 == pytest.approx(max(prefix, -30), abs=1e-3)
    # the corrupted step is the one the LM finds unlikely
    assert min(step_lines[0]) < -2 or min(step_lines[1]) < -2 or min(step_lines[2]) < -2
    # features are zero away from the tags
    off = torch.ones(len(ids), dtype=torch.bool)
    off[pos] = False
    assert torch.count_nonzero(f[off]) == 0


def test_cache_gives_the_same_features(fresh):
    model, tok = fresh
    from ponder.toy.prm_check import as_prm

    prm = as_prm(model, tok)
    problems = SPECS["target"].splits().test[:6]
    enc = [prm.encode(p.question, label_solution(p, p.target)[0]) for p in problems]
    width = max(len(e[0]) for e in enc)
    ids = torch.zeros(len(enc), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, (seq, _) in enumerate(enc):
        ids[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
    plain = model.features.step_features(ids, mask)
    model.features.enable_cache()
    try:
        first = model.features.step_features(ids[:3], mask[:3])
        both = model.features.step_features(ids, mask)  # rows 0-2 come from the cache
    finally:
        model.features.enable_cache(False)
    assert torch.allclose(first, plain[:3, :first.shape[1]], atol=1e-6)
    assert torch.allclose(both, plain, atol=1e-6)


def test_trainer_trains_the_head_only_and_round_trips(tmp_path):
    import transformers
    from ponder.rewards.train import PRMDataCollator, PRMDataset, PRMTrainer
    from ponder.toy.prm_check import (
        as_prm,
        build_check_prm,
        check_convention,
        load_check_prm,
        save_check_prm,
    )
    from ponder.toy.train import cpu_training_args

    model, tok = build_check_prm(("draft",), width=4, seed=0)
    lm_before = {k: v.clone() for k, v in model.features.lms.state_dict().items()}
    rng = random.Random(0)
    records = []
    for p in SPECS["target"].splits().train[:24]:
        for text in (p.target, corrupt(p, rng, kind="result")):
            steps, labels = label_solution(p, text, "first_error")
            records.append({"question": p.question, "steps": steps, "value": labels})
    data = PRMDataset(records, tok, check_convention())
    transformers.set_seed(0)
    model.features.enable_cache()
    args = cpu_training_args(str(tmp_path / "scratch"), steps=30, batch_size=16,
                             learning_rate=5e-2, weight_decay=0.0, warmup=0.0, seed=0,
                             progress=False, log_points=30)
    trainer = PRMTrainer(model=model, args=args, train_dataset=data,
                         data_collator=PRMDataCollator(tok.pad_token_id), value_head="head")
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)
    trainer.train()
    model.features.enable_cache(False)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0] < math.log(2) + 1e-3  # a zero head starts at log 2
    for k, v in model.features.lms.state_dict().items():
        assert torch.equal(v, lm_before[k]), k
    assert model.trainable_parameters() == 4 * 7 + 4 + (7 + 4) + 1
    prm = as_prm(model.eval(), tok)
    qs = [r["question"] for r in records[:8]]
    ss = [r["steps"] for r in records[:8]]
    before = prm.score(qs, ss)
    save_check_prm(model, tmp_path / "p", {"note": "test"})
    again = load_check_prm(tmp_path / "p").score(qs, ss)
    for a, b in zip(before, again):
        assert a == pytest.approx(b, abs=5e-3)  # fp16 weights


def test_shipped_prm_checks_the_arithmetic_within_a_problem():
    from ponder.toy import load_toy_prm

    prm = load_toy_prm()
    problems = SPECS["target"].splits().test[:80]
    rng = random.Random(7)
    qs = [p.question for p in problems]
    good = [label_solution(p, p.target)[0] for p in problems]
    # near misses: one result off (carried forward), the draft's typical slip
    bad = [label_solution(p, corrupt(p, rng, kind="result"))[0] for p in problems]
    g = prm.score_aggregate(qs, good, "min")
    b = prm.score_aggregate(qs, bad, "min")
    wins = sum(x > y for x, y in zip(g, b)) / len(problems)
    assert wins >= 0.9, wins  # chance 0.5; the first toy PRM: 0.76 on mixed corruptions
    # the first wrong step itself scores below the right step at the same place
    first_bad = []
    for p, gs, bs in zip(problems, good, bad):
        j = next(i for i, (x, y) in enumerate(zip(gs, bs)) if x != y)
        first_bad.append((p.question, gs[:j + 1], bs[:j + 1]))
    sg = prm.score([q for q, _, _ in first_bad], [x for _, x, _ in first_bad])
    sb = prm.score([q for q, _, _ in first_bad], [y for _, _, y in first_bad])
    step_wins = sum(x[-1] > y[-1] for x, y in zip(sg, sb)) / len(first_bad)
    assert step_wins >= 0.9, step_wins
