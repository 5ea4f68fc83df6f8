"""Inter-annotator agreement per layer: Fleiss' kappa over the units' answers.

Kappa compares how often two answers about the same unit agree with how often they would agree
by chance, given how often each category is used in the layer: 1 is perfect agreement, 0 what
chance gives, below 0 worse than chance. It is computed twice per layer, over the normalised
labels and over the six semantic types, from the answers that count in the vote (those that
kept a sentinel image are left out, see :func:`~dissect.annotation.aggregate.answer_weights`;
the others count as one answer each, whatever their weight), over the units with at least two
such answers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .aggregate import answer_weights, normalise_label

#: Columns of ``layer_agreement.csv``.
AGREEMENT_COLUMNS = ["layer", "n_units", "n_answers", "kappa_label", "kappa_type"]


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of a subjects x categories table of answer counts.

    Subjects may have different numbers of answers (the mean pairwise agreement of each
    subject is weighted equally, as in Fleiss, 1971, with ``n_i`` in place of a fixed ``n``);
    subjects with fewer than two answers are left out.

    Parameters
    ----------
    counts : array_like
        (subjects, categories) non-negative integers: how many answers put subject ``i`` in
        category ``j``.

    Returns
    -------
    float
        Kappa; NaN without a subject of two answers, or when every answer is in one category
        (chance agreement is then 1 and kappa undefined).

    Examples
    --------
    >>> round(fleiss_kappa([[2, 0], [0, 2], [1, 1]]), 3)
    0.333
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=1)
    counts, n = counts[n >= 2], n[n >= 2]
    if not len(counts):
        return float("nan")
    agreement = ((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean()
    share = counts.sum(axis=0) / n.sum()
    chance = float((share**2).sum())
    if chance >= 1:
        return float("nan")
    return float((agreement - chance) / (1 - chance))


def layer_agreement(raw: pd.DataFrame, layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Fleiss' kappa of every layer's answers (``layer_agreement.csv``).

    Parameters
    ----------
    raw : DataFrame
        Answers (``annotations_raw.csv``), duplicates removed.
    layers : sequence of str, optional
        Layers in display order (default: order of appearance); layers without answers are
        left out, layers answered but not listed come last.

    Returns
    -------
    DataFrame
        :data:`AGREEMENT_COLUMNS`, one row per layer with answers:
        ``n_units`` the units with at least two counted answers, ``n_answers`` their answers,
        ``kappa_label`` over normalised labels, ``kappa_type`` over semantic types.
    """
    counted = raw[(answer_weights(raw) > 0).to_numpy()]
    counted = counted.assign(label=counted["label"].map(normalise_label))
    rows = []
    answered = dict.fromkeys(counted["layer"])
    listed = [layer for layer in layers or [] if layer in answered]
    for layer in dict.fromkeys([*listed, *answered]):
        answers = counted[counted["layer"] == layer]
        per_unit = answers.groupby("unit")["label"].transform("size")
        answers = answers[(per_unit >= 2).to_numpy()]
        rows.append(
            {
                "layer": layer,
                "n_units": answers["unit"].nunique(),
                "n_answers": len(answers),
                "kappa_label": _kappa(answers, "label"),
                "kappa_type": _kappa(answers, "category"),
            }
        )
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


def _kappa(answers: pd.DataFrame, column: str) -> float:
    if answers.empty:
        return float("nan")
    return fleiss_kappa(pd.crosstab(answers["unit"], answers[column]).to_numpy())
