"""ponder's kernels, one module per op family (see DESIGN.md, "The op contract").

- :mod:`ponder.ops.langevin`: fused ULA/SGLD, MALA, underdamped Langevin and SPS proximal steps.
"""

from . import langevin

__all__ = ["langevin"]
