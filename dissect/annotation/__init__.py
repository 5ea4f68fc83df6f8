"""Crowd annotation of units: export segmented top images, import and aggregate the answers.

- :func:`export_annotation` writes ``DIR/annotation/`` for Amazon Mechanical Turk, Label Studio
  or an offline HTML page (``dissect export``);
- :func:`import_answers` reads MTurk batch results, Label Studio JSON exports or plain CSVs,
  keeps every answer in ``annotations_raw.csv`` and writes the aggregated crowd labels
  (``dissect import``);
- :func:`aggregate_answers` and :func:`normalise_label` are the voting rules.
"""

from .aggregate import aggregate_answers, normalise_label
from .export import export_annotation
from .store import import_answers, read_raw

__all__ = [
    "aggregate_answers",
    "export_annotation",
    "import_answers",
    "normalise_label",
    "read_raw",
]
