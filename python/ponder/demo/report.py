"""What a demo section produces, and how it is printed and written (plain text and markdown)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Section", "Table", "render_markdown", "render_text"]


@dataclass
class Table:
    """A small table: ``headers`` and ``rows`` of already formatted cells."""

    headers: Sequence[str]
    rows: list[Sequence[str]]
    caption: str = ""

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.headers):
                raise ValueError(
                    f"Table: row {i} has {len(row)} cells, expected {len(self.headers)} "
                    f"(headers {list(self.headers)})"
                )

    def text(self) -> str:
        cells = [list(map(str, self.headers))] + [list(map(str, r)) for r in self.rows]
        widths = [max(len(row[j]) for row in cells) for j in range(len(self.headers))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(([self.caption] if self.caption else []) + lines)

    def markdown(self) -> str:
        out = [f"*{self.caption}*", ""] if self.caption else []
        out.append("| " + " | ".join(map(str, self.headers)) + " |")
        out.append("|" + "---|" * len(self.headers))
        out.extend("| " + " | ".join(map(str, r)) + " |" for r in self.rows)
        return "\n".join(out)


@dataclass
class Section:
    """One part of the demo: a title, what it shows, its tables, images and findings."""

    name: str
    title: str
    intro: str = ""
    tables: list[Table] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str = ""  # why the section did not run (e.g. a missing optional dependency)


def render_text(section: Section) -> str:
    lines = [f"== {section.title} " + "=" * max(3, 76 - len(section.title)), ""]
    if section.skipped:
        return "\n".join(lines + [f"skipped: {section.skipped}", ""])
    if section.intro:
        lines += [section.intro, ""]
    for table in section.tables:
        lines += [table.text(), ""]
    lines += [f"* {f}" for f in section.findings]
    lines += [f"(plot: {p})" for p in section.images]
    lines += [f"({section.seconds:.1f} s)", ""]
    return "\n".join(lines)


def render_markdown(sections: Sequence[Section], *, header: str, out_dir: Path) -> str:
    lines = ["# ponder demo", "", header, ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.skipped:
            lines += [f"Skipped: {s.skipped}", ""]
            continue
        if s.intro:
            lines += [s.intro, ""]
        for table in s.tables:
            lines += [table.markdown(), ""]
        if s.findings:
            lines += [f"- {f}" for f in s.findings] + [""]
        for p in s.images:
            rel = p.relative_to(out_dir) if p.is_relative_to(out_dir) else p
            lines += [f"![{s.title}]({rel})", ""]
        lines += [f"({s.seconds:.1f} s)", ""]
    return "\n".join(lines)
