"""OpenAIGenerator against a scripted OpenAI-compatible server on loopback (stdlib http.server):
retries, timeouts and error messages, round-robin and concurrency, seeds and request shapes, stop
strings, log-probs, configuration from the environment, and a resumed collection that sends no
request twice. No model runs here (see test_openai_server.py for a real server)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("openai")

from ponder.generation import Completion, TextGenerator  # noqa: E402
from ponder.openai_generation import (  # noqa: E402
    GenerationServerError,
    OpenAIGenerator,
    normalise_url,
)


class Tracker:
    """Requests in flight, over one or more servers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0


class FakeServer:
    """``/v1/completions`` and ``/v1/models`` on 127.0.0.1 with a script.

    Each completions request takes the next entry of ``script`` (then ``"ok"`` for ever): an int
    is an error status, ``("sleep", s)`` answers after ``s`` seconds, ``"ok"`` answers at once.
    A completion's text names its prompt, seed and choice (``<prompt>|s<seed>|k<k>\\n\\ntail``);
    ``stop`` and ``logprobs`` (one token per character) are honoured; ``n`` too, unless
    ``ignore_n``. A ``barrier`` (a ``threading.Barrier``, possibly shared by several servers)
    holds the first requests until as many as it waits for are in flight together.
    """

    def __init__(self, script=(), *, models=("fake-model",), ignore_n=False, tracker=None,
                 barrier: threading.Barrier | None = None):
        self.script = list(script)
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.models = list(models)
        self.ignore_n = ignore_n
        self.tracker = tracker or Tracker()
        self.barrier = barrier
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") != "/v1/models":
                    return self._send(404, {"detail": "not found"})
                self._send(200, {"object": "list", "data": [
                    {"id": m, "object": "model", "created": 0, "owned_by": "test"}
                    for m in server.models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.bodies.append(body)
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    step = server.script.pop(0) if server.script else "ok"
                t = server.tracker
                with t.lock:
                    t.now += 1
                    t.most = max(t.most, t.now)
                try:
                    if server.barrier is not None and not server.barrier.broken:
                        try:
                            server.barrier.wait()
                        except threading.BrokenBarrierError:
                            pass
                    if self.path != "/v1/completions":
                        return self._send(404, {"detail": f"no route {self.path}"})
                    if isinstance(step, tuple):
                        threading.Event().wait(step[1])
                    elif isinstance(step, int):
                        payload = {"detail": f"scripted {step}"} if step < 500 else \
                            {"error": {"message": f"scripted {step}"}}
                        return self._send(step, payload,
                                          {"Retry-After": "0"} if step == 429 else None)
                    self._send(200, server.answer(body))
                finally:
                    with t.lock:
                        t.now -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *a: None  # a client that timed out closed the socket
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, body: dict) -> dict:
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        n = 1 if self.ignore_n else body.get("n", 1)
        choices = []
        for p in prompts:
            for k in range(n):
                text = f"{p}|s{body.get('seed')}|k{k}\n\ntail"
                for s in body.get("stop") or ():
                    text = text.split(s)[0]
                lp = None
                if body.get("logprobs") is not None:
                    lp = {"tokens": list(text), "token_logprobs": [-0.5] * len(text),
                          "top_logprobs": None, "text_offset": list(range(len(text)))}
                choices.append({"index": len(choices), "text": text, "finish_reason": "stop",
                                "logprobs": lp})
        return {"id": "x", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": choices}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server():
    servers = []

    def make(*args, **kwargs):
        servers.append(FakeServer(*args, **kwargs))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _gen(url, **kw):
    kw.setdefault("model", "fake-model")
    kw.setdefault("backoff", 0.0)
    return OpenAIGenerator(url, **kw)


def test_retries_5xx_and_429_then_succeeds(server):
    s = server([503, 429, 500])
    with _gen(s.url, max_retries=3) as g:
        assert isinstance(g, TextGenerator)
        out = g.generate(["a"], seed=1)
        assert out == [[f"a|s{s.bodies[-1]['seed']}|k0\n\ntail"]]
        assert g.requests_sent == 4 and len(s.bodies) == 4
        # every attempt is the same request (same seed)
        assert len({json.dumps(b, sort_keys=True) for b in s.bodies}) == 1


def test_timeout_is_retried(server):
    s = server([("sleep", 1.0)])
    with _gen(s.url, timeout=0.2, max_retries=1) as g:
        assert g.generate(["a"], seed=1)[0][0].startswith("a|s")
        assert g.requests_sent == 2


def test_4xx_fails_at_once_naming_the_url_and_status(server):
    s = server([422])
    with _gen(s.url, max_retries=5) as g:
        with pytest.raises(GenerationServerError) as err:
            g.generate(["a"])
    assert err.value.status == 422 and err.value.url == s.url + "/v1"
    assert f"{s.url}/v1/completions answered HTTP 422: scripted 422" in str(err.value)
    assert len(s.bodies) == 1


def test_a_failed_request_stops_the_call(server):
    s = server([422] + [("sleep", 0.2)] * 40)
    with _gen(s.url, concurrency=2) as g:
        with pytest.raises(GenerationServerError, match="HTTP 422"):
            g.generate(["a"], n=40, seed=0)
    assert len(s.bodies) < 40  # the requests not yet started were never sent


def test_gives_up_after_the_retries(server):
    s = server([503] * 10)
    with _gen(s.url, max_retries=2) as g:
        with pytest.raises(GenerationServerError,
                           match=r"failed after 3 attempt\(s\).*HTTP 503: scripted 503"):
            g.generate(["a"])
    assert len(s.bodies) == 3


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with _gen(f"http://127.0.0.1:{port}", max_retries=1) as g:
        with pytest.raises(GenerationServerError, match="connection failed") as err:
            g.generate(["a"])
    assert err.value.status is None and g.requests_sent == 2


def test_round_robin_and_concurrency(server):
    tracker = Tracker()
    # The first four requests are answered only once four are in flight at once.
    barrier = threading.Barrier(4, timeout=20)
    a = server(tracker=tracker, barrier=barrier)
    b = server(tracker=tracker, barrier=barrier)
    with _gen([a.url, b.url + "/v1"], concurrency=4) as g:
        out = g.generate([f"p{i}" for i in range(4)], n=4, seed=list(range(4)))
    assert [len(r) for r in out] == [4] * 4
    assert len(a.bodies) == len(b.bodies) == 8
    assert tracker.most == 4  # as many as allowed, never more


def test_seeds_and_request_shapes(server):
    s = server()
    prompts = ["p0", "p1", "p2"]
    with _gen(s.url, concurrency=3) as g:
        both = g.generate(prompts, n=3, seed=[5, 6, 7])
        # each completion answers its own prompt, in order
        assert all(t.startswith(f"p{i}|") for i, row in enumerate(both) for t in row)
        assert len({t for row in both for t in row}) == 9  # a seed per completion
        alone = [g.generate([p], n=3, seed=[sd])[0] for p, sd in zip(prompts, [5, 6, 7])]
        assert both == alone
        assert g.generate(prompts, n=3, seed=3) == g.generate(prompts, n=3, seed=3)
        s.bodies.clear()
        greedy = g.generate(prompts, n=4, temperature=0)
        assert len(s.bodies) == 3 and all(len(set(r)) == 1 and len(r) == 4 for r in greedy)
        assert all(b["temperature"] == 0 and b["n"] == 1 for b in s.bodies)
    with _gen(s.url, n_per_request=True) as g:
        s.bodies.clear()
        out = g.generate(prompts, n=3, seed=[5, 6, 7], max_new_tokens=9, top_p=0.5)
        assert [b["n"] for b in s.bodies] == [3, 3, 3]
        assert {(b["max_tokens"], b["top_p"]) for b in s.bodies} == {(9, 0.5)}
        seed_of = {b["prompt"]: b["seed"] for b in s.bodies}
        assert [r[2] for r in out] == [f"p{i}|s{seed_of[f'p{i}']}|k2\n\ntail" for i in range(3)]
    with _gen(s.url, prompts_per_request=2) as g:
        s.bodies.clear()
        out = g.generate(prompts, n=2)  # unseeded: prompts batched, no seed sent
        assert sorted(len(b["prompt"]) if isinstance(b["prompt"], list) else 1
                      for b in s.bodies) == [1, 1, 2, 2]
        assert all("seed" not in b for b in s.bodies)
        assert all(t.startswith(f"p{i}|sNone") for i, row in enumerate(out) for t in row)
        s.bodies.clear()
        g.generate(prompts, n=2, seed=[1, 2, 3])  # seeded: one prompt a request
        assert all(isinstance(b["prompt"], str) for b in s.bodies) and len(s.bodies) == 6


def test_a_server_that_ignores_n_is_reported(server):
    s = server(ignore_n=True)
    with _gen(s.url, n_per_request=True) as g:
        with pytest.raises(GenerationServerError, match="1 completions for 1 prompt.*ignore n"):
            g.generate(["a"], n=2, seed=0)


def test_stop_strings_and_logprobs(server):
    s = server()
    with _gen(s.url) as g:
        out = g.generate(["ab"], n=1, seed=1, stop=["|k"])
        assert s.bodies[-1]["stop"] == ["|k"] and out[0][0] == f"ab|s{s.bodies[-1]['seed']}"
    with _gen(s.url, send_stop=False) as g:
        out = g.generate(["ab"], n=2, seed=1, stop=["|k"], logprobs=True)
        assert all("stop" not in b and b["logprobs"] == 1 for b in s.bodies[-2:])
        assert set(out[0]) == {f"ab|s{b['seed']}" for b in s.bodies[-2:]}  # either order
        c = out[0][1]
        assert isinstance(c, Completion)
        # cut here at the stop string: the tokens (characters) before it are kept
        assert "".join(c.tokens) == c and c.token_logprobs == (-0.5,) * len(c)
        assert json.loads(json.dumps(out)) == [[str(t) for t in out[0]]]


def test_configuration_from_the_environment(server, monkeypatch):
    s = server(models=["only-one"])
    monkeypatch.setenv("PONDER_SERVER_URL", f"{s.url}, ")
    monkeypatch.setenv("PONDER_SERVER_KEY", "sekret")
    monkeypatch.delenv("PONDER_SERVER_MODEL", raising=False)
    with OpenAIGenerator(extra_body={"generation_config": "{}"}) as g:
        assert g.model == "only-one" and g.base_urls == [s.url + "/v1"]
        g.generate(["a"])
    assert s.bodies[-1]["model"] == "only-one" and s.bodies[-1]["generation_config"] == "{}"
    assert s.headers[-1]["authorization"] == "Bearer sekret"
    two = server(models=["m1", "m2"])
    with pytest.raises(ValueError, match="serves 2 models .*m1, m2.*PONDER_SERVER_MODEL"):
        OpenAIGenerator(two.url)
    monkeypatch.delenv("PONDER_SERVER_URL")
    with pytest.raises(ValueError, match="PONDER_SERVER_URL"):
        OpenAIGenerator(model="m")


def test_bad_arguments():
    with pytest.raises(ValueError, match="not an http"):
        OpenAIGenerator("ftp://x", model="m")
    with pytest.raises(ValueError, match="concurrency must be an integer >= 1"):
        OpenAIGenerator("http://127.0.0.1:9", model="m", concurrency=0)
    with pytest.raises(ValueError, match="timeout must be > 0"):
        OpenAIGenerator("http://127.0.0.1:9", model="m", timeout=0)
    assert normalise_url("http://h:8000/") == "http://h:8000/v1"
    assert normalise_url("https://h/proxy/v1/") == "https://h/proxy/v1"
    g = OpenAIGenerator("http://127.0.0.1:9", model="m")
    g.close()
    with pytest.raises(ValueError, match="closed"):
        g.generate(["a"])


def test_a_resumed_collection_sends_no_request_twice(server, tmp_path):
    from ponder.rewards.collect import collect_rollouts
    from ponder.toy import Problem, ToyVerifier

    probs = [Problem.from_chain([10 + i, 5, 3], ["+", "-"]) for i in range(3)]
    records = [{"question": p.question, "solution": p.target} for p in probs]
    s = server()
    out = tmp_path / "er.jsonl"
    with _gen(s.url, concurrency=4) as g:
        kw = {"n": 3, "max_new_tokens": 8, "progress": False, "prefixes_per_call": 2}
        first = collect_rollouts(records[:2], g, ToyVerifier(), out, **kw)
        sent = len(s.bodies)
        assert sent == first.prefixes_sampled * 3 and first.written == 2
        again = collect_rollouts(records, g, ToyVerifier(), out, **kw)
        assert again.skipped == 2 and again.written == 1
        assert len(s.bodies) - sent == again.prefixes_sampled * 3 == (len(probs[2].steps)) * 3


def test_completion_is_a_str_with_its_tokens():
    from ponder.generation import truncate_at_stop

    c = Completion("ab\n\ncd", ["a", "b\n", "\ncd"], [-1.0, -2.0, -3.0])
    assert c == "ab\n\ncd" and isinstance(c, str) and c.tokens == ("a", "b\n", "\ncd")
    cut = truncate_at_stop(c, ["\n\n"])  # the cut falls inside "b\n": that token is kept
    assert cut == "ab" and cut.tokens == ("a", "b\n") and cut.token_logprobs == (-1.0, -2.0)
    assert truncate_at_stop(c, ["zz"]) is c
    import pickle

    back = pickle.loads(pickle.dumps(c))
    assert back == c and back.token_logprobs == c.token_logprobs
    with pytest.raises(ValueError, match="3 tokens but 2 log-probs"):
        Completion("abc", ["a", "b", "c"], [0.0, 0.0])


def test_the_command_samples_from_a_server(server, tmp_path, capsys):
    from ponder.cli import main

    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"question": "Q: 20+3=?", "solution": "20+3=23\n\nAnswer: 23"})
                   + "\n")
    out = tmp_path / "er.jsonl"
    base = ["prm", "collect", "--input", str(inp), "--output", str(out), "--n", "3", "--quiet"]
    s = server()
    assert main([*base, "--server", s.url, "--model", "fake-model", "--concurrency", "2",
                 "--server-extra", '{"top_k": 5}']) == 0
    assert "1 solutions written" in capsys.readouterr().out
    assert len(s.bodies) == 3 and {b["top_k"] for b in s.bodies} == {5}
    assert {b["model"] for b in s.bodies} == {"fake-model"}
    assert [len(o) for o in json.loads(out.read_text())["outcomes"]] == [3, 1]

    def error_of(argv) -> str:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        return err[-1]

    base[base.index(str(out))] = str(tmp_path / "new.jsonl")
    failing = server([404])
    line = error_of([*base, "--server", failing.url, "--model", "m"])
    assert line.startswith("ponder prm collect: error: ") and "HTTP 404" in line
    assert f"{failing.url}/v1/completions" in line
    assert "--model needs --server" in error_of([*base, "--model", "m"])
    assert "--server: " in error_of([*base, "--server", "ftp://x"])
    assert "--server-extra: " in error_of([*base, "--server", s.url, "--server-extra", "[1]"])
