"""The one matplotlib set-up: the Agg backend (no display on training machines) and figures saved atomically."""

from __future__ import annotations

import os
from typing import Any

from ds_kronos.atomic import atomic_file


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 110) -> None:
    """Lay out, write through a temporary sibling (same suffix, so the format is inferred) and close ``fig``."""
    plt = pyplot()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
