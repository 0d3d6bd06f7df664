"""Best-of-N bookkeeping: selection rules, tie breaking, accuracy, errors."""

import math

import pytest
from ponder.rewards import aggregate, best_of_n, majority_vote
from ponder.rewards.best_of_n import select_best


def test_aggregates():
    s = [0.9, 0.5, 0.8]
    assert aggregate(s, "min") == 0.5
    assert aggregate(s, "last") == 0.8
    assert aggregate(s, "product") == pytest.approx(0.36)
    assert aggregate(s, "mean") == pytest.approx(2.2 / 3)
    assert math.isnan(aggregate([], "min"))
    with pytest.raises(ValueError, match="how must be one of"):
        aggregate(s, "max")


def test_select_and_vote_tie_breaking():
    assert select_best([0.1, 0.7, 0.7, 0.2]) == 1
    assert select_best([math.nan, 0.0]) == 1
    assert select_best([math.nan, math.nan]) == 0
    assert majority_vote([3, 5, 5, 3, None, None, None]) == 0  # tie: the answer seen first
    assert majority_vote([None, 2, 7, 7]) == 2
    assert majority_vote([None, None]) == 0
    with pytest.raises(ValueError):
        select_best([])


def test_best_of_n_accuracy():
    # Problem 0: the PRM (min) picks candidate 1 (right); majority picks 0 (wrong); first wrong.
    # Problem 1: everything picks candidate 0 (right).
    # Problem 2: no candidate is right (oracle fails too); one candidate has no steps.
    scores = [
        [[0.9, 0.2], [0.8, 0.7], [0.95, 0.1]],
        [[0.9], [0.3]],
        [[0.5], []],
    ]
    correct = [[False, True, False], [True, False], [False, False]]
    answers = [[4, 5, 4], [1, 2], [None, 3]]
    r = best_of_n(scores, correct, answers)
    assert r.picks["prm-min"] == [1, 0, 0]
    assert r.picks["prm-last"] == [1, 0, 0]
    assert r.picks["prm-mean"] == [1, 0, 0]  # means 0.55, 0.75, 0.525
    assert r.picks["majority"] == [0, 0, 1]
    assert r.accuracy == {"prm-min": 2 / 3, "prm-last": 2 / 3, "prm-product": 2 / 3,
                          "prm-mean": 2 / 3, "majority": 1 / 3, "first": 1 / 3,
                          "oracle": 2 / 3}
    assert r.n_candidates == [3, 2, 2]
    assert "oracle" in r.table()
    r2 = best_of_n(scores, correct, aggregates=("last",))
    assert set(r2.accuracy) == {"prm-last", "first", "oracle"}


def test_best_of_n_errors():
    with pytest.raises(ValueError, match="one entry per problem"):
        best_of_n([[[0.5]]], [[True], [False]])
    with pytest.raises(ValueError, match="problem 0 has 2 scored candidates"):
        best_of_n([[[0.5], [0.1]]], [[True]])
    with pytest.raises(ValueError, match="no candidates"):
        best_of_n([[]], [[]])
    with pytest.raises(ValueError, match="unknown aggregate"):
        best_of_n([[[0.5]]], [[True]], aggregates=("max",))
    with pytest.raises(ValueError, match="no problems"):
        best_of_n([], [])
