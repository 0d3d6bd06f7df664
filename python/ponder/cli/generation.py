"""``--server URL`` / ``--model NAME``: every sampling command's way to an inference server.

A command that samples from a policy (``prm collect``, and the collectors to come: OREO, Auto-CEI,
BOLT, MathHay) calls :func:`add_server_options` on its parser and :func:`text_generator` to get
its :class:`~ponder.generation.TextGenerator`: an :class:`~ponder.openai_generation.OpenAIGenerator`
when ``--server`` is given, the command's local model otherwise::

    ponder prm collect --input sol.jsonl --output er.jsonl \\
        --server http://gpu1:8000 --server http://gpu2:8000 --model Qwen/Qwen2.5-Math-7B

The key never goes on the command line (it would show in ``ps`` and shell histories):
``PONDER_SERVER_KEY`` or ``OPENAI_API_KEY``. Local servers need none.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

from . import checks


def server_url(text: str) -> str:
    """An argparse type: an http(s) server URL (``/v1`` is added to a bare host)."""
    from ..openai_generation import normalise_url

    try:
        return normalise_url(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("OpenAIGenerator: ")) from None


def json_object(text: str) -> dict[str, Any]:
    """An argparse type: a JSON object."""
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text}")
    return value


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--server``, ``--model``, ``--concurrency`` and ``--server-extra`` to a sampling
    command (``--model`` lands in ``args.server_model``)."""
    g = parser.add_argument_group(
        "sampling from a server",
        "an OpenAI-compatible /v1/completions server (vLLM, SGLang, TGI, transformers serve) "
        "instead of the local model; the key comes from PONDER_SERVER_KEY or OPENAI_API_KEY")
    g.add_argument("--server", action="append", metavar="URL", type=server_url,
                   help="the server's base URL (http://host:port or .../v1); repeat it for "
                   "several servers, used round-robin")
    g.add_argument("--model", dest="server_model", metavar="NAME", default=None,
                   help="the model name the server knows (default: PONDER_SERVER_MODEL, else "
                   "the server's only model)")
    g.add_argument("--concurrency", type=checks.positive_int, default=8, metavar="N",
                   help="requests in flight at once, over all servers (default 8)")
    g.add_argument("--server-extra", type=json_object, metavar="JSON", default=None,
                   help="fields added to every request, for a server's own options; "
                   "transformers serve samples only with "
                   "'{\"generation_config\": \"{\\\"do_sample\\\": true}\"}'")


@contextlib.contextmanager
def text_generator(args: argparse.Namespace, load_local: Callable[[], tuple[Any, Any]]
                   ) -> Iterator[tuple[Any, Any]]:
    """``(generator, tokenizer)`` for a command with :func:`add_server_options`: the servers of
    ``--server`` (tokenizer None), else ``load_local() -> (model, tokenizer)`` wrapped in a
    :class:`~ponder.generation.TransformersGenerator` (``args.batch_size`` sequences a batch).
    The server connections are closed when the ``with`` block ends."""
    if not args.server:
        for flag, value in (("--model", args.server_model), ("--server-extra",
                                                            args.server_extra)):
            if value is not None:
                raise checks.CommandError(f"{flag} needs --server")
        from ..generation import TransformersGenerator

        model, tok = load_local()
        yield TransformersGenerator(model, tok, batch_size=args.batch_size), tok
        return
    from ..openai_generation import OpenAIGenerator

    try:
        gen = OpenAIGenerator(args.server, args.server_model, concurrency=args.concurrency,
                              extra_body=args.server_extra)
    except ImportError as err:  # no openai package: the message says what to install
        raise checks.CommandError(f"--server: {err}") from None
    with gen:
        yield gen, None
