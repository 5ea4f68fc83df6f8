"""Automatic labels from the IoU counters: each unit's best concept, and the files.

:func:`autolabel` (``dissect autolabel``) runs the IoU pass (:func:`~dissect.iou.counting.
compute_iou`) and writes ``iou/<layer>.npz``, ``iou/concepts.csv``, ``iou/skipped.csv`` and the
``iou`` label source; :func:`read_iou` reads a layer's table back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import distributed
from ..alignment import placements, record_alignment
from ..checkpoint import Checkpoint
from ..config import ALIGN, IoUConfig
from ..directory import (
    IOU,
    IOU_CHECKPOINT,
    IOU_CONCEPTS,
    IOU_SKIPPED,
    keep_run_rows,
    layer_file_name,
    read_table,
)
from ..dissection import Dissection
from ..errors import DissectError
from ..io import read_npz, write_csv, write_npz
from ..labels import read_labels, write_labels
from ..lock import writes
from ..taxonomy import DEFAULT_TAXONOMY, Taxonomy
from .concepts import ConceptIndex
from .counting import compute_iou
from .significance import PermutationNull, benjamini_hochberg, significance
from .tally import IoUStats


def best_concepts(
    iou: np.ndarray, index: ConceptIndex, taxonomy: Taxonomy = DEFAULT_TAXONOMY
) -> pd.DataFrame:
    """The best concept of every unit, as label rows.

    Parameters
    ----------
    iou : ndarray
        (U, C) IoU of every unit with every concept column.
    index : ConceptIndex
        Names and categories of the columns.
    taxonomy : Taxonomy
        Maps the concept's dataset category onto a semantic type key.

    Returns
    -------
    DataFrame
        ``unit,label,category,concept_category,iou,concept``; ties go to the lower column. A unit
        whose best IoU is 0 (a dead unit, never above its threshold T, or one that never meets a
        concept) gets no label: empty ``label``, ``category``, ``concept_category``, ``concept``.
    """
    best = iou.argmax(1)
    rows = index.table.iloc[best]
    live = iou[np.arange(len(iou)), best] > 0
    labelled = pd.DataFrame(
        {
            "unit": np.arange(len(iou)),
            "label": rows["name"].to_numpy(),
            "category": taxonomy.map_categories(rows["category"].tolist()),
            "concept_category": rows["category"].to_numpy(),
            "iou": iou[np.arange(len(iou)), best],
            "concept": rows["number"].to_numpy(),
        }
    )
    blank = ["label", "category", "concept_category", "concept"]
    labelled[blank] = labelled[blank].astype(object)
    labelled.loc[~live, blank] = None
    return labelled


@writes("directory")
def autolabel(
    directory: str | Path | Dissection,
    layers: Sequence[str] | None = None,
    *,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    config: IoUConfig | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Label every unit by its best IoU concept and write the results.

    Writes ``iou/<layer>.npz`` (arrays ``iou``, ``intersection``, ``union`` of shape (U, C), and
    ``null_best`` (P, U) with permutations), ``iou/concepts.csv`` (``column,number,name,category``),
    ``iou/skipped.csv`` (``index,path,reason`` of images left out because they or one of their
    label maps could not be read) and the ``iou`` label source, which
    rebuilds ``labels.csv`` (crowd labels keep precedence; the ``iou`` labels of layers not
    labelled this time are kept).

    Parameters
    ----------
    directory : path-like or Dissection
        The dissection directory.
    layers : sequence of str, optional
        Layers to label (default: all).
    taxonomy : Taxonomy
        Maps dataset categories onto semantic types for the ``category`` column.
    config : IoUConfig, optional
        Batch size, device, workers and permutations (default: :class:`IoUConfig`'s, 19
        permutations).
    **options
        ``resume``, ``model``, ``source``, ``progress``, ``restart``, ``checkpoint``, and
        fields of ``config`` or ``resume`` one by one (``batch_size=``, ``permutations=``,
        ``checkpoint_seconds=``...): see :func:`~dissect.iou.counting.compute_iou`.

    Returns
    -------
    DataFrame
        The ``iou`` labels: ``layer,unit,label,category,concept_category,iou,p_value,z_score,
        q_value,concept`` (``p_value``, ``z_score`` and the layer's Benjamini-Hochberg
        ``q_value`` empty with ``permutations=0``).
    """
    dissection = directory if isinstance(directory, Dissection) else Dissection(directory)
    nulls: dict[str, PermutationNull] = {}
    skipped: list[tuple[int, str]] = []
    config = config or IoUConfig()
    align = options.get("align") or config.align
    stats, index = compute_iou(
        dissection, layers, config=config, nulls=nulls, skipped=skipped, **options
    )
    if distributed.is_main():
        labels = write_outputs(dissection, stats, index, taxonomy, nulls, skipped, align=align)
    distributed.barrier()  # rank 0 has written
    Checkpoint(dissection.directory, {}, distributed.rank(), IOU_CHECKPOINT).remove(
        distributed.world_size()
    )
    if not distributed.is_main():
        labels = read_labels(dissection.directory, "iou")
        labels = labels[labels["layer"].isin(dissection.check_layers(layers))]
    return labels


def write_outputs(
    dissection: Dissection,
    stats: dict[str, IoUStats],
    index: ConceptIndex,
    taxonomy: Taxonomy,
    nulls: dict[str, PermutationNull],
    skipped: Sequence[tuple[int, str]],
    align: str = ALIGN,
) -> pd.DataFrame:
    """Write ``iou/`` (tables, concepts, skipped images) and the ``iou`` label source.

    Parameters
    ----------
    dissection : Dissection
        The directory.
    stats : dict of str to IoUStats
        The counters of every labelled layer.
    index : ConceptIndex
        The concept columns of the counters.
    taxonomy : Taxonomy
        Maps dataset categories onto semantic types.
    nulls : dict of str to PermutationNull
        The permutation null of each layer (empty: no p-values).
    skipped : sequence of (int, str)
        Images left out (index, reason), by index.
    align : str
        How the maps were placed (the labels' ``align`` column; recorded in the manifest).

    Returns
    -------
    DataFrame
        The new ``iou`` labels of the layers in ``stats``.
    """
    paths = dissection.images().set_index("index")["path"]
    write_csv(
        dissection.path(IOU, IOU_SKIPPED),
        pd.DataFrame(
            {
                "index": [image for image, _ in skipped],
                "path": [str(paths.get(image, "")) for image, _ in skipped],
                "reason": [reason for _, reason in skipped],
            }
        ),
    )
    write_csv(
        dissection.path(IOU, IOU_CONCEPTS),
        index.table.rename_axis("column").reset_index(),
    )
    tables = []
    for layer, counts in stats.items():
        iou = counts.iou()
        labels = best_concepts(iou, index, taxonomy)
        arrays = {}
        if layer in nulls:
            arrays["null_best"] = nulls[layer].best()
            labels["p_value"], labels["z_score"] = significance(labels["iou"], arrays["null_best"])
            labels["q_value"] = benjamini_hochberg(labels["p_value"])  # FDR over the layer's units
        write_npz(
            dissection.path(IOU, f"{layer_file_name(layer)}.npz"),
            iou=iou,
            intersection=counts.intersection.cpu().numpy(),
            union=counts.union().cpu().numpy(),
            run_id=np.array(dissection.run_id),
            **arrays,
        )
        tables.append(labels.assign(layer=layer, align=align))
    labels = pd.concat(tables, ignore_index=True)
    labels = labels[["layer", *[c for c in labels.columns if c != "layer"]]]
    earlier = read_labels(dissection.directory, "iou", check=False)
    earlier = earlier[~earlier["layer"].isin(list(stats))]  # layers labelled in an earlier run
    earlier = keep_run_rows(earlier, dissection.run_id)  # another pass's labels are dropped
    write_labels(dissection.directory, "iou", pd.concat([earlier, labels], ignore_index=True))
    record_alignment(dissection, "iou", align, placements(dissection, list(stats), align))
    return labels


def read_iou(directory: str | Path | Dissection, layer: str) -> pd.DataFrame:
    """The unit x concept IoU table of one layer, written by :func:`autolabel`.

    Returns
    -------
    DataFrame
        One row per unit, one column per concept (a (category, name) MultiIndex).
    """
    dissection = directory if isinstance(directory, Dissection) else Dissection(directory)
    dissection.check_layers([layer])
    path = dissection.path(IOU, f"{layer_file_name(layer)}.npz")
    if not path.is_file():
        raise DissectError(
            f"layer {layer!r} has no IoU table yet; run dissect autolabel {dissection.directory}."
        )
    concepts = read_table(dissection.directory, f"{IOU}/{IOU_CONCEPTS}")
    columns = pd.MultiIndex.from_frame(concepts[["category", "name"]])
    arrays = read_npz(path)
    dissection.check_run(
        arrays["run_id"].item() if "run_id" in arrays else "",
        f"iou/{path.name}",
        f"dissect autolabel {dissection.directory}",
    )
    table = pd.DataFrame(arrays["iou"], columns=columns)
    return table.rename_axis("unit")
