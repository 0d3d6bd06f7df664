"""ponder.toy.arithmetic: the problem generator, the split, the verifier, the step checker and
the corruptions that make negative examples."""

from __future__ import annotations

import itertools
import math
import operator
import random
import subprocess
import sys

import pytest
from ponder.toy import (
    ALPHABET,
    ArithmeticConfig,
    Problem,
    check_steps,
    corrupt,
    extract_answer,
    make_problems,
    parse_question,
    split,
    verify,
)

# Knob sets that cover every operator, 1-digit (with 0 operands) to 3-digit numbers, and long
# chains; ops="+-*" with 1-digit multipliers also produces "*0" and negative running values.
KNOBS = [
    {},
    {"min_steps": 1, "max_steps": 1, "digits": 1, "ops": "+-*"},  # 300 questions in all
    {"min_steps": 2, "max_steps": 6, "digits": 3, "ops": "+-*"},
    {"min_steps": 1, "max_steps": 4, "digits": 2, "ops": "*", "mul_digits": 2},
]


@pytest.fixture(scope="module", params=range(len(KNOBS)), ids=lambda i: f"knobs{i}")
def problems(request) -> list[Problem]:
    return make_problems(250 if request.param == 1 else 400, seed=request.param,
                         **KNOBS[request.param])


# ---- format --------------------------------------------------------------------------------


def test_the_documented_example():
    p = Problem.from_question("Q: 12+34-5=?")
    assert p.question == "Q: 12+34-5=?"
    assert p.steps == ["12+34=46", "46-5=41"]
    assert p.answer == 41 and p.operands == (12, 34, 5) and p.ops == ("+", "-")
    assert p.n_steps == 2
    assert p.solution == "12+34=46\n\n46-5=41\n\nAnswer: 41"
    assert p.prompt == "Q: 12+34-5=?\n\n"
    assert p.target == p.solution
    assert p.text == "Q: 12+34-5=?\n\n12+34=46\n\n46-5=41\n\nAnswer: 41"


def test_chains_are_evaluated_left_to_right_with_negative_running_values():
    p = Problem.from_question("Q: 2+3*4=?")
    assert p.steps == ["2+3=5", "5*4=20"] and p.answer == 20
    p = Problem.from_chain([12, 34, 5], ["-", "-"])
    assert p.steps == ["12-34=-22", "-22-5=-27"] and p.solution.endswith("Answer: -27")


@pytest.mark.parametrize(
    "question, expected",
    [
        ("Q: 12+34-5=?", ((12, 34, 5), ("+", "-"))),
        ("12+34-5", ((12, 34, 5), ("+", "-"))),
        (" Q: 7 * 0 + 3 = ? ", ((7, 0, 3), ("*", "+"))),
    ],
)
def test_parse_question(question, expected):
    assert parse_question(question) == expected


@pytest.mark.parametrize("question", ["", "Q: 12=?", "Q: -1+2=?", "Q: 1/2=?", "Q: 1+2=3", "1++2"])
def test_parse_question_rejects_what_is_not_a_question(question):
    with pytest.raises(ValueError, match="parse_question"):
        parse_question(question)


def test_from_chain_validates():
    with pytest.raises(ValueError, match="operands"):
        Problem.from_chain([1, 2, 3], ["+"])
    with pytest.raises(ValueError, match="operators"):
        Problem.from_chain([1, 2], ["/"])
    with pytest.raises(ValueError, match=">= 0"):
        Problem.from_chain([1, -2], ["+"])


# ---- generation ----------------------------------------------------------------------------


def test_every_generated_solution_verifies_and_every_step_is_right(problems):
    for p in problems:
        assert verify(p, p.target) and verify(p, p.text) and verify(p.question, p.target)
        assert check_steps(p, p.target) == [True] * p.n_steps
        assert check_steps(p, p.target, strict=False) == [True] * p.n_steps
        assert Problem.from_question(p.question) == p


def test_generated_problems_follow_the_knobs(problems, request):
    knobs = {"min_steps": 1, "max_steps": 3, "digits": 2, "ops": "+-", "mul_digits": 1,
             **KNOBS[request.node.callspec.params["problems"]]}
    assert len({p.question for p in problems}) == len(problems)  # distinct questions
    assert {p.n_steps for p in problems} == set(range(knobs["min_steps"], knobs["max_steps"] + 1))
    assert set(itertools.chain.from_iterable(p.ops for p in problems)) == set(knobs["ops"])
    for p in problems:
        assert set(p.text) <= set(ALPHABET)
        assert len(p.operands) == p.n_steps + 1 and p.steps[-1].endswith(f"={p.answer}")
        for op, x in zip(("+", *p.ops), p.operands):  # the first operand has `digits` digits
            width = knobs["mul_digits"] if op == "*" else knobs["digits"]
            assert len(str(x)) == width


def test_generation_is_deterministic_by_seed():
    a = make_problems(300, seed=7, ops="+-*", max_steps=4)
    assert a == make_problems(300, seed=7, ops="+-*", max_steps=4)
    assert a != make_problems(300, seed=8, ops="+-*", max_steps=4)
    # The first problems do not depend on how many are asked for.
    assert make_problems(50, seed=7, ops="+-*", max_steps=4) == a[:50]


def test_a_space_too_small_is_an_error():
    # 1-digit operands and one "+": 100 distinct questions.
    assert len(make_problems(100, seed=0, min_steps=1, max_steps=1, digits=1, ops="+")) == 100
    with pytest.raises(ValueError, match="only 100"):
        make_problems(101, seed=0, min_steps=1, max_steps=1, digits=1, ops="+")
    # All 1100 one- and two-step questions, though half the draws want one of the 100 one-step.
    assert len(make_problems(1100, seed=0, min_steps=1, max_steps=2, digits=1, ops="+")) == 1100


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"n": -1}, ValueError),
        ({"n": 2.0}, TypeError),
        ({"min_steps": 0}, ValueError),
        ({"min_steps": 3, "max_steps": 2}, ValueError),
        ({"digits": 0}, ValueError),
        ({"ops": ""}, ValueError),
        ({"ops": "+/"}, ValueError),
        ({"seed": None}, TypeError),
    ],
)
def test_make_problems_validates(kwargs, error):
    with pytest.raises(error, match="make_problems|seed"):
        make_problems(**{"n": 3, "seed": 0, **kwargs})


# ---- split ---------------------------------------------------------------------------------


def test_split_is_disjoint_complete_and_in_order():
    problems = make_problems(3000, seed=0)
    parts = split(problems, seed=0)
    questions = [{p.question for p in part} for part in parts]
    for a, b in itertools.combinations(questions, 2):
        assert not a & b
    assert sum(map(len, parts)) == len(problems)
    order = {p.question: i for i, p in enumerate(problems)}
    for part in parts:
        assert [order[p.question] for p in part] == sorted(order[p.question] for p in part)
    # Shares within 4 binomial standard deviations of 0.8 / 0.1 / 0.1.
    for part, f in zip(parts, (0.8, 0.1, 0.1)):
        assert abs(len(part) - f * 3000) < 4 * math.sqrt(3000 * f * (1 - f))


def test_split_is_stable():
    problems = make_problems(2000, seed=1)
    parts = split(problems, seed=3)
    assert split(problems, seed=3) == parts
    assert split(problems[::-1], seed=3) == tuple(part[::-1] for part in parts)
    # Growing the data set never moves a question to another split.
    small = split(problems[:500], seed=3)
    first = {p.question for p in problems[:500]}
    for part, small_part in zip(parts, small):
        assert small_part == [p for p in part if p.question in first]
    assert split(problems, seed=4) != parts
    # Duplicated questions land in the same split.
    doubled = split(problems + problems, seed=3)
    assert all(len(d) == 2 * len(part) for d, part in zip(doubled, parts))


def test_split_takes_a_config_and_fractions():
    config = ArithmeticConfig(n=400, seed=2, max_steps=2)
    assert split(config, seed=1) == split(config.make(), seed=1)
    train, validation, test = split(config, seed=1, fractions=(0.5, 0.0, 0.5))
    assert validation == [] and len(train) + len(test) == 400 and train and test
    for bad in [(0.8, 0.1), (0.8, 0.3, 0.1), (1.1, -0.05, -0.05)]:
        with pytest.raises(ValueError, match="fractions"):
            split(config, fractions=bad)


# ---- verify --------------------------------------------------------------------------------

P = Problem.from_question("Q: 12+34-5=?")  # answer 41
N = Problem.from_question("Q: 12-34-5=?")  # answer -27


@pytest.mark.parametrize(
    "problem, text, expected",
    [
        (P, "Answer: 41", True),
        (P, "Answer:41", True),
        (P, "Answer: \t41", True),
        (P, "Answer: +41", True),
        (P, "Answer: 041", True),  # read as a number
        (P, "12+34=46\n\n46-5=41\n\nAnswer: 41\n\nQ: 1+1=?\n\n", True),  # junk after it
        (P, "Answer: 41.", True),
        (P, "Answer: 41<eos>garbage", True),
        (P, "@@ junk ~~ Answer: 41", True),
        (P, "Answer: 41\n\nAnswer: 40", True),  # several answers: the first one wins
        (P, "Answer: 40\n\nAnswer: 41", False),
        (P, "Answer: ?\n\nAnswer: 41", False),  # the first "Answer:" is malformed
        (P, "Answer: 411", False),
        (P, "Answer: 41.5", False),
        (P, "Answer: 41/2", False),
        (P, "Answer: -41", False),
        (P, "answer: 41", False),
        (P, "41", False),  # no answer line
        (P, "", False),
        (P, "Answer:", False),
        (P, "Answer: \n41", False),
        (N, "Answer: -27", True),
        (N, "Answer: 27", False),
        (N, "Answer: - 27", False),
        ("Q: 12-34-5=?", "Answer: -27", True),
        (-27, "Answer: -27", True),
    ],
)
def test_verify(problem, text, expected):
    assert verify(problem, text) is expected


def test_extract_answer():
    assert extract_answer("x\n\nAnswer: -120\n") == -120
    assert extract_answer("no answer here") is None
    assert extract_answer("Answer: x 12") is None


def test_verify_validates():
    with pytest.raises(TypeError, match="verify"):
        verify(P, None)
    with pytest.raises(TypeError, match="verify"):
        verify(4.0, "Answer: 4")
    with pytest.raises(ValueError, match="parse_question"):
        verify("what is 2+2", "Answer: 4")


# ---- check_steps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, strict, lax",
    [
        ("12+34=46\n\n46-5=41\n\nAnswer: 41", [True, True], [True, True]),
        ("Q: 12+34-5=?\n\n12+34=46\n\n46-5=41\n\nAnswer: 41", [True, True], [True, True]),
        ("12 + 34 = 46\n\n46-5=41", [True, True], [True, True]),  # no answer, spaces
        ("12+34=47\n\n47-5=42\n\nAnswer: 42", [False, True], [False, True]),  # carried forward
        ("12+34=47\n\n46-5=41\n\nAnswer: 41", [False, False], [False, True]),  # wrong left
        ("12+35=47\n\n47-5=42\n\nAnswer: 42", [False, True], [True, True]),  # wrong operand
        ("12-34=-22\n\n-22-5=-27", [False, True], [True, True]),  # wrong operator
        ("12+34=46\n\n46-5=41\n\n41+0=41\n\nAnswer: 41", [True, True, False], [True] * 3),
        ("12+34=46\n\nhmm\n\n46-5=41", [True, False, False], [True, False, True]),
        ("12+34=46\n\n\n\n\n46-5=41\n\nAnswer: 41\n\n1+1=3", [True, True], [True, True]),
        ("Answer: 41", [], []),
        ("", [], []),
    ],
)
def test_check_steps(text, strict, lax):
    assert check_steps(P, text) == strict
    assert check_steps(P, text, strict=False) == lax


def test_check_steps_gives_first_error_labels_by_accumulation():
    flags = check_steps(P, "12+34=47\n\n47-5=42\n\nAnswer: 42")
    assert list(itertools.accumulate(flags, operator.and_)) == [False, False]


# ---- corrupt -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["any", "result", "operand"])
def test_corrupted_solutions_fail_at_exactly_one_step(problems, kind):
    rng = random.Random(0)
    for p in problems:
        text = corrupt(p, rng, kind=kind)
        assert not verify(p, text)
        flags = check_steps(p, text)
        assert len(flags) == p.n_steps and flags.count(False) == 1
        assert set(text) <= set(ALPHABET)
        assert text.count("Answer: ") == 1 and text.endswith(f"Answer: {extract_answer(text)}")


def test_corrupt_kinds_and_determinism():
    p = Problem.from_question("Q: 12+34-5+60=?")
    assert corrupt(p, 5) == corrupt(p, random.Random(5))
    assert len({corrupt(p, seed) for seed in range(30)}) > 10
    for seed in range(30):
        # A result error is an arithmetic slip; an operand error is arithmetically right.
        assert check_steps(p, corrupt(p, seed, kind="result"), strict=False).count(False) == 1
        assert check_steps(p, corrupt(p, seed, kind="operand"), strict=False) == [True] * 3
    # No operand error changes 0*x: the last step gets a result error instead.
    zero = Problem.from_question("Q: 0*5=?")
    assert corrupt(zero, 0, kind="operand") == "0*5=1\n\nAnswer: 1"
    with pytest.raises(ValueError, match="kind"):
        corrupt(p, 0, kind="sign")
    with pytest.raises(TypeError, match="corrupt"):
        corrupt(p.question, 0)


def test_importing_ponder_toy_does_not_import_transformers():
    code = "import sys, ponder.toy; assert 'transformers' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
