"""BOLT's SFT and DPO under two CPU processes (gloo) match one process on the same global batch."""

from pathlib import Path

import pytest
from tests.train.ddp import launch

SCRIPT = Path(__file__).with_name("bolt_ddp_script.py")


def test_bolt_sft_and_dpo_two_processes_match_one(tmp_path):
    one = launch(SCRIPT, 1, tmp_path / "one.json")
    two = launch(SCRIPT, 2, tmp_path / "two.json")
    assert one["world"] == 1 and two["world"] == 2
    assert len(one["sft"]) == len(two["sft"]) == 3 and len(two["dpo"]) == 3
    assert two["sft"] == pytest.approx(one["sft"], rel=1e-4)
    assert two["dpo"] == pytest.approx(one["dpo"], rel=1e-4, abs=1e-5)
    assert one["sft"][-1] < one["sft"][0]  # it trained
    assert two["norm"] == pytest.approx(one["norm"], rel=1e-5)
    assert two["digest"] == pytest.approx(one["digest"], rel=1e-3, abs=1e-5)
