"""matplotlib for ponder's figures: imported on first use, with no display, saved in one way.

matplotlib is optional (the ``plot`` extra; the ``demo``, ``bench`` and ``test`` extras include
it): :func:`pyplot` raises an ImportError that names the extra, and :func:`save` writes a PNG,
creating its folder, and frees the figure.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["pyplot", "save"]


def pyplot(what: str):
    """``matplotlib.pyplot`` on the Agg backend (files only, no display); ``what`` names the
    caller in the ImportError when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(f"{what} needs matplotlib: pip install 'ponder[plot]'") from err
    return plt


def save(fig, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG to ``path`` (parent folders created), close it, return the path."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
