"""Verifiers and step splitting."""

import pytest
from ponder.rewards import Verifier, get_verifier, split_steps
from ponder.toy import ToyVerifier


def test_split_steps():
    assert split_steps("12+34=46\n\n46-5=41\n\nAnswer: 41") == ["12+34=46", "46-5=41",
                                                                 "Answer: 41"]
    assert split_steps(" a \n\n\n\n b\n", "\n\n") == ["a", "b"]
    assert split_steps("Step 1: x\nStep 2: y", "\n") == ["Step 1: x", "Step 2: y"]
    assert split_steps("") == []
    with pytest.raises(ValueError, match="separator"):
        split_steps("a", "")
    with pytest.raises(TypeError):
        split_steps(["a"])


def test_toy_verifier():
    v = get_verifier("toy")
    assert isinstance(v, ToyVerifier) and isinstance(v, Verifier)
    assert v("Q: 12+34-5=?", "12+34=46\n\n46-5=41\n\nAnswer: 41")
    assert not v("Q: 12+34-5=?", "Answer: 40")
    assert v(41, "Answer: 41")
    custom = lambda ref, text: text.endswith(str(ref))
    assert get_verifier(custom) is custom
    with pytest.raises(ValueError, match="unknown verifier"):
        get_verifier("llm-judge")


def test_math_verifier():
    pytest.importorskip("math_verify")
    v = get_verifier("math")
    assert v("\\frac{1}{2}", "so the answer is $\\boxed{0.5}$")
    assert v("41", "The answer is \\boxed{41}.")
    assert not v("41", "The answer is \\boxed{42}.")
    assert not v("41", "no answer here")
    with pytest.raises(TypeError):
        v("41", None)
