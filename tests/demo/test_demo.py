"""`ponder demo`: the quick run writes a report with every section, and its numbers say what the
toy world is built to show (the target beats the draft)."""

import importlib.util

import pytest
from ponder.cli import main
from ponder.demo import SECTIONS, run_demo

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    sections = run_demo(out, quick=True, progress=False, echo=False)
    return out, sections


def test_quick_demo_writes_every_section(quick_demo):
    out, sections = quick_demo
    assert [s.name for s in sections] == list(SECTIONS)
    report = (out / "report.md").read_text()
    for s in sections:
        assert f"## {s.title}" in report
        assert not s.skipped, s.skipped
        assert s.tables and all(t.rows for t in s.tables)


def test_quick_demo_target_beats_draft(quick_demo):
    _, sections = quick_demo
    toy = next(s for s in sections if s.name == "toy")
    accuracy = {row[0]: float(row[2].rstrip("%")) for row in toy.tables[0].rows}
    assert accuracy["target"] >= accuracy["draft"] + 20


def test_quick_demo_think_keeps_retrieval(quick_demo):
    # The retrieval table: dense and ThinK at lambda 0.4 answer all 8 lookups (chance 10% each),
    # while holding fewer bytes.
    _, sections = quick_demo
    think = next(s for s in sections if s.name == "think")
    table = next(t for t in think.tables if t.headers[1].startswith("accuracy @"))
    rows = {row[0]: row for row in table.rows}
    assert rows["dense"][1] == "100.0%" and rows["ThinK lambda=0.4"][1] == "100.0%"
    assert float(rows["ThinK lambda=0.4"][2]) < 0.9
    # The plot of accuracy by context length, where matplotlib (optional) is installed.
    plots = ["think_retrieval.png"] if importlib.util.find_spec("matplotlib") else []
    assert [p.name for p in think.images] == plots


def test_quick_demo_plots(quick_demo):
    pytest.importorskip("matplotlib")
    out, sections = quick_demo
    images = [p for s in sections for p in s.images]
    assert images and all(p.is_file() and p.stat().st_size > 1000 for p in images)
    assert all(p.parent == out for p in images)


def test_demo_cli_one_section(tmp_path, capsys):
    assert main(["demo", "--quick", "--quiet", "--only", "samplers", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "SPS-MALA" in printed and "RTK-ULD" in printed
    assert "toy world" not in printed  # only the section asked for
    assert (tmp_path / "report.md").is_file()


def test_unknown_section_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown section"):
        run_demo(tmp_path, sections=["nope"], echo=False)
