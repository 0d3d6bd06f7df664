"""The TextGenerator protocol's transformers backend: shapes, seeds, stop strings, greedy, errors,
and the caller's random generators left alone."""

import pytest
import torch
from ponder.generation import Completion, TextGenerator, TransformersGenerator

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def gen():
    from ponder.toy import load_toy_model

    model, tok = load_toy_model("draft")
    return TransformersGenerator(model, tok, batch_size=5)


def test_shapes_seeds_and_stop(gen):
    assert isinstance(gen, TextGenerator)
    prompts = ["Q: 12+34-5=?\n\n", "Q: 7+1=?\n\n", "Q: 50-8+9=?\n\n"]
    a = gen.generate(prompts, n=4, max_new_tokens=40, temperature=1.0, seed=3)
    assert [len(x) for x in a] == [4, 4, 4] and all(isinstance(t, str) for x in a for t in x)
    assert gen.generate(prompts, n=4, max_new_tokens=40, temperature=1.0, seed=3) == a
    # A stop string cuts each completion before its first occurrence.
    cut = gen.generate(prompts, n=4, max_new_tokens=40, temperature=1.0, seed=3, stop=["\n\n"])
    assert cut == [[t.split("\n\n")[0] for t in x] for x in a]
    # Greedy: all n completions agree, and equal the toy's own greedy decoding.
    from ponder.toy.models import generate_solutions

    g = gen.generate(prompts[:1], n=3, max_new_tokens=40, temperature=0)
    assert len(set(g[0])) == 1
    assert g[0][0] == generate_solutions(gen.model, gen.tokenizer, prompts[:1],
                                         max_new_tokens=40)[0]


def test_per_prompt_seeds_do_not_depend_on_the_other_prompts(gen):
    prompts = ["Q: 12+34-5=?\n\n", "Q: 7+1=?\n\n", "Q: 50-8+9=?\n\n"]
    both = gen.generate(prompts, n=3, max_new_tokens=24, temperature=1.0, seed=[5, 6, 7])
    alone = [gen.generate([p], n=3, max_new_tokens=24, temperature=1.0, seed=[s])[0]
             for p, s in zip(prompts, [5, 6, 7])]
    assert both == alone
    assert gen.generate(prompts[1:], n=3, max_new_tokens=24, temperature=1.0,
                        seed=[6, 7]) == both[1:]
    with pytest.raises(ValueError, match="one int per prompt"):
        gen.generate(prompts, seed=[1, 2])


def test_errors(gen):
    with pytest.raises(TypeError):
        gen.generate("Q: 1+1=?\n\n")
    with pytest.raises(ValueError, match="n must be"):
        gen.generate(["Q: 1+1=?\n\n"], n=0)
    with pytest.raises(ValueError, match="temperature"):
        gen.generate(["Q: 1+1=?\n\n"], temperature=-1.0)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite temperature"):
            gen.generate(["Q: 1+1=?\n\n"], temperature=bad)
    with pytest.raises(ValueError, match="batch_size"):
        TransformersGenerator(gen.model, gen.tokenizer, batch_size=0)

    class TextOnly(TextGenerator):  # a backend with _sample only: no log-probs
        def _sample(self, flat, **options):
            return ["x"] * len(flat)

    assert TextOnly().generate(["a", "b"], n=2) == [["x", "x"], ["x", "x"]]
    with pytest.raises(ValueError, match="TextOnly does not return log-probs"):
        TextOnly().generate(["Q: 1+1=?\n\n"], logprobs=True)
    with pytest.raises(TypeError, match="stop must be a sequence"):
        gen.generate(["Q: 1+1=?\n\n"], stop="\n")



def test_seeded_sampling_leaves_the_callers_generator_alone(gen):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        expected = torch.rand(3)
        torch.manual_seed(11)
        gen.generate(["Q: 7+1=?\n\n"], n=2, max_new_tokens=8, temperature=1.0, seed=3)
        assert torch.equal(torch.rand(3), expected)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_seeded_sampling_on_cuda(gen):
    """The caller's CUDA generator is left alone (``torch.manual_seed`` in the sampling loop
    reset it), and a model on the GPU samples reproducibly from the seed."""
    prompts = ["Q: 12+34-5=?\n\n", "Q: 7+1=?\n\n"]
    kw = {"n": 2, "max_new_tokens": 16, "temperature": 1.0, "seed": 3}
    cuda = TransformersGenerator(gen.model.to("cuda"), gen.tokenizer, batch_size=gen.batch_size)
    try:
        for g in (gen, cuda):
            with torch.random.fork_rng(devices=[0]):
                torch.cuda.manual_seed(5)
                expected = torch.rand(3, device="cuda")
                torch.cuda.manual_seed(5)
                first = g.generate(prompts, **kw)
                assert torch.equal(torch.rand(3, device="cuda"), expected)
            assert g.generate(prompts, **kw) == first
    finally:
        gen.model.to("cpu")


def test_logprobs_are_the_models_own(gen):
    """With logprobs=True each completion carries its tokens and log p(token | prefix) under the
    raw logits: equal to a teacher-forced forward pass over prompt + completion."""
    prompts = ["Q: 12+34-5=?\n\n", "Q: 7+1=?\n\n"]
    plain = gen.generate(prompts, n=2, max_new_tokens=20, temperature=1.0, seed=[3, 4])
    out = gen.generate(prompts, n=2, max_new_tokens=20, temperature=1.0, seed=[3, 4],
                       logprobs=True)
    assert out == plain  # the same samples, with their log-probs
    tok = gen.tokenizer
    for p, row in zip(prompts, out):
        for c in row:
            assert isinstance(c, Completion) and "".join(c.tokens) == c
            ids = tok(p + c, return_tensors="pt")["input_ids"]
            start = tok(p, return_tensors="pt")["input_ids"].shape[1]
            with torch.no_grad():
                lp = torch.log_softmax(gen.model(ids).logits[0].float(), -1)
            want = lp[start - 1:-1].gather(1, ids[0, start:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(c.token_logprobs), want, atol=1e-4,
                                       rtol=1e-4)
    cut = gen.generate(prompts[:1], max_new_tokens=20, temperature=0, stop=["="],
                       logprobs=True)[0][0]
    assert "".join(cut.tokens) == cut and "=" not in cut
