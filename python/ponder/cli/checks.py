"""Argument types and input checks shared by the ``ponder`` commands.

Each ``type=`` helper raises ``argparse.ArgumentTypeError``, so argparse prints one line
(``ponder sample: error: argument --steps: must be an integer >= 2, got 0``) and exits with 2
before any work starts. Checks that need more than one argument, a file's contents or a model
folder's files raise :class:`CommandError`, which :func:`ponder.cli.main` prints the same way.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..validation import MAX_SEED


class CommandError(ValueError):
    """Bad input to a command (an argument, a file, a model folder): one line for the user."""


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in ``[minimum, maximum]`` (no upper bound by default)."""
    want = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be an integer {want}, got {value}")
        return value

    parse.__name__ = f"int {want}"
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
# Seeds go to torch.manual_seed and ponder's counter-based generators: 63 bits.
seed = int_at_least(0, MAX_SEED)
positive_real = real_in(0.0, low_open=True)


def nonempty_text(text: str) -> str:
    """An argparse type: a non-empty string (a step separator, say)."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def existing_file(text: str) -> str:
    """An argparse type: the path of a file that exists."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def output_file(text: str) -> str:
    """An argparse type: a file that can be written (checked before any work is done).

    Opening it for appending is the only sure test (permissions, read-only file systems); a
    file that did not exist is removed again, one that did is left as it was.
    """
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder for the output: {path.parent}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"is a folder, not a file: {text}")
    existed = path.exists()
    try:
        with open(path, "a"):
            pass
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot write {text}: {err.strerror}") from None
    if not existed:
        path.unlink()
    return text


def output_dir(text: str) -> str:
    """An argparse type: a folder to write into, there or creatable (not an existing file)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"is a file, not a folder: {text}")
    ancestor = path.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise argparse.ArgumentTypeError(f"cannot make a folder under the file {ancestor}")
    if not os.access(ancestor, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {ancestor}")
    return text


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one existing file."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


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


def device_memory(dev) -> int | None:
    """Bytes of memory on torch device ``dev`` (None where that cannot be told)."""
    import torch

    dev = torch.device(dev)
    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not POSIX
        return None


def check_fits(nbytes: int, dev, what: str) -> None:
    """A :class:`CommandError` if ``nbytes`` exceed all the memory of device ``dev``: a size
    that can never fit is refused before the work starts rather than failing inside it."""
    total = device_memory(dev)
    if total is not None and nbytes > total:
        raise CommandError(f"{what} need {nbytes / 2**30:,.1f} GiB, more than the "
                           f"{total / 2**30:,.1f} GiB of memory on {dev}")


# --- JSONL inputs ---------------------------------------------------------------------------------

def read_records(path: str, required: tuple[str, ...] = (), arg: str = "--input",
                 kinds: dict[str, type | tuple[type, ...]] | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, each checked for ``required`` keys and the types in
    ``kinds`` (key -> type; a bool is never taken for an int); a problem is a
    :class:`CommandError` naming the file and record."""
    from ..records import read_jsonl

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
            if key in rec and not is_a(rec[key], kind):
                raise CommandError(f"{where}: {key!r} must be {_kind_name(kind)}, got "
                                   f"{_json_type(rec[key])}")
    return records


def is_a(value: object, kind: type | tuple[type, ...]) -> bool:
    """``isinstance``, except that JSON's true/false are not numbers."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_NAMES.get(k, k.__name__) for k in kinds)


_NAMES = {bool: "true/false", str: "a string", int: "an integer", float: "a number",
          list: "a list", dict: "an object", type(None): "null"}


def _json_type(value: object) -> str:
    return _NAMES.get(type(value), type(value).__name__)


def string_list(rec: dict[str, Any], key: str, where: str, *, nonempty: bool = False) -> list[str]:
    """``rec[key]`` checked to be a list of strings (non-empty with ``nonempty``); a
    :class:`CommandError` naming ``where`` otherwise."""
    value = rec[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CommandError(f"{where}: {key!r} must be a list of strings, got {_json_type(value)}"
                           if not isinstance(value, list) else
                           f"{where}: {key!r} must be a list of strings")
    if nonempty and not value:
        raise CommandError(f"{where}: {key!r} is empty")
    return value


# --- models ---------------------------------------------------------------------------------------

def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """``--allow-download`` and ``--allow-pickle``: the two ways past the safe default of loading
    a transformers model from a local folder with safetensors weights only."""
    parser.add_argument("--allow-download", action="store_true",
                        help="let transformers fetch a model id from the Hugging Face Hub "
                             "(default: local folders only, so a mistyped folder is reported "
                             "rather than looked up online)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also load pickled PyTorch weights (*.bin) when a model has no "
                             "safetensors; unpickling can run code, so only for models you "
                             "trust (default: safetensors only)")


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json",
                    "vocab.txt")


def model_folder_problem(folder: Path, allow_pickle: bool = False) -> str | None:
    """Why ``folder`` cannot be loaded as a transformers causal LM with its tokenizer, or None:
    ``config.json``, weights (safetensors, or ``*.bin`` with ``allow_pickle``) and tokenizer
    files must be there."""
    if not (folder / "config.json").is_file():
        return "no config.json"
    names = {p.name for p in folder.iterdir()}
    safetensors = any(n.endswith(".safetensors") or n == "model.safetensors.index.json"
                      for n in names)
    pickled = any(n.endswith(".bin") or n.endswith(".bin.index.json") for n in names)
    if not safetensors:
        if pickled and not allow_pickle:
            return ("its weights are pickled (*.bin), not safetensors; --allow-pickle loads them "
                    "(unpickling can run code: only for a model you trust)")
        if not pickled:
            return "no weights (*.safetensors)"
    if not names.intersection(_TOKENIZER_FILES):
        return f"no tokenizer files ({', '.join(_TOKENIZER_FILES)})"
    return None


def check_model(value: str, flag: str, names: Sequence[str], *, kind: str = "model",
                allow_download: bool = False, allow_pickle: bool = False) -> None:
    """``value`` (the argument of ``flag``) is one of ``names`` (the built-in models), a model
    folder that can be loaded, or (``allow_download``) a Hub id; a :class:`CommandError` naming
    the path and what is missing otherwise. Runs before any file is read or model loaded, so a
    mistyped folder is never taken for a Hub id."""
    if value in names:
        return
    path = Path(value)
    if path.is_dir():
        problem = model_folder_problem(path, allow_pickle)
        if problem:
            raise CommandError(f"{flag}: {value} is not a model folder: {problem}")
        return
    if allow_download and not path.exists():
        return  # transformers reads it as a Hub id; its own error names what is wrong
    hint = "" if allow_download else "; --allow-download to fetch a Hugging Face Hub id"
    raise CommandError(f"{flag}: not a {kind} name ({', '.join(names)}) nor a model folder: "
                       f"{value}{hint}")


def load_causal_lm(name: str, flag: str, *, allow_download: bool = False,
                   allow_pickle: bool = False, **model_kwargs):
    """``(model, tokenizer)`` of the transformers causal LM ``name`` (checked by
    :func:`check_model`): local files only unless ``allow_download``, safetensors only unless
    ``allow_pickle``. A model that still cannot be loaded (a broken config, a missing tokenizer
    class) is a :class:`CommandError` naming ``flag`` and the path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = not allow_download
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(
            name, local_files_only=local, use_safetensors=None if allow_pickle else True,
            **model_kwargs)
    except (OSError, ValueError, KeyError) as err:  # what transformers raises for a bad model
        raise CommandError(f"{flag}: cannot load the model {name}: {err}") from err
    return model, tokenizer


def check_generation_length(tokenizer, config, prompts: Sequence[str], max_new_tokens: int,
                            flag: str = "--max-new-tokens") -> None:
    """Refuse ``max_new_tokens`` that would run the longest prompt past the model's
    ``max_position_embeddings`` (the positions it was built for; generation caches are sized by
    it): a :class:`CommandError` naming the numbers."""
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or not prompts:
        return
    longest = max(len(ids) for ids in tokenizer(list(prompts))["input_ids"])
    if longest + max_new_tokens > limit:
        raise CommandError(f"{flag} {max_new_tokens} plus the longest prompt ({longest} tokens) "
                           f"exceeds the model's max_position_embeddings ({limit})")


def check_backend(backend: str | None, dev, flag: str = "--backend") -> None:
    """A forced ``backend`` is built and usable here and runs on device ``dev``; else a
    :class:`CommandError` giving the reason, before any work (the op layer would only say so
    at the first kernel call, after the command has started printing)."""
    if backend is None:
        return
    import torch

    from .._backend import available_backends

    status = available_backends()[backend]
    if not status.available:
        raise CommandError(f"{flag} {backend} is not available here: {status.reason}")
    kind = torch.device(dev).type
    if kind not in status.devices:
        raise CommandError(f"{flag} {backend} runs on {' or '.join(status.devices)} here, not on "
                           f"{kind}")
