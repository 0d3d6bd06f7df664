"""ponder's kernels, one module per op family (see DESIGN.md, "The op contract").

- :mod:`ponder.ops.langevin`: fused ULA/SGLD, MALA, underdamped Langevin and SPS proximal steps.
- :mod:`ponder.ops.think`: ThinK channel scores / selection / compaction and pruned decode attention.
"""

from . import langevin, think

__all__ = ["langevin", "think"]
