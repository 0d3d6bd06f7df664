"""The ``ponder`` command (ponder.cli)."""

from __future__ import annotations

import re

import pytest
import torch

import ponder
from ponder import cli


def _value(out: str, key: str) -> float:
    match = re.search(rf"^{key}\s+(-?[0-9.]+)", out, flags=re.MULTILINE)
    assert match, f"no {key!r} line in:\n{out}"
    return float(match.group(1))


@pytest.fixture(autouse=True)
def _keep_global_rng():
    # `ponder sample` seeds torch's default generator; do not leak that into other tests.
    with torch.random.fork_rng(devices=[]):
        yield


def test_sample_mala(capsys):
    rc = cli.main(["sample", "--steps", "200", "--chains", "256", "--dim", "10", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, out + err
    assert err == ""  # --quiet: no progress bar
    acceptance = _value(out, "acceptance")
    assert 0.3 < acceptance <= 1.0
    # the default target is N(1, 2^2 I): the report is of that, and close to it
    assert abs(_value(out, "mean") - 1.0) < 0.2
    assert abs(_value(out, "variance") / 4.0 - 1.0) < 0.15
    assert "moments match the target" in out


@pytest.mark.parametrize("sampler", ["ula", "uld"])
def test_sample_other_samplers(sampler, capsys):
    rc = cli.main(["sample", "--sampler", sampler, "--steps", "50", "--chains", "64",
                   "--dim", "4", "--step-size", "0.1", "--quiet", "--dtype", "float64"])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "acceptance" not in out  # only MALA accepts or rejects
    assert _value(out, "variance") > 0


def test_sample_is_reproducible(capsys):
    argv = ["sample", "--steps", "20", "--chains", "32", "--dim", "3", "--quiet", "--seed", "4"]
    cli.main(argv)
    first = capsys.readouterr().out
    cli.main(argv)
    second = capsys.readouterr().out
    for key in ("acceptance", "mean", "variance"):
        assert _value(first, key) == _value(second, key)


@pytest.mark.parametrize("argv", [
    ["--steps", "1"],
    ["--steps", "0"],
    ["--chains", "0"],
    ["--step-size", "0"],
    ["--step-size", "-0.5"],
    ["--step-size", "nan"],
    ["--step-size", "inf"],
])
def test_sample_bad_values_return_2(argv, capsys):
    assert cli.main(["sample", *argv, "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("ponder sample: ")
    assert out == ""  # refused before sampling


@pytest.mark.parametrize("argv", [
    ["sample", "--sampler", "hmc"],
    ["sample", "--steps", "many"],
    ["frobnicate"],
    [],
])
def test_unparsable_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "usage: ponder" in capsys.readouterr().err


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == ponder.info()
