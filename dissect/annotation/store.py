"""``dissect import``: add answers to ``annotations_raw.csv`` and rebuild the crowd labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..dissection import Dissection
from ..errors import DissectError
from ..io import read_csv, write_csv
from ..labels import write_labels
from ..lock import writes
from .aggregate import (
    NUMERIC_COLUMNS,
    RAW_COLUMNS,
    aggregate_answers,
    annotator_table,
    dedupe_answers,
)
from .importers import read_answers

RAW_FILE = "annotations_raw.csv"
ANNOTATORS_FILE = "annotators.csv"


def read_raw(dissection: Dissection) -> pd.DataFrame:
    """Every answer imported so far (an empty table before the first import)."""
    path = dissection.path(RAW_FILE)
    if not path.is_file():
        return pd.DataFrame(columns=RAW_COLUMNS)
    try:
        raw = read_csv(
            path,
            dtype={"layer": str, "label": str, "worker": str, "assignment": str},
            keep_default_na=False,
            na_values={column: [""] for column in NUMERIC_COLUMNS},
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DissectError(f"{path} is malformed ({error}); restore it from a backup.") from error
    older = [column for column in RAW_COLUMNS if column not in ("n_sentinels", "sentinels_kept")]
    if list(raw.columns) not in (RAW_COLUMNS, older):
        raise DissectError(f"{path} does not have the columns {','.join(RAW_COLUMNS)}.")
    return raw.reindex(columns=RAW_COLUMNS)  # files of older versions had no sentinel columns


@writes("directory")
def import_answers(
    directory: str | Path | Dissection, files: Sequence[str | Path], fmt: str = "auto"
) -> pd.DataFrame:
    """Import answer files, re-aggregate all answers, and write the crowd labels.

    Every file is read and checked before anything is written; ``annotations_raw.csv`` and
    then ``annotators.csv`` (sentinels caught per annotator, see
    :func:`~dissect.annotation.aggregate.annotator_table`) and ``labels_crowd.csv`` /
    ``labels.csv`` (through :func:`dissect.labels.write_labels`) are written atomically. The
    same answer imported twice counts once (see
    :func:`~dissect.annotation.aggregate.dedupe_answers`); answers that kept a sentinel image
    are kept in ``annotations_raw.csv`` but left out of the labels.

    Parameters
    ----------
    directory : path-like or Dissection
        The dissection directory.
    files : sequence of path-like
        MTurk batch results CSVs, Label Studio JSON exports, or plain CSVs
        ``layer,unit,label,category[,precision][,annotator]``.
    fmt : str
        ``auto``, ``mturk``, ``labelstudio`` or ``csv``.

    Returns
    -------
    DataFrame
        The crowd labels: ``layer, unit, label, category, precision, n_annotators, agreement,
        source``, one row per annotated unit.
    """
    dissection = directory if isinstance(directory, Dissection) else Dissection(directory)
    new = pd.DataFrame(read_answers(dissection, files, fmt), columns=RAW_COLUMNS)
    old = read_raw(dissection)
    frames = [frame for frame in (old, new) if len(frame)]
    raw = dedupe_answers(pd.concat(frames, ignore_index=True)) if frames else new
    labels = aggregate_answers(raw).assign(source="crowd")
    write_csv(dissection.path(RAW_FILE), raw)
    write_csv(dissection.path(ANNOTATORS_FILE), annotator_table(raw))
    write_labels(dissection.directory, "crowd", labels)
    return labels
