"""Unit labels from every source, and the merged ``labels.csv`` that later stages read.

Each source writes its own table in the dissection directory (``labels_crowd.csv`` from imported
annotations, ``labels_iou.csv`` from automatic IoU labelling); ``labels.csv`` is rebuilt from them
with one row per unit, where a crowd label wins over an automatic one.

``category`` is the semantic type key (see :mod:`dissect.semantics`); ``concept_category`` is the
category the concept has in its dataset (Broden's ``material``, say), where known. ``segmenter``
names the segmentation network whose predicted masks gave an ``iou`` label (``dissect run --iou
--segmenter``); it is empty for labels from a dataset's own masks and for crowd labels.
``align`` says where the unit maps of an ``iou`` label were placed (``theoretical``, ``resize``
or ``empirical``, see :mod:`dissect.alignment`); empty for crowd labels.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .directory import LABELS, current_run
from .errors import DissectError
from .io import read_csv, write_csv

#: Columns of every labels table.
LABEL_COLUMNS = [
    "layer",
    "unit",
    "label",
    "category",
    "concept_category",
    "precision",
    "iou",
    "p_value",
    "z_score",
    "q_value",
    "n_annotators",
    "agreement",
    "source",
    "segmenter",
    "align",
    "run_id",
]
#: Sources in order of precedence (first wins).
SOURCES = ("crowd", "iou")


def source_path(directory: str | Path, source: str) -> Path:
    """Where the labels of ``source`` are kept."""
    if source not in SOURCES:
        raise ValueError(f"unknown label source {source!r}; expected one of {SOURCES}")
    return Path(directory) / f"labels_{source}.csv"


def write_labels(directory: str | Path, source: str, labels: pd.DataFrame) -> pd.DataFrame:
    """Store the labels of one source and rebuild ``labels.csv``; return the merged table.

    Parameters
    ----------
    directory : path-like
        The dissection directory.
    source : str
        ``crowd`` or ``iou``.
    labels : DataFrame
        One row per unit with (a subset of) :data:`LABEL_COLUMNS`; missing columns are empty.
    """
    table = labels.reindex(columns=LABEL_COLUMNS).assign(source=source)
    table["run_id"] = table["run_id"].astype(object).fillna(current_run(directory))
    write_csv(source_path(directory, source), table)
    return rebuild_labels(directory)


def read_labels(
    directory: str | Path, source: str | None = None, *, check: bool = True
) -> pd.DataFrame:
    """The merged labels (or one source's); an empty table when there are none yet.

    With ``check``, labels recorded for another run than the directory's (``run_id``; see
    :attr:`dissect.dissection.Dissection.run_id`) are refused with a :class:`DissectError`.
    """
    path = Path(directory) / LABELS if source is None else source_path(directory, source)
    if not path.is_file():
        return pd.DataFrame(columns=LABEL_COLUMNS)
    table = read_csv(
        path, keep_default_na=False, na_values=[""], dtype={"layer": str, "run_id": str}
    )
    run = current_run(directory)
    if check and run and "run_id" in table:
        stale = table[table["run_id"].notna() & (table["run_id"] != run)]
        if len(stale):
            sources = ", ".join(sorted(set(stale["source"].astype(str))))
            raise DissectError(
                f"{path.name} in {str(directory)!r} holds {len(stale)} label(s) from run "
                f"{stale['run_id'].iloc[0]} ({sources}), but the directory now holds run {run}; "
                f"label this run again: dissect autolabel {directory} (or dissect import)."
            )
    return table


def rebuild_labels(directory: str | Path) -> pd.DataFrame:
    """Merge every source's labels into ``labels.csv``, one row per unit, by precedence."""
    tables = [read_labels(directory, source, check=False) for source in SOURCES]
    tables = [table for table in tables if len(table)]
    if not tables:
        merged = pd.DataFrame(columns=LABEL_COLUMNS)
    else:
        merged = (
            pd.concat(tables, ignore_index=True)
            .drop_duplicates(subset=["layer", "unit"], keep="first")
            .sort_values(["layer", "unit"], kind="stable")
            .reset_index(drop=True)
        )
    write_csv(Path(directory) / LABELS, merged)
    return merged


def mark_segmenter(
    directory: str | Path, segmenter: str, layers: list[str] | None = None
) -> pd.DataFrame:
    """Record that ``iou`` labels of ``layers`` (all by default) come from predicted masks.

    Sets the ``segmenter`` column of those rows of ``labels_iou.csv`` to ``segmenter`` and
    rebuilds ``labels.csv``; returns the merged table.
    """
    path = source_path(directory, "iou")
    table = read_labels(directory, "iou", check=False).reindex(columns=LABEL_COLUMNS)
    if path.is_file():
        rows = table["layer"].isin(layers) if layers is not None else slice(None)
        table["segmenter"] = table["segmenter"].astype(object)
        table.loc[rows, "segmenter"] = segmenter
        write_csv(path, table)
    return rebuild_labels(directory)


def segmenters(labels: pd.DataFrame) -> list[str]:
    """The segmenters whose predicted masks gave any of ``labels`` (empty: none did)."""
    if "segmenter" not in labels:
        return []
    return sorted({str(name) for name in labels["segmenter"].dropna() if str(name)})
