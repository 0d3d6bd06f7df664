"""Multi-step arithmetic problems with step-by-step solutions, a seeded split and a verifier.

The text format (every character is in :data:`ponder.toy.tokenizer.ALPHABET`, one token each)::

    Q: 12+34-5=?            <- Problem.question
                            <- (blank line)
    12+34=46                <- Problem.steps[0]
                            <- (blank line: steps are separated by "\\n\\n")
    46-5=41                 <- Problem.steps[1]

    Answer: 41              <- the final line

- ``Problem.prompt`` is the question followed by ``"\\n\\n"``: ``"Q: 12+34-5=?\\n\\n"``;
- ``Problem.target`` (= ``Problem.solution``) is the steps and the answer line joined by
  ``"\\n\\n"``: ``"12+34=46\\n\\n46-5=41\\n\\nAnswer: 41"``. It carries no end-of-sequence
  marker: append the tokenizer's ``eos_token`` when training a language model on it;
- ``Problem.text`` is ``prompt + target``.

A question is a chain evaluated strictly **left to right**, one operator per step, like a pocket
calculator (``"Q: 2+3*4=?"`` is ``(2+3)*4 = 20``; there is no operator precedence). Operands are
non-negative integers; running values and the answer may be negative (``"12-34=-22"``), and since
the right operand of a step is never negative, ``-22-5=-27`` reads without ambiguity. Each step is
``<running value><op><operand>=<result>``, the first running value being the first operand.

Everything is deterministic given the seed (Python's ``random.Random``, whose integer sequences are
stable across Python versions).
"""

from __future__ import annotations

import hashlib
import numbers
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from ..validation import check_int

__all__ = [
    "ANSWER_PREFIX",
    "CORRUPTIONS",
    "OPERATORS",
    "STEP_SEPARATOR",
    "ArithmeticConfig",
    "Problem",
    "Splits",
    "check_steps",
    "corrupt",
    "extract_answer",
    "make_problems",
    "parse_question",
    "split",
    "verify",
]

STEP_SEPARATOR = "\n\n"
ANSWER_PREFIX = "Answer: "
OPERATORS = ("+", "-", "*")

_APPLY = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}

# One step: running value (may be negative), operator, non-negative operand, result. Spaces are
# tolerated around each part so that a step a model writes as "12 + 34 = 46" still parses.
_STEP_RE = re.compile(r"\s*([+-]?\d+)\s*([-+*])\s*(\d+)\s*=\s*([+-]?\d+)\s*")
# The question: "Q: 12+34-5=?"; the "Q:" and "=?" are optional in parse_question.
_QUESTION_RE = re.compile(r"\s*(?:Q:)?\s*(\d+)((?:\s*[-+*]\s*\d+)+)\s*(?:=\s*\??)?\s*")
_TERM_RE = re.compile(r"\s*([-+*])\s*(\d+)")
# The number after "Answer:"; refused when it continues as a decimal or a fraction ("41.5",
# "41/2"), accepted when followed by anything else (a newline, junk, a sentence-ending ".").
_ANSWER_NUMBER_RE = re.compile(r"[ \t]*([+-]?\d+)(?![.,/]?\d)")


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


@dataclass
class Problem:
    """One arithmetic problem and its step-by-step solution (see the module docstring for the
    format).

    Attributes
    ----------
    question : str
        ``"Q: 12+34-5=?"``.
    steps : list[str]
        ``["12+34=46", "46-5=41"]``: one step per operator.
    answer : int
        ``41``.
    operands : tuple[int, ...]
        ``(12, 34, 5)``: one more than there are operators.
    ops : tuple[str, ...]
        ``("+", "-")``.
    """

    question: str
    steps: list[str]
    answer: int
    operands: tuple[int, ...]
    ops: tuple[str, ...]

    @classmethod
    def from_chain(cls, operands: Sequence[int], ops: Sequence[str]) -> Problem:
        """The problem for a chain ``operands[0] ops[0] operands[1] ...`` (left to right)."""
        operands = tuple(int(x) for x in operands)
        ops = tuple(ops)
        if len(ops) < 1 or len(operands) != len(ops) + 1:
            raise ValueError(
                f"Problem.from_chain: need k >= 1 operators and k + 1 operands, got "
                f"{len(ops)} operators and {len(operands)} operands"
            )
        if any(op not in _APPLY for op in ops):
            raise ValueError(f"Problem.from_chain: operators must be in {OPERATORS}, got {ops}")
        if any(x < 0 for x in operands):
            raise ValueError(f"Problem.from_chain: operands must be >= 0, got {operands}")
        question = "Q: " + str(operands[0]) + "".join(
            op + str(x) for op, x in zip(ops, operands[1:])
        ) + "=?"
        steps, answer = _steps_from(operands[0], ops, operands[1:])
        return cls(question, steps, answer, operands, ops)

    @classmethod
    def from_question(cls, question: str) -> Problem:
        """The problem (with its solution) for a question such as ``"Q: 12+34-5=?"``."""
        return cls.from_chain(*parse_question(question))

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def solution(self) -> str:
        """``"12+34=46\\n\\n46-5=41\\n\\nAnswer: 41"``."""
        return STEP_SEPARATOR.join([*self.steps, f"{ANSWER_PREFIX}{self.answer}"])

    @property
    def prompt(self) -> str:
        """What a language model is given: ``"Q: 12+34-5=?\\n\\n"``."""
        return self.question + STEP_SEPARATOR

    @property
    def target(self) -> str:
        """What a language model should write after the prompt (= :attr:`solution`; no EOS)."""
        return self.solution

    @property
    def text(self) -> str:
        """``prompt + target``: one training document."""
        return self.prompt + self.target


def _steps_from(start: int, ops: Sequence[str], rights: Sequence[int]) -> tuple[list[str], int]:
    """The step strings of a chain from ``start``, and its final value."""
    steps, value = [], start
    for op, x in zip(ops, rights):
        new = _APPLY[op](value, x)
        steps.append(f"{value}{op}{x}={new}")
        value = new
    return steps, value


def parse_question(question: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """``"Q: 12+34-5=?"`` -> ``((12, 34, 5), ("+", "-"))``.

    The ``"Q:"`` prefix and the ``"=?"`` suffix are optional; anything else is a ValueError.
    """
    m = _QUESTION_RE.fullmatch(question)
    if m is None:
        raise ValueError(
            f"parse_question: expected a question like 'Q: 12+34-5=?', got {question!r}"
        )
    terms = _TERM_RE.findall(m.group(2))
    return (int(m.group(1)), *(int(x) for _, x in terms)), tuple(op for op, _ in terms)


def _operand_range(digits: int) -> tuple[int, int]:
    # "2 digits" is 10..99 (a real 2-digit number); one digit includes 0.
    return (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1


def _check_seed(fn: str, seed: object, name: str = "seed") -> int:
    # None would mean "from the system clock": never silently irreproducible.
    return check_int(fn, name, seed, minimum=None)


def _check_ops(fn: str, ops: str | Sequence[str]) -> tuple[str, ...]:
    ops = tuple(dict.fromkeys(ops))  # "+-" or ["+", "-"]; duplicates would skew the draw
    if not ops or any(op not in _APPLY for op in ops):
        raise ValueError(f"{fn}: ops must be a non-empty subset of {OPERATORS}, got {ops}")
    return ops


def make_problems(
    n: int,
    *,
    seed: int,
    min_steps: int = 1,
    max_steps: int = 3,
    digits: int = 2,
    ops: str | Sequence[str] = "+-",
    mul_digits: int = 1,
) -> list[Problem]:
    """``n`` distinct arithmetic problems, drawn deterministically from ``seed``.

    Parameters
    ----------
    n : int
        How many problems; their questions are all different.
    seed : int
        Same seed and knobs -> the same list.
    min_steps, max_steps : int
        The number of steps (operators) of each problem, uniform in ``[min_steps, max_steps]``.
    digits : int
        Operand size: every operand of ``+`` and ``-`` (and the first operand) has exactly this
        many digits (``2`` -> 10..99; ``1`` -> 0..9).
    ops : str or sequence of str
        The operators to draw from, uniformly: any non-empty subset of ``"+-*"``.
    mul_digits : int
        Size of the right operand of ``*`` (same rule as ``digits``); small by default so that
        the numbers stay short.

    Raises
    ------
    ValueError
        If ``n`` distinct problems cannot be drawn with these knobs (the space is too small).
    """
    fn = "make_problems"
    n = check_int(fn, "n", n, 0)
    min_steps = check_int(fn, "min_steps", min_steps, 1)
    max_steps = check_int(fn, "max_steps", max_steps, min_steps)
    digits = check_int(fn, "digits", digits, 1)
    mul_digits = check_int(fn, "mul_digits", mul_digits, 1)
    ops = _check_ops(fn, ops)
    seed = _check_seed(fn, seed)

    ranges = {op: _operand_range(mul_digits if op == "*" else digits) for op in ops}
    first = _operand_range(digits)
    # The number of distinct questions: a first operand, then (operator, operand) k times.
    per_step = sum(hi - lo + 1 for lo, hi in ranges.values())
    space = sum((first[1] - first[0] + 1) * per_step**k for k in range(min_steps, max_steps + 1))
    if n > space:
        raise ValueError(
            f"{fn}: asked for {n} distinct problems, but these knobs allow only {space}; "
            "raise digits or max_steps"
        )

    rng = random.Random(seed)
    seen: set[tuple[tuple[int, ...], tuple[str, ...]]] = set()
    problems: list[Problem] = []
    # Rejection of duplicates; the cap turns a near-exhausted space (e.g. many 1-step problems
    # of 1-digit numbers) into an error instead of a long loop.
    attempts = 50 * n + 1000
    while len(problems) < n:
        if attempts == 0:
            raise ValueError(
                f"{fn}: could not draw {n} distinct problems (got {len(problems)}); the space of "
                f"{space} questions is nearly exhausted at some step count: raise digits or "
                "min_steps, or lower n"
            )
        attempts -= 1
        k = rng.randint(min_steps, max_steps)
        chain_ops = tuple(rng.choice(ops) for _ in range(k))
        operands = (rng.randint(*first), *(rng.randint(*ranges[op]) for op in chain_ops))
        if (operands, chain_ops) in seen:
            continue
        seen.add((operands, chain_ops))
        problems.append(Problem.from_chain(operands, chain_ops))
    return problems


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArithmeticConfig:
    """The knobs of :func:`make_problems`, as one value (``split(config)`` draws and splits)."""

    n: int
    seed: int = 0
    min_steps: int = 1
    max_steps: int = 3
    digits: int = 2
    ops: str = "+-"
    mul_digits: int = 1

    def make(self) -> list[Problem]:
        return make_problems(
            self.n, seed=self.seed, min_steps=self.min_steps, max_steps=self.max_steps,
            digits=self.digits, ops=self.ops, mul_digits=self.mul_digits,
        )


class Splits(NamedTuple):
    train: list[Problem]
    validation: list[Problem]
    test: list[Problem]


def _unit_hash(seed: int, question: str) -> float:
    digest = hashlib.blake2b(f"{seed}\x00{question}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def split(
    source: Sequence[Problem] | ArithmeticConfig,
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> Splits:
    """Split problems into train / validation / test by a seeded hash of their question.

    Each question goes to the split its hash ``blake2b(seed, question)`` falls in, so:
    no question is in two splits (duplicates in ``source`` land together); the result does not
    depend on the order or the number of problems (a question that is in the test split of 1 000
    problems is in the test split of 100 000: growing a data set never leaks test questions into
    training); the same seed always gives the same splits. The sizes follow ``fractions`` up to
    binomial noise (about ``sqrt(n f (1 - f))``), not exactly.

    Parameters
    ----------
    source : sequence of Problem, or ArithmeticConfig
        The problems, or a config whose :meth:`ArithmeticConfig.make` draws them.
    seed : int
        The split's seed (independent of the generation seed).
    fractions : (float, float, float)
        Expected shares of train, validation and test: non-negative, summing to 1.

    Returns
    -------
    Splits
        ``(train, validation, test)``, each in the order of ``source``.
    """
    if isinstance(source, ArithmeticConfig):
        source = source.make()
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(not f >= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(
            f"split: fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    seed = _check_seed("split", seed)
    train_end, validation_end = fractions[0], fractions[0] + fractions[1]
    out: Splits = Splits([], [], [])
    for problem in source:
        u = _unit_hash(seed, problem.question)
        part = out.train if u < train_end else out.validation if u < validation_end else out.test
        part.append(problem)
    return out


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def extract_answer(text: str) -> int | None:
    """The integer after the **first** ``"Answer:"`` in ``text``, or None.

    The first answer line wins: the solution format ends there, so anything a model writes after
    it (a second ``"Answer:"``, a new question) is past its end. If the first ``"Answer:"`` is
    not followed by an integer (``"Answer: ?"``, ``"Answer: 41.5"``), the result is None even if
    a later one is. Negative (``"Answer: -27"``) and explicitly positive answers are read;
    spaces or tabs may separate the colon and the number, and text may follow it.
    """
    at = text.find("Answer:")
    if at < 0:
        return None
    m = _ANSWER_NUMBER_RE.match(text, at + len("Answer:"))
    return int(m.group(1)) if m else None


def _expected_answer(fn: str, problem: Problem | str | int) -> int:
    if isinstance(problem, Problem):
        return problem.answer
    if isinstance(problem, str):
        return Problem.from_question(problem).answer
    if isinstance(problem, numbers.Integral) and not isinstance(problem, bool):
        return int(problem)
    raise TypeError(
        f"{fn}: expected a Problem, a question string or an int answer, "
        f"got {type(problem).__name__}"
    )


def verify(problem: Problem | str | int, text: str) -> bool:
    """Whether ``text`` (a model's output) ends its solution with the right answer.

    Parameters
    ----------
    problem : Problem, str or int
        The problem, its question (``"Q: 12+34-5=?"``, solved here) or the expected answer.
    text : str
        Any text: the answer is read by :func:`extract_answer` (the first ``"Answer:"`` wins).
        A missing or malformed answer is False, never an error. The steps are not checked: see
        :func:`check_steps`.
    """
    expected = _expected_answer("verify", problem)
    if not isinstance(text, str):
        raise TypeError(f"verify: text must be a str, got {type(text).__name__}")
    return extract_answer(text) == expected


def _generated_steps(problem: Problem, text: str) -> list[str]:
    """The non-empty chunks of ``text`` before its first ``"Answer:"``, split at blank lines."""
    for prefix in (problem.prompt, problem.question):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    at = text.find("Answer:")
    if at >= 0:
        text = text[:at]
    return [chunk.strip() for chunk in text.split(STEP_SEPARATOR) if chunk.strip()]


def check_steps(problem: Problem, text: str, *, strict: bool = True) -> list[bool]:
    """Judge each step a model wrote for ``problem``: one bool per step, in order.

    The steps are the non-empty chunks of ``text`` separated by blank lines, up to the first
    ``"Answer:"`` (the answer line and whatever follows are not steps; a leading copy of the
    prompt is skipped).

    A step is correct when it parses as ``L<op>R=C`` with ``C == L op R`` and, if ``strict``
    (the default), it is also the right step of this problem at its position: ``op`` and ``R``
    are the problem's operator and operand there, and ``L`` is the result the previous step
    wrote (the first operand for the first step). Each step is judged given the steps before
    it, as written: after a wrong result, a step that carries it forward correctly is correct.
    Unparseable chunks and steps beyond the problem's count are wrong (the latter only if
    ``strict``). With ``strict=False`` only the arithmetic of each step is checked.

    For "first error" labels (every step from the first wrong one on is bad), take
    ``list(itertools.accumulate(flags, operator.and_))``.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"check_steps: problem must be a Problem, got {type(problem).__name__}")
    flags = []
    running = problem.operands[0]
    for i, chunk in enumerate(_generated_steps(problem, text)):
        m = _STEP_RE.fullmatch(chunk)
        if m is None:
            flags.append(False)
            continue
        left, op, right, result = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        ok = result == _APPLY[op](left, right)
        if strict:
            ok = (
                ok and i < problem.n_steps and left == running
                and op == problem.ops[i] and right == problem.operands[i + 1]
            )
        flags.append(ok)
        running = result
    return flags


# --------------------------------------------------------------------------------------------
# Negative examples
# --------------------------------------------------------------------------------------------

CORRUPTIONS = ("result", "operand")


def corrupt(problem: Problem, rng: random.Random | int, *, kind: str = "any") -> str:
    """A wrong solution of ``problem``: one step has an error, and the later steps carry it
    forward correctly, as a model that slipped once would.

    Parameters
    ----------
    problem : Problem
    rng : random.Random or int
        Where the choice of step and error comes from (an int is a seed).
    kind : {"any", "result", "operand"}
        ``"result"``: a step's result is off by 1 to 10 (a slip of arithmetic);
        ``"operand"``: a step uses a wrong operand, with right arithmetic (a copying slip);
        ``"any"``: either, at random.

    Returns
    -------
    str
        A solution text in the format of :attr:`Problem.target` whose final answer is wrong
        (:func:`verify` is False) and where :func:`check_steps` marks exactly the corrupted step
        wrong (an ``"operand"`` error is arithmetically right, so only ``strict`` catches it).
        When no error of the asked kind can change the answer (an ``"operand"`` error in
        ``"Q: 0*5=?"``), the last step gets a ``"result"`` error instead.
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"corrupt: problem must be a Problem, got {type(problem).__name__}")
    if kind not in ("any", *CORRUPTIONS):
        raise ValueError(f"corrupt: kind must be 'any' or one of {CORRUPTIONS}, got {kind!r}")
    if not isinstance(rng, random.Random):
        rng = random.Random(_check_seed("corrupt", rng, "rng (a random.Random or a seed)"))
    ops, rights = problem.ops, problem.operands[1:]

    def attempt() -> tuple[list[str], int]:
        i = rng.randrange(problem.n_steps)
        delta = rng.choice([d for d in range(-10, 11) if d])
        steps, value = _steps_from(problem.operands[0], ops[:i], rights[:i])
        how = kind if kind != "any" else rng.choice(CORRUPTIONS)
        if how == "result":
            wrong = _APPLY[ops[i]](value, rights[i]) + delta
            steps.append(f"{value}{ops[i]}{rights[i]}={wrong}")
        else:
            right = abs(rights[i] + delta)  # operands stay non-negative...
            right = right if right != rights[i] else rights[i] + abs(delta)  # ...and change
            wrong = _APPLY[ops[i]](value, right)
            steps.append(f"{value}{ops[i]}{right}={wrong}")
        rest, final = _steps_from(wrong, ops[i + 1:], rights[i + 1:])
        return steps + rest, final

    # A later "*0" (or an operand error on a 0 * ...) can erase the error from the answer; draw
    # again then. A result error in the last step always changes the answer: the fallback.
    for _ in range(64):
        steps, final = attempt()
        if final != problem.answer:
            break
    else:  # e.g. an "operand" error in "Q: 0*5=?" can never change the answer
        steps, value = _steps_from(problem.operands[0], ops[:-1], rights[:-1])
        final = problem.answer + 1
        steps.append(f"{value}{ops[-1]}{rights[-1]}={final}")
    return STEP_SEPARATOR.join([*steps, f"{ANSWER_PREFIX}{final}"])
