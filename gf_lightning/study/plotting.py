"""What every study's figures share: matplotlib without a display (:func:`pyplot`, imported only when a figure is
drawn), one marker per series (:data:`MARKERS`, so that a curve under another still shows), and saving a figure
atomically (:func:`save_atomic`)."""

from __future__ import annotations

from pathlib import Path

#: a marker per series, in order (the sweep's, the paper's and the Burgers figures)
MARKERS = ("o", "s", "^", "v", "D", "P", "h", "<", ">", "*", "p", "d")


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_atomic(fig, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` beside ``path`` and rename it into place (a reader never sees half an image), then close it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    pyplot().close(fig)
    tmp.replace(path)
    return path
