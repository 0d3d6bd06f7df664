"""Answer checking: a small ``Verifier`` protocol, math-verify for real math, a registry of
verifiers by name, and splitting solutions into steps.

A verifier is any callable ``verifier(reference, text) -> bool``: ``reference`` is what a data
set stores about the right answer (a gold answer string such as ``"\\boxed{41}"`` or ``"41"``, or
the question itself for the toy world, whose answer is computed) and ``text`` is a model's whole
solution. The collector, best-of-N and the CLI take one by argument, so a project can plug in
its own (unit tests, a code sandbox, an LLM judge). The toy world's verifier
(:class:`ponder.toy.ToyVerifier`) registers itself as ``"toy"`` when ``ponder.toy`` is imported:
the toy world sits above this layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "MathVerifier",
    "Verifier",
    "get_verifier",
    "register_verifier",
    "split_steps",
]


@runtime_checkable
class Verifier(Protocol):
    """``verifier(reference, text) -> bool``: is ``text`` a correct solution?"""

    def __call__(self, reference: Any, text: str) -> bool: ...


def split_steps(solution: str, separator: str = "\n\n") -> list[str]:
    """The steps of ``solution``: its non-empty chunks between ``separator``, stripped.

    ``"12+34=46\\n\\n46-5=41\\n\\nAnswer: 41"`` -> ``["12+34=46", "46-5=41", "Answer: 41"]``
    (the answer line is a step: its score says whether the answer follows). GSM8K-style data
    with one step per line uses ``separator="\\n"``.
    """
    if not isinstance(solution, str):
        raise TypeError(f"split_steps: solution must be a str, got {type(solution).__name__}")
    if not isinstance(separator, str) or not separator:
        raise ValueError(f"split_steps: separator must be a non-empty str, got {separator!r}")
    return [s.strip() for s in solution.split(separator) if s.strip()]


class MathVerifier:
    """math-verify (``pip install math-verify``): parses the gold answer and the last answer of
    ``text`` (``\\boxed{...}``, LaTeX or plain expressions) and checks them for mathematical
    equivalence (``1/2`` equals ``0.5`` and ``\\frac{1}{2}``).

    Parameters
    ----------
    timeout_seconds : int
        math-verify's per-call time limit (it uses signals, so it only applies in the main
        thread; 0 disables it).
    """

    def __init__(self, timeout_seconds: int = 5):
        try:
            import math_verify  # noqa: F401
        except ImportError as err:
            raise ImportError(
                "MathVerifier needs math-verify: pip install 'ponder[rewards]' "
                "(or pip install math-verify)"
            ) from err
        self.timeout_seconds = int(timeout_seconds)

    def __call__(self, reference: Any, text: str) -> bool:
        import threading

        from math_verify import parse, verify

        if not isinstance(text, str):
            raise TypeError(f"MathVerifier: text must be a str, got {type(text).__name__}")
        # math-verify's timeout uses signal.alarm, which only works in the main thread.
        timeout = self.timeout_seconds if threading.current_thread() is threading.main_thread() \
            else None
        gold_text = str(reference)
        if "$" not in gold_text and "\\boxed" not in gold_text:
            gold_text = f"${gold_text}$"  # a bare "41" or "\\frac{1}{2}" parses as math
        kwargs = {} if timeout is None else {"parsing_timeout": timeout}
        gold = parse(gold_text, **kwargs)
        pred = parse(text, **kwargs)
        if not gold or not pred:
            return False
        vkw = {} if timeout is None else {"timeout_seconds": timeout}
        return bool(verify(gold, pred, **vkw))


_VERIFIERS: dict[str, Callable[[], Verifier]] = {"math": MathVerifier}


def register_verifier(name: str, factory: Callable[[], Verifier]) -> None:
    """Make ``get_verifier(name)`` return ``factory()``."""
    _VERIFIERS[name] = factory


def get_verifier(name: str | Verifier) -> Verifier:
    """A verifier by registered name (``"math"`` -> :class:`MathVerifier`; ``"toy"`` once
    ``ponder.toy`` is imported); a callable is returned as it is."""
    if callable(name):
        return name
    if name not in _VERIFIERS:
        raise ValueError(f"get_verifier: unknown verifier {name!r}; known: {sorted(_VERIFIERS)} "
                         "(importing ponder.toy registers 'toy')")
    return _VERIFIERS[name]()
