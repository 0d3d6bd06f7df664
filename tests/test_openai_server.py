"""OpenAIGenerator against a real server: ``transformers serve`` on 127.0.0.1 with the toy draft
model (fp32, CPU), compared with the in-process TransformersGenerator on the same weights.

- greedy completions are equal, character for character, through the generator, the ER-PRM
  collector and ``ponder prm collect --server``;
- sampled completions follow the model's distribution: 100 seeded one-token samples at
  temperature 1.5 pass Pearson's chi-square goodness-of-fit test against the in-process model's
  exact next-token probabilities (categories with an expected count under 5 pooled) at
  p >= 0.001. The seeds are fixed, so the outcome does not change from run to run; the test
  catches a server that ignores the temperature or samples greedily (p ~ 1e-30), not a small
  error in the temperature.

The server is started once for the module and stopped at its end. It needs transformers' serving
extra (``pip install 'transformers[serving]'``), with a ``/v1/completions`` endpoint.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("transformers.cli.serving.completion",
                    reason="this transformers' `serve` has no /v1/completions")

import torch  # noqa: E402
from ponder.generation import TransformersGenerator  # noqa: E402
from ponder.openai_generation import OpenAIGenerator, transformers_server  # noqa: E402

PROMPTS = ["Q: 12+34-5=?\n\n", "Q: 7+1=?\n\n", "Q: 50-8+9=?\n\n"]
# transformers serve samples only when the model's generation config (do_sample=False for the
# toy models) or the request says so; top_k=0 as TransformersGenerator (no top-k cut).
SAMPLE = {"generation_config": json.dumps({"do_sample": True, "top_k": 0})}


@pytest.fixture(scope="module")
def toy():
    """(the draft model's folder, an in-process generator on it), on one CPU thread: a model
    this small gains nothing from more, and a busy machine loses much to oversubscription."""
    from ponder.toy import load_toy_model
    from ponder.toy.models import default_weights_dir

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tok = load_toy_model("draft")
        yield str(default_weights_dir() / "draft"), TransformersGenerator(model, tok)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def url(toy):
    with transformers_server(toy[0], threads=1) as base:
        yield base


@pytest.fixture
def server_gen(url, toy):
    # The toy tokenizer is one transformers' stop-string criteria cannot read: stop strings are
    # applied here only.
    with OpenAIGenerator(url, toy[0], concurrency=4, send_stop=False, extra_body=SAMPLE) as g:
        yield g


def test_greedy_completions_equal_the_in_process_ones(server_gen, toy):
    kw = {"n": 2, "max_new_tokens": 32, "temperature": 0.0, "stop": ["\n\nAnswer"]}
    got = server_gen.generate(PROMPTS, **kw)
    assert got == toy[1].generate(PROMPTS, **kw)
    assert server_gen.requests_sent == len(PROMPTS)  # greedy: one request a prompt


def test_sampled_tokens_follow_the_models_distribution(server_gen, toy):
    from scipy.stats import chisquare

    prompt, temperature, draws = "Q: 12+34-5=?\n\n12+34=", 1.5, 100
    model, tok = toy[1].model, toy[1].tokenizer
    with torch.no_grad():
        logits = model(**tok(prompt, return_tensors="pt")).logits[0, -1]
    probs = torch.softmax(logits.double() / temperature, -1).tolist()
    exact: dict[str, float] = {}  # completion text -> probability (special tokens decode to "")
    for token_id, p in enumerate(probs):
        text = tok.decode([token_id], skip_special_tokens=True)
        exact[text] = exact.get(text, 0.0) + p
    out = server_gen.generate([prompt], n=draws, max_new_tokens=1, temperature=temperature,
                              seed=[7])[0]
    assert len(set(out)) > 1  # sampled, not greedy
    expected = sorted(exact.items(), key=lambda kv: -kv[1])
    cells, pooled = [], []
    for text, p in expected:
        (cells if p * draws >= 5 else pooled).append(text)
    observed = [sum(t == c for t in out) for c in cells] + [sum(t in pooled for t in out)]
    want = [exact[c] * draws for c in cells] + [sum(exact[c] for c in pooled) * draws]
    assert len(cells) >= 2 and sum(observed) == draws
    assert chisquare(observed, want).pvalue >= 1e-3, (observed, want)


def test_a_collection_through_the_server_equals_the_in_process_one(url, toy, tmp_path):
    from ponder.cli import main
    from ponder.rewards.collect import collect_rollouts
    from ponder.toy import ToyVerifier

    records = [{"question": "Q: 12+34-5=?", "solution": "12+34=46\n\n46-5=41\n\nAnswer: 41"},
               {"question": "Q: 20+3=?", "solution": "20+3=24\n\nAnswer: 24"}]
    kw = {"n": 2, "max_new_tokens": 24, "temperature": 0.0, "progress": False}
    rows = {}
    with OpenAIGenerator(url, concurrency=4, send_stop=False) as g:  # the model: the only one
        for name, gen in (("server", g), ("local", toy[1])):
            out = tmp_path / f"{name}.jsonl"
            collect_rollouts(records, gen, ToyVerifier(), out, **kw)
            rows[name] = out.read_text()
    assert rows["server"] == rows["local"]

    # The command, sampling (temperature 1): records written, then a resume with nothing to do.
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(records[1]) + "\n")
    er = tmp_path / "cli.jsonl"
    argv = ["prm", "collect", "--input", str(inp), "--output", str(er), "--n", "2",
            "--max-new-tokens", "16", "--quiet", "--server", url, "--model", toy[0],
            "--server-extra", json.dumps(SAMPLE)]
    assert main(argv) == 0
    (row,) = [json.loads(line) for line in er.read_text().splitlines()]
    assert [len(o) for o in row["outcomes"]] == [2, 1] and row["temperature"] == 1.0
    assert main(argv) == 0
