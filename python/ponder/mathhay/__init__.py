"""MathHay: a long-context math benchmark (arXiv 2410.04698), offline by default.

- :mod:`~ponder.mathhay.sandbox`: runs generated ``solve()`` code in a locked-down process.
"""

from .sandbox import SandboxLimits, SandboxResult, SandboxUnavailableError, run_solve

__all__ = ["SandboxLimits", "SandboxResult", "SandboxUnavailableError", "run_solve"]
