"""Aggregate annotators' answers into one label per unit: votes, precision, agreement."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from ..taxonomy import DEFAULT_TYPES

#: Columns of ``annotations_raw.csv``: one row per answer of one annotator about one unit.
#: ``n_shown`` / ``n_mismatch`` count the unit's own images (sentinels left out);
#: ``n_sentinels`` / ``sentinels_kept`` the sentinel images shown and those not marked as
#: mismatching (empty where the answer file cannot tell, e.g. a plain CSV of precisions).
RAW_COLUMNS = [
    "layer",
    "unit",
    "label",
    "category",
    "n_shown",
    "n_mismatch",
    "precision",
    "n_sentinels",
    "sentinels_kept",
    "worker",
    "assignment",
    "format",
    "file",
    "line",
]
#: Numeric columns of ``annotations_raw.csv`` that may be empty.
NUMERIC_COLUMNS = ["n_shown", "n_mismatch", "precision", "n_sentinels", "sentinels_kept"]
#: Columns of the aggregated crowd labels.
LABEL_COLUMNS = ["layer", "unit", "label", "category", "precision", "n_annotators", "agreement"]
#: Columns of ``annotators.csv``.
ANNOTATOR_COLUMNS = [
    "worker",
    "n_answers",
    "n_sentinels",
    "sentinels_kept",
    "catch_rate",
    "n_dropped",
    "weight",
    "flagged",
]


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


def _text(column: pd.Series) -> pd.Series:
    return column.fillna("").astype(str).str.strip()


def dedupe_answers(raw: pd.DataFrame) -> pd.DataFrame:
    """Remove true duplicates only: every other answer row is a vote.

    Two rows are the same answer when they have the same assignment id in the same format
    (the first is kept: an assignment cannot change), or the same named annotator (``worker``)
    for the same unit (the last is kept: a revised answer replaces the earlier one). Rows with
    neither are never merged, however alike their answers.
    """
    raw = raw.reset_index(drop=True)
    assignment = _text(raw["assignment"])
    same_assignment = pd.Series(False, index=raw.index)
    has_id = assignment != ""
    same_assignment[has_id] = pd.DataFrame(
        {"format": _text(raw["format"])[has_id], "assignment": assignment[has_id]}
    ).duplicated(keep="first")
    raw = raw.loc[~same_assignment].reset_index(drop=True)
    worker = _text(raw["worker"])
    named = worker != ""
    same_task = pd.Series(False, index=raw.index)
    same_task[named] = pd.DataFrame(
        {
            "worker": worker[named],
            "layer": raw["layer"][named].astype(str),
            "unit": raw["unit"][named].astype(int),
        }
    ).duplicated(keep="last")
    return raw.loc[~same_task].reset_index(drop=True)


def answer_weights(raw: pd.DataFrame) -> pd.Series:
    """The weight of every answer in the vote, from the sentinel images it was shown.

    The rule: an answer that kept (did not mark as not matching) any sentinel of its task is
    dropped (weight 0), as the paper's workers were asked to revise such answers; every other
    answer of a named annotator weighs the annotator's catch rate, the share of all sentinels
    shown to them, over all their answers, that they marked. Anonymous answers that kept no
    sentinel, and the answers of annotators never shown one, weigh 1.

    Returns
    -------
    Series
        Weights in [0, 1], aligned with ``raw``.
    """
    shown = pd.to_numeric(raw["n_sentinels"], errors="coerce").fillna(0)
    kept = pd.to_numeric(raw["sentinels_kept"], errors="coerce").fillna(0)
    worker = _text(raw["worker"])
    named = worker != ""
    totals = pd.DataFrame({"worker": worker, "shown": shown, "kept": kept})[named]
    sums = totals.groupby("worker")[["shown", "kept"]].sum()
    rate = (1 - sums["kept"] / sums["shown"]).where(sums["shown"] > 0, 1.0)
    weight = worker.map(rate).where(named, 1.0).astype(float)
    return weight.where(kept == 0, 0.0)


def annotator_table(raw: pd.DataFrame) -> pd.DataFrame:
    """Per named annotator: sentinels shown and kept, catch rate, weight (``annotators.csv``).

    ``flagged`` marks annotators who kept at least one sentinel; ``n_dropped`` counts their
    answers left out of the vote (see :func:`answer_weights`), ``weight`` is what each of their
    other answers weighs.
    """
    worker = _text(raw["worker"])
    frame = pd.DataFrame(
        {
            "worker": worker,
            "shown": pd.to_numeric(raw["n_sentinels"], errors="coerce").fillna(0),
            "kept": pd.to_numeric(raw["sentinels_kept"], errors="coerce").fillna(0),
            "dropped": answer_weights(raw) == 0,
        }
    )[worker != ""]
    rows = []
    for name, answers in frame.groupby("worker", sort=True):
        shown, kept = int(answers["shown"].sum()), int(answers["kept"].sum())
        rate = 1 - kept / shown if shown else np.nan
        rows.append(
            {
                "worker": name,
                "n_answers": len(answers),
                "n_sentinels": shown,
                "sentinels_kept": kept,
                "catch_rate": rate,
                "n_dropped": int(answers["dropped"].sum()),
                "weight": 1.0 if np.isnan(rate) else rate,
                "flagged": kept > 0,
            }
        )
    return pd.DataFrame(rows, columns=ANNOTATOR_COLUMNS)


def _best(scores: dict[str, float], rank) -> str:
    """The key with the highest score (rounded, so summation order cannot matter); ties by rank."""
    top = max(round(value, 9) for value in scores.values())
    return min((key for key, value in scores.items() if round(value, 9) == top), key=rank)


def _sums(keys: pd.Series, weights: pd.Series) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for key, weight in zip(keys, weights, strict=True):
        sums.setdefault(key, []).append(float(weight))
    return {key: math.fsum(values) for key, values in sums.items()}


def aggregate_answers(raw: pd.DataFrame) -> pd.DataFrame:
    """One label per unit from all its annotators' answers.

    Every answer votes with its weight (:func:`answer_weights`: 0 for an answer that kept a
    sentinel image, else its annotator's sentinel catch rate, 1 without sentinels).

    Parameters
    ----------
    raw : DataFrame
        Answers with :data:`RAW_COLUMNS` (duplicates already removed, see
        :func:`dedupe_answers`); ``category`` holds type keys.

    Returns
    -------
    DataFrame
        :data:`LABEL_COLUMNS`, one row per unit with an answer of positive weight, sorted by
        layer and unit:

        - ``label``: the normalised label (:func:`normalise_label`) with the most weight; ties
          go to the alphabetically first, so the result does not depend on import order;
        - ``category``: the type with the most weight among the answers that gave the winning
          label, ties in taxonomy order;
        - ``precision``: the weighted mean, over the answers that gave the winning label, of
          the fraction of the unit's own images (sentinels left out) they judged to show the
          concept (answers without a precision are left out; empty if none had one);
        - ``n_annotators``: how many answers counted (weight above 0);
        - ``agreement``: the share of their weight that went to the winning label.
    """
    rows = []
    order = {key: i for i, key in enumerate(DEFAULT_TYPES)}
    weighted = raw.assign(_weight=answer_weights(raw).to_numpy())
    weighted = weighted[weighted["_weight"] > 0]
    for (layer, unit), answers in weighted.groupby(["layer", "unit"], sort=True):
        labels = answers["label"].map(normalise_label)
        votes = _sums(labels, answers["_weight"])
        label = _best(votes, rank=lambda key: key)
        winners = answers[(labels == label).to_numpy()]
        types = _sums(winners["category"], winners["_weight"])
        category = _best(types, rank=lambda key: (order.get(key, 99), key))
        precision = pd.to_numeric(winners["precision"], errors="coerce")
        scored = precision.notna()
        weights = winners["_weight"][scored]
        rows.append(
            {
                "layer": layer,
                "unit": int(unit),
                "label": label,
                "category": category,
                "precision": float(np.average(precision[scored], weights=weights))
                if scored.any()
                else np.nan,
                "n_annotators": len(answers),
                "agreement": votes[label] / math.fsum(votes.values()),
            }
        )
    return pd.DataFrame(rows, columns=LABEL_COLUMNS)
