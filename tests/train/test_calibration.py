"""ponder.train.calibration: every metric on inputs small enough to check by hand, and the
temperature search on teachers whose best c is known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from ponder.train.calibration import (
    binary_calibration_metrics,
    calibrate_temperature,
    calibration_metrics,
    expected_calibration_error,
    reliability_bins,
    reliability_diagram,
    topk_confidence,
)


def test_ece_equal_width_by_hand():
    # bin 9: confidence 0.9, accuracy 0.5 (gap 0.4, half the data); bin 6: 0.6 vs 1.0 (gap 0.4)
    conf = [0.9, 0.9, 0.6, 0.6]
    correct = [True, False, True, True]
    assert expected_calibration_error(conf, correct) == pytest.approx(0.4)
    bins = reliability_bins(conf, correct)
    assert bins.count.tolist() == [0, 0, 0, 0, 0, 0, 2, 0, 0, 2]
    assert bins.accuracy[9].item() == pytest.approx(0.5)
    assert math.isnan(bins.accuracy[0].item())


def test_ece_equal_mass_differs_from_equal_width():
    conf = [0.1, 0.2, 0.3, 0.4]
    correct = [0, 0, 1, 1]
    # two equal-width bins: everything in [0, 0.5): mean confidence 0.25 against accuracy 0.5
    assert expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(0.25)
    # two equal-mass bins: {0.1, 0.2} (0.15 vs 0) and {0.3, 0.4} (0.35 vs 1)
    assert expected_calibration_error(conf, correct, n_bins=2, binning="mass") == \
        pytest.approx(0.5 * 0.15 + 0.5 * 0.65)


def test_bin_edges():
    bins = reliability_bins([1.0, 0.1, 0.0999], [1, 1, 1])
    assert bins.count[9] == 1 and bins.count[1] == 1 and bins.count[0] == 1


def test_categorical_metrics_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.6, 0.0]])
    m = calibration_metrics(probs, torch.tensor([0, 0]))
    assert m["n"] == 2 and m["accuracy"] == 0.5
    assert m["confidence"] == pytest.approx(0.65)
    assert m["nll"] == pytest.approx(-(math.log(0.7) + math.log(0.4)) / 2)
    assert m["brier"] == pytest.approx(((0.09 + 0.04 + 0.01) + (0.36 + 0.36)) / 2)
    # bins 7 (0.7 vs 1) and 6 (0.6 vs 0)
    assert m["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.6)


def test_binary_metrics_by_hand():
    m = binary_calibration_metrics([0.8, 0.8, 0.2], [True, False, False])
    assert m["accuracy"] == pytest.approx(1 / 3)
    assert m["brier"] == pytest.approx((0.04 + 0.64 + 0.04) / 3)
    assert m["nll"] == pytest.approx(-(math.log(0.8) + math.log(0.2) + math.log(0.8)) / 3)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="softmax"):
        calibration_metrics(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must be in"):
        calibration_metrics(torch.tensor([[0.5, 0.5]]), torch.tensor([2]))
    with pytest.raises(ValueError, match="same number"):
        expected_calibration_error([0.5, 0.5], [1])
    with pytest.raises(ValueError, match="binning"):
        expected_calibration_error([0.5], [1], binning="quantile")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.5], [1])


def test_reliability_diagram_png(tmp_path):
    pytest.importorskip("matplotlib")
    gen = torch.Generator().manual_seed(0)
    conf = torch.rand(200, generator=gen)
    correct = torch.rand(200, generator=gen) < conf
    path = reliability_diagram(conf, correct, tmp_path / "sub" / "r.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _two_way_teacher(p_top: float, accuracy: float, n: int = 1000):
    """k = 2 teacher that always gives p_top to its first id; the first id is right for a share
    ``accuracy`` of the rows. Its ECE at c is |sigmoid(log(p / (1 - p)) / c) - accuracy|, zero at
    c* = log(p / (1 - p)) / log(a / (1 - a))."""
    lp = torch.log(torch.tensor([p_top, 1 - p_top])).expand(n, 2).clone()
    ids = torch.tensor([3, 7]).expand(n, 2).clone()
    labels = torch.full((n,), 7)
    labels[: round(accuracy * n)] = 3
    best = math.log(p_top / (1 - p_top)) / math.log(accuracy / (1 - accuracy))
    return ids, lp, labels, best


def test_temperature_search_finds_the_known_optimum_below_one():
    ids, lp, labels, best = _two_way_teacher(0.6, 0.9)  # under-confident: c* = 0.1845
    found = calibrate_temperature(ids, lp, labels)
    assert abs(found.temperature_c - best) <= 0.01 + 1e-9
    assert found.ece < 0.01 < found.ece_at_1
    assert found.ece == pytest.approx(
        abs(topk_confidence(lp[:1], found.temperature_c)[0, 0].item() - 0.9))


def test_temperature_search_above_one_needs_the_wider_grid():
    ids, lp, labels, best = _two_way_teacher(0.9, 0.7)  # over-confident: c* = 2.593
    capped = calibrate_temperature(ids, lp, labels)
    # the paper's grid stops at 1; the fine pass around 1.0 reaches 1.1 and no further
    assert capped.temperature_c == pytest.approx(1.1)
    wide = calibrate_temperature(ids, lp, labels, coarse=[0.1 * i for i in range(1, 31)])
    assert abs(wide.temperature_c - best) <= 0.01 + 1e-9
    assert wide.ece < 0.002
    assert all(c > 0 for c, _ in wide.tried)


def test_temperature_search_rejects_probabilities():
    with pytest.raises(ValueError, match="log-probabilities"):
        calibrate_temperature(torch.tensor([[0, 1]]), torch.tensor([[0.7, 0.3]]),
                              torch.tensor([0]))
