"""The toy world's BOLT pieces: the long-thought format, the examples, the instruct data."""

import random

from ponder.toy import Problem, check_steps, make_problems, split, verify
from ponder.toy.bolt import (
    TOY_FORMAT,
    ToyInstructSpec,
    _instruct_text,
    toy_builder,
    toy_examples,
    toy_response,
    toy_thought,
)
from ponder.toy.tokenizer import ALPHABET


def test_toy_thought_steps_then_checks():
    p = Problem.from_question("Q: 12+34-5=?")
    assert toy_thought(p) == "12+34=46\n46-5=41\n41+5=46\n46-34=12"
    assert toy_thought(p, check=False) == "12+34=46\n46-5=41"
    text = toy_response(p)
    assert text == "seek\n12+34=46\n46-5=41\n41+5=46\n46-34=12\nseen\nAnswer: 41"
    parsed = TOY_FORMAT.parse(text)
    assert parsed.ok and parsed.solution == "Answer: 41" and verify(p, parsed.solution)
    assert set(text) <= set(ALPHABET)  # the toy tokenizer has every character
    # every check line is right arithmetic and ends back at the first operand
    for prob in make_problems(50, seed=3):
        lines = toy_thought(prob).split("\n")
        steps, checks = lines[:prob.n_steps], lines[prob.n_steps:]
        assert all(check_steps(prob, "\n\n".join(steps)))
        assert all(check_steps(prob, c, strict=False) == [True] for c in checks)
        assert checks[-1].endswith(f"={prob.operands[0]}")


def test_toy_examples_and_prompt():
    ex = toy_examples()
    assert len(ex) == 10 and len({e.query for e in ex}) == 10
    test_questions = {p.question for p in split(make_problems(2000, seed=1)).test}
    assert not test_questions & {e.query for e in ex}
    for e in ex:
        assert verify(e.query, e.solution)
    prompt = toy_builder(2)("Q: 1+2=?")
    assert prompt.endswith("\n\nQ: 1+2=?\n\n") and prompt.count("seek\n") == 2
    assert prompt.startswith("Q: ")


def test_instruct_data_holds_out_the_bolt_delimiters():
    rng = random.Random(0)
    problems = make_problems(300, seed=4)
    spec = ToyInstructSpec(bolt_delimiter_share=0.0)
    kinds = set()
    for _ in range(400):
        prompt, target = _instruct_text(rng, problems, spec)
        assert "seek" not in prompt + target and "seen" not in prompt + target
        shots = prompt.count("Q: ") - 1
        if shots == 0:
            kinds.add("bare")
            assert target.startswith("Answer: ")
        elif target.startswith("Answer: "):
            kinds.add("direct")
        else:
            kinds.add("thought")
            open_word = target.split("\n")[0]
            assert prompt.count(open_word + "\n") >= shots  # the examples show the same format
        q = Problem.from_question(prompt.rsplit("Q: ", 1)[1].split("\n")[0].join(["Q: ", ""]))
        assert verify(q, target)
    assert kinds == {"bare", "direct", "thought"}


def test_instruct_data_can_include_the_bolt_delimiters():
    rng = random.Random(1)
    problems = make_problems(300, seed=4)
    spec = ToyInstructSpec(bolt_delimiter_share=1.0)
    texts = [_instruct_text(rng, problems, spec) for _ in range(100)]
    thought = [(p, t) for p, t in texts if not t.startswith("Answer: ")]
    assert thought and all(t.startswith("seek\n") and "\nseen\n" in t for _, t in thought)
    assert all(TOY_FORMAT.parse(t).ok for _, t in thought)
