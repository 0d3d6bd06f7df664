"""Decoding with a draft and a target model: token-level speculative decoding
(:func:`speculative_generate`) and reward-guided speculative decoding (:func:`rsd_generate`)."""

from .speculative import SpeculativeOutput, speculative_generate

__all__ = ["SpeculativeOutput", "speculative_generate"]
