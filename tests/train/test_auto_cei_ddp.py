"""Auto-CEI's SFT under two CPU processes (gloo) matches one process on the same global batch."""

from pathlib import Path

import pytest
from tests.train.ddp import launch

SCRIPT = Path(__file__).with_name("auto_cei_ddp_script.py")


def test_auto_cei_sft_two_processes_match_one(tmp_path):
    one = launch(SCRIPT, 1, tmp_path / "one.json")
    two = launch(SCRIPT, 2, tmp_path / "two.json")
    assert one["world"] == 1 and two["world"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 3
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-4)
    assert one["losses"][-1] < one["losses"][0]  # it trained
    assert two["norm"] == pytest.approx(one["norm"], rel=1e-5)
    # The weights moved the same way: the two runs differ by under 1% of how far training moved
    # them (a gradient scaled wrongly across processes would differ by tens of percent; float
    # sums in another order stay far below).
    moved = max(abs(a - b) for a, b in zip(one["digest"], one["init"]))
    apart = max(abs(a - b) for a, b in zip(one["digest"], two["digest"]))
    assert moved > 1e-3 and apart < 0.01 * moved, (apart, moved)
