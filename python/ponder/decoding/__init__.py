"""Decoding with a draft and a target model: token-level speculative decoding
(:func:`speculative_generate`) and reward-guided speculative decoding (:func:`rsd_generate`);
value-guided step-level beam search (:func:`value_beam_search`, OREO's test-time search);
:func:`num_parameters` gives the parameter counts their FLOP estimates take."""

from ._models import num_parameters
from .rsd import DraftPass, DraftPassScorer, RSDResult, StepScorer, rsd_generate
from .speculative import SpeculativeOutput, speculative_generate
from .value_search import ValueSearchResult, value_beam_search, value_best_of_n

__all__ = [
    "DraftPass",
    "DraftPassScorer",
    "RSDResult",
    "SpeculativeOutput",
    "StepScorer",
    "ValueSearchResult",
    "num_parameters",
    "rsd_generate",
    "speculative_generate",
    "value_beam_search",
    "value_best_of_n",
]
