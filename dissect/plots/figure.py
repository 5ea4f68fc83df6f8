"""What every plot module shares: :func:`save_figure` writes a figure as a PNG; :func:`plain`
keeps text (labels are data) from being read as mathtext."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from ..io import atomic_path


def save_figure(figure: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``figure`` as a PNG to ``path`` atomically; return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def plain(text: object) -> str:
    """``text`` for a matplotlib label, with ``$`` escaped so it is never read as mathtext."""
    return str(text).replace("$", r"\$")
