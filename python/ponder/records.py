"""JSON Lines files that long jobs append to and resume from.

Collectors (ER-PRM rollouts, OREO / BOLT / Auto-CEI samples, MathHay generations) write one JSON
object per line, flushed and synced, so a killed run leaves at most a torn last line. On resume,
:func:`open_append` checks the file before touching it: every complete line must be a JSON object
(anything else is not a file a ponder job wrote, and it is left alone with an error), and a torn
last line is cut off (or, if it is a whole object that only lacks its newline, kept).

    done = {r["id"] for r in read_jsonl(path)} if path.exists() else set()
    with open_append(path) as f:
        for item in todo:
            append_line(f, {"id": item.id, ...})
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

__all__ = ["append_line", "open_append", "read_jsonl", "repair_tail"]


def read_jsonl(path: str | Path) -> list[Any]:
    """Every record of a JSON Lines file (a ``.json`` file holding a list also works). Blank
    lines are skipped; a malformed line is a ValueError naming the file and line."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return list(json.loads(text))
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"read_jsonl: {path}:{no} is not valid JSON ({err})") from err
    return out


def repair_tail(path: str | Path) -> None:
    """Make an append-only JSONL file safe to append to after a kill.

    A missing or empty file is fine. Every complete line must be blank or a JSON object, else a
    ValueError names the file and line and the file is not modified. An unterminated last line
    that is a whole JSON object gets its newline; any other unterminated last line (a write cut
    short) is cut off.
    """
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    for no, line in enumerate(lines, 1):
        if line.strip() and not _is_object(line):
            raise ValueError(f"{path}:{no} is not a JSON object: not a JSONL file written by "
                             "ponder; refusing to append to it (choose another output)")
    if not tail.strip():
        return
    with open(path, "r+b") as f:
        if _is_object(tail):
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(len(data) - len(tail))


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def open_append(path: str | Path) -> IO[str]:
    """:func:`repair_tail`, then ``open(path, "a")`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_tail(path)
    return open(path, "a", encoding="utf-8")


def append_line(f: IO[str], record: Mapping[str, Any]) -> None:
    """Write one record as one line, flushed and synced: a kill leaves at most a torn tail."""
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())
