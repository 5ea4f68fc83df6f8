"""Per-layer statistics of what the units detect (``dissect stats``).

Types come from a :class:`~dissect.taxonomy.Taxonomy`. Statistics read ``labels.csv`` (see
:mod:`dissect.labels`): a unit counts as a *detector* when its crowd precision reaches
``min_precision`` (crowd labels) or its IoU reaches ``min_iou`` (automatic labels); rows without
the score their source needs never count. Where crowd answers were imported, the agreement
between annotators of each layer (Fleiss' kappa, :mod:`dissect.annotation.agreement`) is written
beside them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .annotation.agreement import layer_agreement
from .annotation.store import read_raw
from .dissection import Dissection
from .errors import DissectError
from .io import write_csv
from .labels import read_labels
from .taxonomy import DEFAULT_TAXONOMY, MIN_IOU, MIN_PRECISION, Taxonomy

#: Per-layer inter-annotator agreement, written where crowd answers were imported.
AGREEMENT_FILE = "layer_agreement.csv"


def detectors(
    labels: pd.DataFrame,
    min_precision: float = MIN_PRECISION,
    min_iou: float = MIN_IOU,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
) -> pd.DataFrame:
    """The rows of a labels table that count as detectors, with their semantic type.

    Parameters
    ----------
    labels : DataFrame
        A labels table (``labels.csv``): ``layer``, ``unit``, ``label``, ``category``,
        ``precision``, ``iou``, ``source``.
    min_precision : float
        Crowd labels count when their precision is at least this.
    min_iou : float
        Automatic (``iou``) labels count when their IoU is at least this.
    taxonomy : Taxonomy
        Maps each row's ``category`` onto a type key.

    Returns
    -------
    DataFrame
        The detector rows with an added ``type`` column; rows with an empty label or a category
        the taxonomy does not know are left out.
    """
    if labels.empty:
        return labels.assign(type=pd.Series(dtype=object))
    precision = pd.to_numeric(labels["precision"], errors="coerce")
    iou = pd.to_numeric(labels["iou"], errors="coerce")
    passes = ((labels["source"] == "crowd") & (precision >= min_precision)) | (
        (labels["source"] == "iou") & (iou >= min_iou)
    )
    typed = labels.assign(type=taxonomy.map_categories(labels["category"].tolist()))
    has_label = typed["label"].notna() & (typed["label"].astype(str).str.strip() != "")
    return typed[passes & has_label & typed["type"].notna()].reset_index(drop=True)


def layer_type_table(
    labels: pd.DataFrame,
    layers: Sequence[str] | None = None,
    n_units: Mapping[str, int] | None = None,
    *,
    min_precision: float = MIN_PRECISION,
    min_iou: float = MIN_IOU,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
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
    min_precision, min_iou, taxonomy
        See :func:`detectors`.

    Returns
    -------
    DataFrame
        ``layer,category,n_units,fraction,unique_concepts``: one row per layer and type (zeros
        included), ``category`` the type key; ``n_units`` detectors of that type, ``fraction``
        their share of the layer's units, ``unique_concepts`` the distinct labels among them.
    """
    layers = list(dict.fromkeys(labels["layer"])) if layers is None else list(layers)
    found = detectors(labels, min_precision, min_iou, taxonomy)
    rows = []
    for layer in layers:
        in_layer = found[found["layer"] == layer]
        total = (n_units or {}).get(layer, int((labels["layer"] == layer).sum()))
        for key in taxonomy.keys:
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
    labels: pd.DataFrame,
    *,
    min_precision: float = MIN_PRECISION,
    min_iou: float = MIN_IOU,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
) -> pd.DataFrame:
    """Detector units per concept and layer (``concepts.csv``).

    Returns
    -------
    DataFrame
        ``layer,category,label,n_units``, most units first within each layer (ties by label).
    """
    found = detectors(labels, min_precision, min_iou, taxonomy)
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


def write_statistics(
    directory: str | Path,
    *,
    min_precision: float = MIN_PRECISION,
    min_iou: float = MIN_IOU,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
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
    min_precision, min_iou, taxonomy
        See :func:`detectors`.

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
    thresholds = {"min_precision": min_precision, "min_iou": min_iou, "taxonomy": taxonomy}
    types = layer_type_table(labels, layers, counts, **thresholds)
    concepts = concept_table(labels, **thresholds)
    write_csv(dissection.directory / "layer_types.csv", types)
    write_csv(dissection.directory / "concepts.csv", concepts)
    raw = read_raw(dissection)
    agreement = dissection.directory / AGREEMENT_FILE
    if len(raw):
        write_csv(agreement, layer_agreement(raw, layers))
    else:
        agreement.unlink(missing_ok=True)
    return types, concepts
