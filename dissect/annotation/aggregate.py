"""Aggregate annotators' answers into one label per unit: votes, precision, agreement."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from ..taxonomy import DEFAULT_TYPES

#: Columns of ``annotations_raw.csv``: one row per answer of one annotator about one unit.
RAW_COLUMNS = [
    "layer",
    "unit",
    "label",
    "category",
    "n_shown",
    "n_mismatch",
    "precision",
    "worker",
    "assignment",
    "format",
    "file",
    "line",
]
#: Columns that make an answer the same answer (the file it came from does not).
ANSWER_KEY = ["worker", "assignment", "layer", "unit", "label", "category", "precision"]
#: Columns of the aggregated crowd labels.
LABEL_COLUMNS = ["layer", "unit", "label", "category", "precision", "n_annotators", "agreement"]


def normalise_label(text: str) -> str:
    """Fold spelling variants of one label together: case, spaces, simple plurals.

    The last word loses a plural ending: ``skies`` -> ``sky``, ``boxes`` -> ``box``,
    ``benches`` -> ``bench``, ``cars`` -> ``car``; words ending in ``ss``, ``us`` or ``is``
    (``grass``, ``bus``, ``iris``) keep theirs.

    Examples
    --------
    >>> normalise_label("  Blue   SKIES ")
    'blue sky'
    """
    words = str(text).lower().split()
    if not words:
        return ""
    last = words[-1]
    if last.endswith("ies") and len(last) > 4:
        last = last[:-3] + "y"
    elif re.search(r"(ss|sh|ch|x|z)es$", last):
        last = last[:-2]
    elif last.endswith("s") and not re.search(r"(ss|us|is)$", last) and len(last) > 3:
        last = last[:-1]
    return " ".join([*words[:-1], last])


def dedupe_answers(raw: pd.DataFrame) -> pd.DataFrame:
    """Keep the first of answers that agree on every column of :data:`ANSWER_KEY`."""
    key = raw[ANSWER_KEY].astype(str)
    return raw.loc[~key.duplicated(keep="first")].reset_index(drop=True)


def aggregate_answers(raw: pd.DataFrame) -> pd.DataFrame:
    """One label per unit from all its annotators' answers.

    Parameters
    ----------
    raw : DataFrame
        Answers with :data:`RAW_COLUMNS` (duplicates already removed, see
        :func:`dedupe_answers`); ``category`` holds type keys.

    Returns
    -------
    DataFrame
        :data:`LABEL_COLUMNS`, one row per unit, sorted by layer and unit:

        - ``label``: the most frequent normalised label (:func:`normalise_label`); ties go to
          the alphabetically first, so the result does not depend on import order;
        - ``category``: the most frequent type, ties in taxonomy order;
        - ``precision``: mean over annotators of the fraction of shown images they judged to
          show the concept (annotators who gave no precision are left out; empty if none did);
        - ``n_annotators``: how many answers the unit has;
        - ``agreement``: the share of them that gave the winning label.
    """
    rows = []
    order = {key: i for i, key in enumerate(DEFAULT_TYPES)}
    for (layer, unit), answers in raw.groupby(["layer", "unit"], sort=True):
        labels = answers["label"].map(normalise_label)
        counts = labels.value_counts()
        label = min(counts.index[counts == counts.max()])
        types = answers["category"].value_counts()
        category = min(types.index[types == types.max()], key=lambda key: order.get(key, 99))
        precision = pd.to_numeric(answers["precision"], errors="coerce").dropna()
        rows.append(
            {
                "layer": layer,
                "unit": int(unit),
                "label": label,
                "category": category,
                "precision": float(precision.mean()) if len(precision) else np.nan,
                "n_annotators": len(answers),
                "agreement": counts.max() / len(answers),
            }
        )
    return pd.DataFrame(rows, columns=LABEL_COLUMNS)
