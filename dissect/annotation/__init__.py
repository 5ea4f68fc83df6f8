"""Crowd annotation of units: export segmented top images, import and aggregate the answers.

- :func:`export_annotation` writes ``DIR/annotation/`` for Amazon Mechanical Turk, Label Studio
  or an offline HTML page (``dissect export``), with sentinel images of other units mixed into
  every task (:mod:`.sentinels`) and no label the units already have;
- :func:`import_answers` reads MTurk batch results, Label Studio JSON exports or plain CSVs,
  keeps every answer in ``annotations_raw.csv``, scores the sentinels (``annotators.csv``) and
  writes the aggregated crowd labels (``dissect import``);
- :func:`aggregate_answers` and :func:`normalise_label` are the voting rules;
  :func:`layer_agreement` is Fleiss' kappa per layer (``dissect stats``).
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module of this package that defines it (loaded on first use).
_EXPORTS = {
    "aggregate_answers": "aggregate",
    "fleiss_kappa": "agreement",
    "layer_agreement": "agreement",
    "normalise_label": "aggregate",
    "export_annotation": "export",
    "import_answers": "store",
    "read_raw": "store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
