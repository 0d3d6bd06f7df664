"""ponder.validation: the argument checks and the one meaning of ``generator=``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ponder import validation as V

CPU = torch.device("cpu")


@pytest.mark.parametrize("value", [3, np.int64(3)])
def test_check_int_accepts_integers(value):
    assert V.check_int("op", "n", value, minimum=1) == 3
    assert type(V.check_int("op", "n", value)) is int


@pytest.mark.parametrize(
    "value, kwargs, error, match",
    [
        (True, {}, TypeError, r"op: n must be an integer >= 0, got bool"),
        (2.0, {}, TypeError, r"op: n must be an integer >= 0, got float"),
        (0, {"minimum": 1}, ValueError, r"op: n must be an integer >= 1, got 0"),
        (9, {"minimum": 1, "maximum": 8}, ValueError, r"n must be an integer in \[1, 8\], got 9"),
        ("1", {"minimum": None}, TypeError, r"n must be an integer, got str"),
    ],
)
def test_check_int_refuses(value, kwargs, error, match):
    with pytest.raises(error, match=match):
        V.check_int("op", "n", value, **kwargs)


def test_check_int_without_bounds_takes_negatives():
    assert V.check_int("op", "seed", -5, minimum=None) == -5


@pytest.mark.parametrize(
    "value, kwargs, ok",
    [(0.0, {}, True), (1.0, {}, True), (0.0, {"zero": False}, False),
     (1.0, {"one": False}, False), (0.5, {"zero": False, "one": False}, True), (1.5, {}, False)],
)
def test_check_probability(value, kwargs, ok):
    if ok:
        assert V.check_probability("op", "p", value, **kwargs) == value
    else:
        with pytest.raises(ValueError, match=r"op: p must be in [\[(]0, 1[\])]"):
            V.check_probability("op", "p", value, **kwargs)


def test_check_probability_wants_a_real_number():
    with pytest.raises(TypeError, match="p must be a real number"):
        V.check_probability("op", "p", torch.tensor(0.5))


def test_as_generator_none_is_torch_default():
    assert V.as_generator("op", None, CPU) is torch.default_generator
    gen = torch.Generator()
    assert V.as_generator("op", gen, CPU) is gen
    a = torch.rand(3, generator=V.as_generator("op", 7, CPU))
    assert torch.equal(a, torch.rand(3, generator=torch.Generator().manual_seed(7)))
    with pytest.raises(TypeError, match="op: generator must be None, an int seed"):
        V.as_generator("op", 1.5, CPU)


def test_resolve_seed_follows_manual_seed():
    torch.manual_seed(3)
    first = V.resolve_seed("op", None)
    torch.manual_seed(3)
    assert V.resolve_seed("op", None) == first
    assert 0 <= first <= V.MAX_SEED
    assert V.resolve_seed("op", 42) == 42
    with pytest.raises(ValueError, match=r"must be in \[0, 2\*\*63\)"):
        V.resolve_seed("op", -1)
