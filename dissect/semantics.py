"""Per-layer statistics of what the units detect (``dissect stats``).

Types come from a :class:`~dissect.taxonomy.Taxonomy`. Statistics read ``labels.csv`` (see
:mod:`dissect.labels`): a unit counts as a *detector* when its crowd precision reaches
``min_precision`` (crowd labels) or its IoU reaches ``min_iou`` (automatic labels) and, when
``max_p`` is given, its permutation p-value is at most ``max_p`` (see
:mod:`dissect.iou.significance`); rows without the score their source needs never count. A label's
type comes from its dataset category (``concept_category``) where it has one, else from its
``category`` (the type a crowd worker chose), so a ``--mapping`` means the same in every command.
Where crowd answers were imported, the agreement between annotators of each layer (Fleiss' kappa,
:mod:`dissect.annotation.agreement`) is written beside them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .annotation.agreement import layer_agreement
from .annotation.store import read_raw
from .config import DetectorRule
from .directory import AGREEMENT, CONCEPTS, LAYER_TYPES
from .dissection import Dissection
from .errors import DissectError
from .io import write_csv
from .labels import read_labels
from .lock import writes
from .taxonomy import DEFAULT_TAXONOMY, Taxonomy

#: Per-layer inter-annotator agreement, written where crowd answers were imported.
AGREEMENT_FILE = AGREEMENT


def label_types(labels: pd.DataFrame, taxonomy: Taxonomy = DEFAULT_TAXONOMY) -> list[str | None]:
    """The type key of every row of a labels table: of its ``concept_category`` where it has
    one (automatic labels), else of its ``category``; None where the taxonomy does not know it."""
    category = labels["category"]
    if "concept_category" in labels:
        dataset = labels["concept_category"]
        known = dataset.notna() & (dataset.astype(str).str.strip() != "")
        category = dataset.where(known, category)
    return taxonomy.map_categories(category.tolist())


def _numbers(labels: pd.DataFrame, column: str) -> pd.Series:
    """A column as numbers (NaN where empty or missing)."""
    if column not in labels:
        return pd.Series(float("nan"), index=labels.index)
    return pd.to_numeric(labels[column], errors="coerce")


def detectors(labels: pd.DataFrame, rule: DetectorRule | None = None, **loose: Any) -> pd.DataFrame:
    """The rows of a labels table that count as detectors, with their semantic type.

    Parameters
    ----------
    labels : DataFrame
        A labels table (``labels.csv``): ``layer``, ``unit``, ``label``, ``category``,
        ``precision``, ``iou``, ``source``.
    rule : DetectorRule, optional
        Crowd labels count when their precision is at least ``min_precision``, automatic
        (``iou``) labels when their IoU is at least ``min_iou``, with ``max_p`` their
        ``p_value`` at most it, and with ``fdr`` their ``q_value`` (Benjamini-Hochberg over the
        layer's units) at most it, which keeps the expected share of false detectors at most
        ``fdr`` (rows without a p- or q-value then never count); the rule's taxonomy maps each
        row's ``concept_category`` (else its ``category``) onto a type key. Default:
        :class:`~dissect.config.DetectorRule`'s defaults.
    **loose
        ``min_precision``, ``min_iou``, ``taxonomy``, ``max_p``, ``fdr``: replace the rule's
        value.

    Returns
    -------
    DataFrame
        The detector rows with an added ``type`` column; rows with an empty label or a category
        the taxonomy does not know are left out.
    """
    if labels.empty:
        return labels.assign(type=pd.Series(dtype=object))
    rule = (rule or DetectorRule()).replace(**loose)
    precision, iou, p_value = (_numbers(labels, name) for name in ("precision", "iou", "p_value"))
    automatic = (labels["source"] == "iou") & (iou >= rule.min_iou)
    if rule.max_p is not None:
        automatic &= p_value <= rule.max_p
    if rule.fdr is not None:
        automatic &= _numbers(labels, "q_value") <= rule.fdr
    passes = ((labels["source"] == "crowd") & (precision >= rule.min_precision)) | automatic
    typed = labels.assign(type=label_types(labels, rule.types()))
    has_label = typed["label"].notna() & (typed["label"].astype(str).str.strip() != "")
    return typed[passes & has_label & typed["type"].notna()].reset_index(drop=True)


def layer_type_table(
    labels: pd.DataFrame,
    layers: Sequence[str] | None = None,
    n_units: Mapping[str, int] | None = None,
    *,
    rule: DetectorRule | None = None,
    **loose: Any,
) -> pd.DataFrame:
    """Units per semantic type in every layer (``layer_types.csv``).

    Parameters
    ----------
    labels : DataFrame
        A labels table, see :func:`detectors`.
    layers : sequence of str, optional
        Layers in display order (default: those in ``labels``, in order of appearance).
    n_units : mapping of str to int, optional
        Units per layer; the denominator of ``fraction`` (default: the labelled units of the
        layer).
    rule, **loose
        See :func:`detectors`.

    Returns
    -------
    DataFrame
        ``layer,category,n_units,fraction,unique_concepts``: one row per layer and type (zeros
        included), ``category`` the type key; ``n_units`` detectors of that type, ``fraction``
        their share of the layer's units, ``unique_concepts`` the distinct labels among them.
    """
    layers = list(dict.fromkeys(labels["layer"])) if layers is None else list(layers)
    rule = (rule or DetectorRule()).replace(**loose)
    found = detectors(labels, rule)
    rows = []
    for layer in layers:
        in_layer = found[found["layer"] == layer]
        total = (n_units or {}).get(layer, int((labels["layer"] == layer).sum()))
        for key in rule.types().keys:
            of_type = in_layer[in_layer["type"] == key]
            rows.append(
                {
                    "layer": layer,
                    "category": key,
                    "n_units": len(of_type),
                    "fraction": len(of_type) / total if total else 0.0,
                    "unique_concepts": of_type["label"].nunique(),
                }
            )
    return pd.DataFrame(
        rows, columns=["layer", "category", "n_units", "fraction", "unique_concepts"]
    )


def concept_table(
    labels: pd.DataFrame, *, rule: DetectorRule | None = None, **loose: Any
) -> pd.DataFrame:
    """Detector units per concept and layer (``concepts.csv``); options as :func:`detectors`.

    Returns
    -------
    DataFrame
        ``layer,category,label,n_units``, most units first within each layer (ties by label).
    """
    found = detectors(labels, rule, **loose)
    columns = ["layer", "category", "label", "n_units"]
    if found.empty:
        return pd.DataFrame(columns=columns)
    order = {layer: i for i, layer in enumerate(dict.fromkeys(labels["layer"]))}
    table = (
        found.groupby(["layer", "type", "label"], sort=False)
        .size()
        .reset_index(name="n_units")
        .rename(columns={"type": "category"})
    )
    table["_order"] = table["layer"].map(order)
    table = table.sort_values(["_order", "n_units", "label"], ascending=[True, False, True])
    return table[columns].reset_index(drop=True)


def object_of(label: str, objects: set[str] | frozenset[str]) -> str:
    """The object a part label belongs to (``car wheel`` -> ``car``), or the label itself.

    Parameters
    ----------
    label : str
        A concept name; parts are named ``<object> <part>`` or ``<object>-<part>``.
    objects : set of str
        The object class names of the data.
    """
    if label in objects:
        return label
    for name in sorted(objects, key=len, reverse=True):
        if label.startswith(f"{name} ") or label.startswith(f"{name}-"):
            return name
    return label


@writes("directory")
def write_statistics(
    directory: str | Path, *, rule: DetectorRule | None = None, **loose: Any
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Compute and write ``layer_types.csv`` and ``concepts.csv`` of a dissection directory.

    With imported crowd answers (``annotations_raw.csv``) it also writes ``layer_agreement.csv``
    (see :func:`dissect.annotation.agreement.layer_agreement`), and removes one left from
    earlier answers otherwise.

    Parameters
    ----------
    directory : path-like
        A dissection directory with ``labels.csv`` (from ``dissect autolabel`` or imported crowd
        annotations).
    rule, **loose
        Which labels count as detectors, see :func:`detectors`.

    Returns
    -------
    (DataFrame, DataFrame)
        The layer-type table and the concept table, as written.
    """
    dissection = Dissection(directory)
    labels = read_labels(dissection.directory)
    if labels.empty:
        raise DissectError(
            f"{str(dissection.directory)!r} has no unit labels yet; label units first with "
            "dissect autolabel DIR (needs DATA with concept masks) or by importing annotations."
        )
    counts = {layer: dissection.n_units(layer) for layer in dissection.layers}
    layers = dissection.layers + [
        layer for layer in dict.fromkeys(labels["layer"]) if layer not in counts
    ]
    rule = (rule or DetectorRule()).replace(**loose)
    types = layer_type_table(labels, layers, counts, rule=rule)
    concepts = concept_table(labels, rule=rule)
    write_csv(dissection.directory / LAYER_TYPES, types)
    write_csv(dissection.directory / CONCEPTS, concepts)
    raw = read_raw(dissection)
    agreement = dissection.directory / AGREEMENT_FILE
    if len(raw):
        write_csv(agreement, layer_agreement(raw, layers))
    else:
        agreement.unlink(missing_ok=True)
    return types, concepts
