"""Decoding with a draft and a target model: token-level speculative decoding
(:func:`speculative_generate`) and reward-guided speculative decoding (:func:`rsd_generate`);
:func:`num_parameters` gives the parameter counts their FLOP estimates take."""

from ._models import num_parameters
from .rsd import RSDResult, StepScorer, rsd_generate
from .speculative import SpeculativeOutput, speculative_generate

__all__ = [
    "RSDResult",
    "SpeculativeOutput",
    "StepScorer",
    "num_parameters",
    "rsd_generate",
    "speculative_generate",
]
