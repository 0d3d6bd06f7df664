"""ponder's kernels, one module per op family (see docs/design.md, "The op contract").

- :mod:`ponder.ops.lm_head`: LM-head training quantities from hidden states, chunked over tokens
  and vocabulary (token log-probs, KL to a reference, top-k teacher, top-k distillation).
- :mod:`ponder.ops.langevin`: fused ULA/SGLD, MALA, underdamped Langevin and SPS proximal steps.
- :mod:`ponder.ops.prm`: batched PRM step scoring (two-label or value head) from the hidden states
  at the step positions only, with min / last / product / mean aggregates and a training path.
- :mod:`ponder.ops.speculative`: speculative sampling's token acceptance and RSD's step acceptance.
- :mod:`ponder.ops.think`: ThinK channel scores / selection / compaction and pruned decode attention.
"""

from . import langevin, lm_head, prm, speculative, think

__all__ = ["langevin", "lm_head", "prm", "speculative", "think"]
