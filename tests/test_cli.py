"""The ``ponder`` command (ponder.cli)."""

from __future__ import annotations

import re

import ponder
import pytest
import torch
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
    # the default target is N(0, I_10): 256 final states, |mean error| ~ sqrt(2 * 10 / 256)
    assert _value(out, "mean error") < 0.6
    assert "MMD^2" in out


@pytest.mark.parametrize("sampler", ["ula", "uld", "sps-sgld", "sps-mala"])
def test_sample_other_samplers(sampler, capsys):
    rc = cli.main(["sample", sampler, "--steps", "50", "--chains", "64",
                   "--dim", "4", "--step-size", "0.1", "--quiet", "--dtype", "float64"])
    out, _ = capsys.readouterr()
    assert rc == 0
    # only the MALA-type samplers accept or reject
    assert ("acceptance" in out) == (sampler == "sps-mala")
    # N(0, I_4): 64 final states against 64 exact samples, |mean error| ~ sqrt(2 * 4 / 64) = 0.35
    assert _value(out, "mean error") < 1.0


@pytest.mark.parametrize("sampler", ["ddpm", "rtk-mala", "rtk-uld"])
def test_sample_diffusion(sampler, capsys):
    rc = cli.main(["sample", sampler, "--target", "mixture", "--steps", "50", "--segments", "5",
                   "--inner-steps", "3", "--chains", "200", "--quiet"])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "score evaluations each" in out


def test_sample_sgld_on_logistic(capsys):
    rc = cli.main(["sample", "sgld", "--target", "logistic", "--steps", "400", "--chains", "64",
                   "--quiet"])
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "per-datum gradients" in out and "true weights" in out


def test_sample_is_reproducible(capsys):
    argv = ["sample", "--steps", "20", "--chains", "32", "--dim", "3", "--quiet", "--seed", "4"]
    cli.main(argv)
    first = capsys.readouterr().out
    cli.main(argv)
    second = capsys.readouterr().out
    for key in ("acceptance", "mean error", "MMD\\^2"):
        assert _value(first, key) == _value(second, key)


def test_experiments_quick(tmp_path, capsys):
    rc = cli.main(["experiments", "samplers", "--quick", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    report = (tmp_path / "README.md").read_text()
    for name in ("SGLD", "MALA", "SPS-SGLD", "SPS-MALA", "DDPM", "RTK-MALA", "RTK-ULD"):
        assert f"| {name} |" in report


@pytest.mark.parametrize("argv", [
    ["--steps", "1"],
    ["--steps", "0"],
    ["--chains", "0"],
    ["--dim", "0"],
    ["--step-size", "0"],
    ["--step-size", "-0.5"],
    ["--step-size", "nan"],
    ["--step-size", "inf"],
])
def test_sample_bad_values_return_2(argv, capsys):
    assert cli.main(["sample", *argv, "--quiet"]) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[-1].startswith("ponder sample: error: ")
    assert out == ""  # refused before sampling


@pytest.mark.parametrize("argv", [
    ["sample", "hmc"],
    ["sample", "--steps", "many"],
    ["frobnicate"],
    [],
])
def test_unparsable_arguments_exit_2(argv, capsys):
    assert cli.main(argv) == 2
    assert "usage: ponder" in capsys.readouterr().err


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == ponder.info()


def test_toy_eval(capsys):
    pytest.importorskip("transformers")
    assert cli.main(["toy", "eval", "--models", "target", "--n", "20"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^target\s+greedy accuracy \d+\.\d% on 20 test problems", out, re.MULTILINE), out


def test_toy_eval_retrieval(capsys):
    pytest.importorskip("transformers")
    assert cli.main(["toy", "eval", "--models", "retrieval", "--n", "2"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"retrieval lookup accuracy \(2 lookups each, chance 10%\): 1,024 tokens "
                      r"(\d+\.\d)%, 4,096 tokens \d+\.\d%, 8,192 tokens \d+\.\d%", out)
    assert match, out
    assert float(match.group(1)) == 100.0  # 24/24 at 1K in recipe.json
