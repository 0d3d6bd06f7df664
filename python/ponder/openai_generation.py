"""A :class:`~ponder.generation.TextGenerator` over OpenAI-compatible completion servers.

vLLM, SGLang, TGI and ``transformers serve`` all answer ``POST /v1/completions``; so does a load
balancer in front of many of them. :class:`OpenAIGenerator` samples through that endpoint with the
``openai`` package (``pip install ponder[server]``) and returns what
:class:`~ponder.generation.TransformersGenerator` returns, so a collector takes either::

    gen = OpenAIGenerator(["http://gpu1:8000", "http://gpu2:8000"], "Qwen/Qwen2.5-Math-7B",
                          concurrency=32)
    with gen:
        outs = gen.generate(prompts, n=16, max_new_tokens=512, temperature=1.0, seed=[...])

What it does with a call:

- **Requests.** One request per completion (``n=1``), each with its own seed, by default: every
  server takes that. ``n_per_request=True`` asks for a prompt's ``n`` completions in one request
  (vLLM, SGLang; ``transformers serve`` ignores ``n``, which the backend then reports).
  ``prompts_per_request=k`` sends ``k`` prompts in one request, for unseeded calls only: a
  request carries one seed, and a seeded prompt's completions must not depend on its neighbours.
  Greedy calls (``temperature == 0``) send each prompt once and repeat the answer ``n`` times.
- **Seeds.** The completion ``j`` of a prompt with seed ``s`` is requested with seed
  ``hash(s, j)``; with one seed for the call, ``hash(seed, i * n + j)`` for prompt ``i``. Whether
  equal seeds give equal completions is up to the server (vLLM and ``transformers serve`` do, one
  request at a time); the seeds make a collection repeatable where the server allows it.
- **Throughput.** Up to ``concurrency`` requests in flight (threads; the HTTP connections are
  kept open), spread round-robin over the base URLs.
- **Robustness.** A timeout, a dropped connection, HTTP 429 or 5xx is retried with exponential
  backoff (jittered, capped at ``max_backoff``; a ``Retry-After`` header is honoured up to the
  same cap), each retry on the next URL, up to ``max_retries`` times; any other 4xx fails at once.
  Both end in :class:`GenerationServerError`, naming the URL and the HTTP status.
- **Stop strings** are sent to the server (it stops early) and applied again here, so the result
  is the same whether or not the server honours them (``send_stop=False`` for a server that
  refuses them).
- **Log-probs.** ``generate(..., logprobs=True)`` asks for them (``logprobs=1``) and returns
  :class:`~ponder.generation.Completion` objects; a server that returns none is an error.

Nothing secret lives in code: the URLs, the model and the key come from the arguments or from
``PONDER_SERVER_URL`` (comma-separated URLs), ``PONDER_SERVER_MODEL`` and ``PONDER_SERVER_KEY``
(then ``OPENAI_API_KEY``; local servers need no key).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import os
import random
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .generation import Completion, TextGenerator
from .validation import check_int, check_real

__all__ = ["GenerationServerError", "OpenAIGenerator", "normalise_url", "transformers_server"]

URL_ENV, MODEL_ENV, KEY_ENV = "PONDER_SERVER_URL", "PONDER_SERVER_MODEL", "PONDER_SERVER_KEY"


class GenerationServerError(OSError):
    """A request to a generation server failed for good: a 4xx answer, or a timeout, dropped
    connection, 429 or 5xx that outlasted the retries. ``url`` and ``status`` (None when no
    HTTP answer came) say which and why."""

    def __init__(self, message: str, *, url: str, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


def normalise_url(url: str) -> str:
    """``http(s)://host[:port][/path]`` checked; a bare host gets the OpenAI ``/v1`` prefix
    (``http://h:8000`` -> ``http://h:8000/v1``), a URL with a path is kept as written."""
    if not isinstance(url, str):
        raise TypeError(f"OpenAIGenerator: a server URL must be a str, got {type(url).__name__}")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"OpenAIGenerator: not an http(s) server URL: {url!r} (e.g. "
                         "http://127.0.0.1:8000 or http://host:8000/v1)")
    path = parts.path.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path or '/v1'}"


def _request_seed(seed: int, index: int) -> int:
    """The seed of one request: a hash of the caller's seed and the completion's index, in
    [0, 2**31) (servers differ in how wide a seed they take; 31 bits fits them all)."""
    h = hashlib.blake2b(f"{seed};{index}".encode(), digest_size=4)
    return int.from_bytes(h.digest(), "big") >> 1


class _Cancelled(Exception):
    """A request given up because another request of the same call failed."""


@dataclass
class _Request:
    """One ``/completions`` request and where its choices go: ``slots[k] = (i, j)`` receives
    choice ``k`` (prompt ``k // n`` of ``prompts``, OpenAI's order)."""

    prompts: list[str]
    n: int
    seed: int | None
    slots: list[tuple[int, int]]


class OpenAIGenerator(TextGenerator):
    """:class:`~ponder.generation.TextGenerator` over OpenAI-compatible ``/v1/completions``
    servers (see the module doc for what it does with a call).

    Parameters
    ----------
    base_url : str or sequence of str, optional
        The server(s), used round-robin; ``http://host:port`` gets ``/v1`` appended. Default: the
        comma-separated ``PONDER_SERVER_URL``.
    model : str, optional
        The model name the server knows. Default: ``PONDER_SERVER_MODEL``, else the server's only
        model (``GET /v1/models``; an error if it serves several).
    api_key : str, optional
        Default: ``PONDER_SERVER_KEY``, then ``OPENAI_API_KEY``, else none (a placeholder is
        sent: local servers check nothing).
    concurrency : int
        Requests in flight at once (over all URLs).
    prompts_per_request : int
        Prompts batched into one request in unseeded calls (servers that take a list of prompts).
    n_per_request : bool
        Ask for a prompt's ``n`` completions in one request (servers that honour ``n``).
    send_stop : bool
        Send the stop strings to the server (they are applied here in any case).
    timeout : float
        Seconds a request may take before it is retried.
    max_retries : int
        Retries of a request after a timeout, a dropped connection, 429 or 5xx.
    backoff, max_backoff : float
        The first retry waits about ``backoff`` seconds, doubling each time, at most
        ``max_backoff`` (jittered to between half and all of that).
    extra_body : mapping, optional
        Fields added to every request, for a server's own options, e.g. ``transformers serve``'s
        ``{"generation_config": '{"do_sample": true}'}`` (it samples only when the model's
        generation config says so, whatever the temperature).

    The HTTP clients stay open until :meth:`close` (or the end of a ``with`` block).
    """

    returns_logprobs = True

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        model: str | None = None,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        prompts_per_request: int = 1,
        n_per_request: bool = False,
        send_stop: bool = True,
        timeout: float = 600.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        extra_body: Mapping[str, Any] | None = None,
    ):
        try:
            import openai
        except ImportError as err:
            raise ImportError("OpenAIGenerator needs the openai package: pip install "
                              "'ponder[server]' (or pip install openai)") from err
        if base_url is None:
            base_url = [u for u in os.environ.get(URL_ENV, "").split(",") if u.strip()]
            if not base_url:
                raise ValueError(f"OpenAIGenerator: no server URL: pass base_url or set {URL_ENV} "
                                 "(comma-separated for several)")
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("OpenAIGenerator: base_url is an empty list")
        self.base_urls = [normalise_url(u) for u in urls]
        where = "OpenAIGenerator"
        self.concurrency = check_int(where, "concurrency", concurrency, minimum=1)
        self.prompts_per_request = check_int(where, "prompts_per_request", prompts_per_request,
                                             minimum=1)
        self.n_per_request = bool(n_per_request)
        self.send_stop = bool(send_stop)
        self.timeout = check_real(where, "timeout", timeout, positive=True)
        self.max_retries = check_int(where, "max_retries", max_retries, minimum=0)
        self.backoff = check_real(where, "backoff", backoff, nonnegative=True)
        self.max_backoff = check_real(where, "max_backoff", max_backoff, nonnegative=True)
        if extra_body is not None and not isinstance(extra_body, Mapping):
            raise TypeError("OpenAIGenerator: extra_body must be a mapping of request fields, "
                            f"got {type(extra_body).__name__}")
        self.extra_body = dict(extra_body or {})
        key = api_key or os.environ.get(KEY_ENV) or os.environ.get("OPENAI_API_KEY") or "none"
        self._openai = openai
        # Retries are ours (backoff, next URL, the error naming the URL), not the client's.
        self._clients = [openai.OpenAI(base_url=u, api_key=key, timeout=self.timeout,
                                       max_retries=0) for u in self.base_urls]
        self._turn = itertools.count()
        self._turn_lock = threading.Lock()
        self.requests_sent = 0  # HTTP requests, retries included (for reports and tests)
        try:
            self.model = model or os.environ.get(MODEL_ENV) or self._only_model()
        except BaseException:
            self.close()
            raise

    # ----- lifetime -----

    def close(self) -> None:
        """Close the HTTP connections (the generator cannot be used afterwards)."""
        for client in getattr(self, "_clients", ()):
            client.close()
        self._clients = []

    def __enter__(self) -> OpenAIGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"OpenAIGenerator({self.base_urls!r}, {getattr(self, 'model', None)!r}, "
                f"concurrency={self.concurrency})")

    # ----- requests -----

    def _next(self) -> tuple[str, Any]:
        """The next (URL, client), round-robin."""
        if not self._clients:
            raise ValueError("OpenAIGenerator: the generator is closed")
        with self._turn_lock:
            k = next(self._turn) % len(self._clients)
        return self.base_urls[k], self._clients[k]

    def _call(self, what: str, send, cancel: threading.Event | None = None):
        """``(url, send(client))`` with retries on timeouts, dropped connections, 429 and 5xx;
        any other error status raises at once. ``what`` names the endpoint in errors. Once
        ``cancel`` is set (another request of the call failed), no attempt starts and a backoff
        ends early."""
        openai = self._openai
        cancel = cancel or threading.Event()
        for attempt in range(self.max_retries + 1):
            if cancel.is_set():
                raise _Cancelled
            url, client = self._next()
            with self._turn_lock:
                self.requests_sent += 1
            wait_for = None
            try:
                return url, send(client)
            except openai.APIStatusError as err:
                status = err.status_code
                detail = _detail(err)
                if status != 429 and status < 500:
                    raise GenerationServerError(
                        f"OpenAIGenerator: {url}{what} answered HTTP {status}: {detail}",
                        url=url, status=status) from None
                last = (f"HTTP {status}: {detail}", status, url)
                wait_for = _retry_after(err)
            except (openai.APITimeoutError, openai.APIConnectionError) as err:
                kind = "timed out" if isinstance(err, openai.APITimeoutError) else \
                    f"connection failed ({_cause(err)})"
                last = (kind, None, url)
            if attempt < self.max_retries:
                delay = min(self.max_backoff, self.backoff * 2 ** attempt)
                delay *= 0.5 + 0.5 * random.random()  # jitter: retries of many threads spread
                if wait_for is not None:
                    delay = max(delay, min(wait_for, self.max_backoff))
                if cancel.wait(delay):
                    raise _Cancelled
        reason, status, url = last
        raise GenerationServerError(
            f"OpenAIGenerator: {url}{what} failed after {self.max_retries + 1} attempt(s) "
            f"(the last on this URL): {reason}", url=url, status=status)

    def _only_model(self) -> str:
        """The one model the first server lists (``GET /v1/models``)."""
        url, page = self._call("/models", lambda client: client.models.list())
        names = [m.id for m in page.data]
        if len(names) != 1:
            raise ValueError(f"OpenAIGenerator: {url} serves "
                             f"{len(names)} models ({', '.join(names) or 'none'}): pass model "
                             f"or set {MODEL_ENV}")
        return names[0]

    def _complete(self, req: _Request, options: dict[str, Any], logprobs: bool,
                  cancel: threading.Event | None = None) -> list:
        """Send one request; its choices in OpenAI's order (prompt-major), as str or Completion."""
        body: dict[str, Any] = {"model": self.model,
                                "prompt": req.prompts[0] if len(req.prompts) == 1 else req.prompts,
                                "n": req.n, **options}
        if req.seed is not None:
            body["seed"] = req.seed
        if logprobs:
            body["logprobs"] = 1
        extra = self.extra_body or None
        url, resp = self._call("/completions",
                               lambda client: client.completions.create(**body, extra_body=extra),
                               cancel)
        choices = sorted(resp.choices, key=lambda c: c.index)
        want = len(req.prompts) * req.n
        if len(choices) != want:
            hint = (" (does it ignore n? use n_per_request=False)" if req.n > 1 else
                    " (does it take a list of prompts? use prompts_per_request=1)"
                    if len(req.prompts) > 1 else "")
            raise GenerationServerError(
                f"OpenAIGenerator: {url}/completions returned {len(choices)} completions for "
                f"{len(req.prompts)} prompt(s) x n={req.n}{hint}", url=url)
        if not logprobs:
            return [c.text for c in choices]
        out = []
        for c in choices:
            lp = c.logprobs
            if lp is None or lp.tokens is None or lp.token_logprobs is None:
                raise GenerationServerError(
                    f"OpenAIGenerator: {url}/completions returned no log-probs (logprobs=True "
                    "needs a server that returns them, e.g. vLLM)", url=url)
            out.append(Completion(c.text, lp.tokens, [math.nan if x is None else x
                                                     for x in lp.token_logprobs]))
        return out

    # ----- the TextGenerator hook -----

    def _plan(self, prompts: list[str], n: int, seed: int | list[int] | None,
              greedy: bool) -> list[_Request]:
        """The requests that fill ``out[i][j]`` for every prompt ``i`` and ``j < n``."""
        if greedy:  # every completion is the same: ask once per prompt
            n = 1
        if seed is None:
            k = self.prompts_per_request
            per = n if self.n_per_request else 1
            rounds = 1 if self.n_per_request else n
            return [_Request(prompts[a:a + k], per, None,
                             [(i, j) for i in range(a, min(a + k, len(prompts)))
                              for j in (range(per) if per > 1 else [r])])
                    for r in range(rounds) for a in range(0, len(prompts), k)]

        def seed_of(i: int, j: int) -> int:
            return _request_seed(seed[i], j) if isinstance(seed, list) else \
                _request_seed(seed, i * n + j)

        if self.n_per_request:
            return [_Request([p], n, seed_of(i, 0), [(i, j) for j in range(n)])
                    for i, p in enumerate(prompts)]
        return [_Request([p], 1, seed_of(i, j), [(i, j)])
                for i, p in enumerate(prompts) for j in range(n)]

    def _sample_groups(self, prompts: list[str], n: int, seed: int | list[int] | None, *,
                       max_new_tokens: int, temperature: float, top_p: float,
                       stop: tuple[str, ...], logprobs: bool) -> list[list[str]]:
        """``out[i][j]``: all the call's requests, ``concurrency`` at a time (see the module
        doc); the first request that fails for good stops the others: those not started never
        are, those backing off give up, those in flight are waited for (not after an
        interrupt)."""
        greedy = temperature == 0.0
        options: dict[str, Any] = {"max_tokens": max_new_tokens, "temperature": temperature,
                                   "top_p": top_p}
        stops = [s for s in stop if s]
        if self.send_stop and stops:
            options["stop"] = stops
        requests = self._plan(prompts, n, seed, greedy)
        out: list[list] = [[None] * n for _ in prompts]
        cancel = threading.Event()

        def run(req: _Request) -> None:
            for (i, j), text in zip(req.slots, self._complete(req, options, logprobs, cancel)):
                out[i][j] = text

        if self.concurrency == 1 or len(requests) == 1:
            for req in requests:
                run(req)
        else:
            pool = ThreadPoolExecutor(min(self.concurrency, len(requests)),
                                      thread_name_prefix="ponder-openai")
            try:
                for future in as_completed([pool.submit(run, req) for req in requests]):
                    future.result()  # the first failure raises here
            except BaseException as err:
                cancel.set()
                # A failure waits for the requests in flight (their connections then close
                # cleanly); an interrupt (Ctrl-C) does not.
                pool.shutdown(wait=isinstance(err, Exception), cancel_futures=True)
                raise
            pool.shutdown()
        if greedy:
            for row in out:
                row[1:] = [row[0]] * (n - 1)
        return out


def _detail(err) -> str:
    """The server's own words from an error answer, on one line."""
    body = err.body
    if isinstance(body, Mapping):
        for key in ("detail", "message", "error"):
            value = body.get(key)
            if isinstance(value, Mapping):
                value = value.get("message", value)
            if value:
                return " ".join(str(value).split())[:300]
    text = getattr(err.response, "text", "") or err.message or ""
    return " ".join(str(text).split())[:300]


def _cause(err) -> str:
    cause = err.__cause__ or err.__context__
    return type(cause).__name__ if cause is not None else type(err).__name__


def _retry_after(err) -> float | None:
    """The ``Retry-After`` seconds of a 429/503 answer, if it gives them as a number."""
    try:
        value = float(err.response.headers.get("retry-after", ""))
    except (TypeError, ValueError, AttributeError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


@contextlib.contextmanager
def transformers_server(model: str, *, port: int | None = None, device: str = "cpu",
                        dtype: str = "float32", threads: int | None = None,
                        startup_timeout: float = 180.0,
                        log_path: str | os.PathLike | None = None,
                        extra_args: Sequence[str] = ()) -> Iterator[str]:
    """Run ``transformers serve`` on ``model`` (a local folder) on 127.0.0.1 for a ``with``
    block; yields its base URL (``http://127.0.0.1:<port>/v1``) once ``/health`` answers, and
    stops the server (SIGTERM, then SIGKILL) when the block ends.

    For tests, benchmarks and trying a collector on one machine; ``transformers[serving]`` must
    be installed. ``port=None`` takes a free one; ``threads`` caps the server's CPU threads
    (``OMP_NUM_THREADS``: 1 suits a toy model, whose cost is per-token overhead, and keeps a
    busy machine from oversubscribing its cores); ``log_path`` keeps the server's output (a
    temporary file otherwise, quoted in the error when it does not start).
    """
    import subprocess
    import sys
    import tempfile
    import urllib.error
    import urllib.request

    if port is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--device", device, "--dtype", dtype,
           "--log-level", "warning", *extra_args]
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log = stack.enter_context(tempfile.TemporaryFile("w+"))
        else:
            log = stack.enter_context(open(log_path, "w+"))
        env = dict(os.environ)
        if threads is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(int(threads))
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read()[-2000:]
                    why = f"exited with status {proc.returncode}" if proc.poll() is not None \
                        else f"did not answer /health within {startup_timeout:g} s"
                    raise RuntimeError(f"transformers serve {why}: {' '.join(cmd)}\n{tail}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                        break
                except (urllib.error.URLError, OSError):
                    time.sleep(0.25)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
