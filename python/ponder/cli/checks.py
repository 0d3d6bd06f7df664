"""Argument types and input checks shared by the ``ponder`` commands.

Each ``type=`` helper raises ``argparse.ArgumentTypeError``, so argparse prints one line
(``ponder sample: error: argument --steps: must be an integer >= 2, got 0``) and exits with 2
before any work starts. Checks that need more than one argument or a file's contents raise
:class:`CommandError`, which :func:`ponder.cli.main` prints the same way.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


class CommandError(ValueError):
    """Bad input to a command (an argument, a file, a model folder): one line for the user."""


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int>={minimum}"
    return parse


def real_in(low: float, high: float = math.inf, *, low_open: bool = False,
            high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite real number in [low, high] (``low_open`` / ``high_open``
    exclude the ends)."""
    left, right = "(" if low_open else "[", ")" if high_open or high == math.inf else "]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        inside = (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        if not math.isfinite(value) or not inside:
            raise argparse.ArgumentTypeError(
                f"must be a finite number in {left}{low:g}, {high:g}{right}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
positive_real = real_in(0.0, low_open=True)
nonnegative_real = real_in(0.0)
probability = real_in(0.0, 1.0, low_open=True)


def existing_file(text: str) -> str:
    """An argparse type: the path of a file that exists."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def output_file(text: str) -> str:
    """An argparse type: a file path whose folder exists (checked before any work is done)."""
    folder = Path(text).parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder for the output: {folder}")
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"is a folder, not a file: {text}")
    return text


def model_source(kind: str, names: tuple[str, ...]) -> Callable[[str], str]:
    """An argparse type: one of ``names`` (the built-in ``kind`` models) or a folder that exists.

    A missing folder is caught here, before transformers reads the name as a Hub repo id.
    """

    def parse(text: str) -> str:
        if text in names or Path(text).is_dir():
            return text
        raise argparse.ArgumentTypeError(
            f"not a {kind} name ({', '.join(names)}) nor a model folder: {text}")

    parse.__name__ = "model"
    return parse


def read_records(path: str, required: tuple[str, ...] = (), arg: str = "--input",
                 kinds: dict[str, type | tuple[type, ...]] | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, each checked for ``required`` keys and the types in
    ``kinds`` (key -> type); a problem is a :class:`CommandError` naming the file and line."""
    from ..rewards.train import read_jsonl

    try:
        records = read_jsonl(path)
    except (OSError, ValueError) as err:  # ValueError: JSON and Unicode errors
        raise CommandError(f"{arg}: cannot read {path}: {err}") from err
    if not records:
        raise CommandError(f"{arg}: {path} holds no records")
    for number, rec in enumerate(records, 1):
        where = f"{arg}: {path} record {number}"
        if not isinstance(rec, dict):
            raise CommandError(f"{where} is not a JSON object")
        missing = [key for key in required if key not in rec]
        if missing:
            raise CommandError(f"{where} has no {', '.join(repr(k) for k in missing)}")
        for key, kind in (kinds or {}).items():
            if key in rec and not isinstance(rec[key], kind):
                want = kind.__name__ if isinstance(kind, type) else \
                    " or ".join(k.__name__ for k in kind)
                raise CommandError(f"{where}: {key!r} must be a {want}, got "
                                   f"{type(rec[key]).__name__}")
    return records


def device(text: str) -> str:
    """An argparse type: a torch device that computes here (``cpu``, or ``cuda[:N]`` with a CUDA
    device present)."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (cpu or cuda[:N])") from None
    if dev.type == "cpu":
        return text
    if dev.type != "cuda":
        raise argparse.ArgumentTypeError(f"device type {dev.type!r} cannot run ponder's "
                                         "commands (cpu or cuda[:N])")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: torch sees no CUDA device here")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(
            f"{text}: there are {torch.cuda.device_count()} CUDA device(s)")
    return text


def string_list(rec: dict[str, Any], key: str, where: str) -> list[str]:
    """``rec[key]`` checked to be a list of strings (a :class:`CommandError` naming ``where``)."""
    value = rec[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CommandError(f"{where}: {key!r} must be a list of strings")
    return value
