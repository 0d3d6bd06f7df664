"""ponder's kernels, one module per op family (see DESIGN.md, "The op contract").

- :mod:`ponder.ops.langevin`: fused ULA/SGLD, MALA, underdamped Langevin and SPS proximal steps.
- :mod:`ponder.ops.speculative`: speculative sampling's token acceptance and RSD's step acceptance.
"""

from . import langevin, speculative

__all__ = ["langevin", "speculative"]
