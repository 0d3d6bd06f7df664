"""The shipped toy PRM: loads offline, judges held-out steps far better than chance, and picks
right solutions over wrong ones."""

import json
import random

import pytest
from ponder.toy import SPECS, corrupt, load_toy_prm
from ponder.toy.models import default_weights_dir
from ponder.toy.prm import PRM_SPEC, label_solution

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def prm():
    return load_toy_prm(kind="lm")  # the first toy PRM (the step-check one: test_prm_check.py)


@pytest.fixture(scope="module")
def held_out():
    """Test-split problems (never trained on), each with its reference solution and a corrupted
    one (a wrong result or operand in one step, carried forward)."""
    problems = SPECS[PRM_SPEC.init].splits().test[:80]
    rng = random.Random(123)
    return [(p, p.target, corrupt(p, rng)) for p in problems]


def test_shipped_files():
    folder = default_weights_dir() / "prm"
    assert (folder / "model.safetensors").stat().st_size <= 3.3 * 2**20
    recipe = json.loads((folder / "recipe.json").read_text())
    assert recipe["spec"]["name"] == "prm" and recipe["spec"] == PRM_SPEC.to_dict() | {
        "corruptions": list(PRM_SPEC.corruptions)}
    assert recipe["test"]["steps"]["auc"] > 0.75  # measured on 300 held-out problems


def test_separates_correct_from_incorrect_steps(prm, held_out):
    from ponder.rewards.train import step_metrics

    scores, labels, is_answer = [], [], []
    questions, steps = [], []
    for p, good, bad in held_out:
        for text in (good, bad):
            s, lab = label_solution(p, text, "local")
            questions.append(p.question)
            steps.append(s)
            labels += lab
            is_answer += ["Answer" in x for x in s]
    scores = [x for s in prm.score(questions, steps) for x in s]
    m = step_metrics(scores, labels)
    # Chance is AUC 0.5. Measured when shipped: AUC 0.91, accuracy 0.89 (382 good / 80 bad).
    assert m["n_bad"] == 80 and m["n_good"] >= 300
    assert m["auc"] >= 0.8, m
    assert m["accuracy"] >= 0.8, m
    # Without the answer lines (which the PRM finds easy): measured AUC 0.84.
    inner = step_metrics([x for x, a in zip(scores, is_answer) if not a],
                         [x for x, a in zip(labels, is_answer) if not a])
    assert inner["auc"] >= 0.7, inner


def test_prefers_right_solutions(prm, held_out):
    # Min-aggregated score: the reference strictly beats its corruption on at least 65% of the
    # problems (measured 76%; chance is below 50%, since ties count as losses).
    qs = [p.question for p, _, _ in held_out]
    good = prm.score_aggregate(qs, [label_solution(p, g)[0] for p, g, _ in held_out], "min")
    bad = prm.score_aggregate(qs, [label_solution(p, b)[0] for p, _, b in held_out], "min")
    wins = sum(g > b for g, b in zip(good, bad)) / len(held_out)
    assert wins >= 0.65, wins
