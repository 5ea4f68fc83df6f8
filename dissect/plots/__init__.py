"""Matplotlib figures, one module per stage; every function returns a Figure (never shows it).

``dissect.plots.semantics`` (types per layer, detectors, concepts), ``dissect.plots.units`` (top
images of units), ``dissect.plots.receptive_field`` (occlusion maps and sizes); ``save_figure``
writes any of them as a PNG. Submodules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULES = {"ablation", "compare", "figure", "receptive_field", "semantics", "units"}


def __getattr__(name: str) -> Any:
    if name in ("save_figure", "plain"):
        return getattr(importlib.import_module(".figure", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
