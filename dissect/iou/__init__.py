"""Automatic unit labels by IoU with dense concept masks (NetDissect, Bau et al. 2017).

For unit k and concept c, over the whole dataset::

    IoU(k, c) = sum |M_k ∩ L_c| / sum |M_k ∪ L_c|

where M_k is the unit's activation map upsampled to the input (aligned by the layer's stride and
offset) and kept above the unit's threshold T_k, and L_c the pixels labelled c. An image-level
concept (a scene) covers the whole image. As in NetDissect, the union only counts the unit's area
on images where the concept's category is annotated, so a unit is not blamed for firing on images
that carry no part labels, say: ``union = A_k,cat(c) + |L_c| - I_k,c``.

:class:`IoUStats` keeps the three counters (units x concepts, units x categories, concepts), not
images; it has ``add``, ``merge``, ``state_dict`` and ``from_state_dict`` so shards combine
exactly. :func:`compute_iou` streams a dataset through the network, saving its counters
to ``iou/.checkpoint/`` every ``checkpoint_seconds`` and on Ctrl-C / SIGTERM; :func:`autolabel`
writes ``iou/<layer>.npz``, ``iou/concepts.csv`` and the ``iou`` label source (``dissect
autolabel``).
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..checkpoint import Checkpoint, deferred_interrupts
from ..device import pick_device
from ..dissection import Dissection, layer_file_name
from ..errors import DissectError
from ..hooks import LayerTrace
from ..images import ImageSource
from ..io import read_csv, read_npz, write_csv, write_npz
from ..labels import read_labels, write_labels
from ..lock import writes
from ..models import LoadedModel
from ..taxonomy import DEFAULT_TAXONOMY, Taxonomy
from .concepts import ConceptCollate, ConceptDataset, ConceptIndex, segmented_source
from .significance import (
    DEFAULT_PERMUTATIONS,
    PermutationNull,
    benjamini_hochberg,
    significance,
)
from .tally import IoUStats, count_layer

#: Folder of the IoU pass's checkpoints (one file per rank), inside the dissection directory.
CHECKPOINT_FOLDER = "iou/.checkpoint"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fingerprint(
    dissection: Dissection,
    layers: Sequence[str],
    index: ConceptIndex,
    thresholds: dict[str, torch.Tensor],
    batch_size: int,
    null: dict,
) -> dict:
    """What must not change between an interrupted IoU pass and its resumption.

    The batch size is in it because torchrun shards are cut on batch boundaries (and the
    permutation null pairs images inside batches).
    """
    return {
        "pass": "iou",
        "dissection_created": str(dissection.manifest.get("created")),
        "run_id": str(dissection.run_id),
        "n_images": int(dissection.manifest.get("n_images", 0)),
        "world_size": distributed.world_size(),
        "layers": list(layers),
        "batch_size": batch_size,
        "concepts_sha256": _digest(index.table.to_csv(index=False).encode()),
        "thresholds_sha256": _digest(
            b"".join(thresholds[layer].cpu().numpy().tobytes() for layer in layers)
        ),
        "null": null,
    }


def compute_iou(
    dissection: Dissection,
    layers: Sequence[str] | None = None,
    *,
    model: str | torch.nn.Module | LoadedModel | None = None,
    source: ImageSource | None = None,
    batch_size: int = 16,
    device: str = "auto",
    workers: int = 0,
    progress: bool = True,
    checkpoint: bool = True,
    restart: bool = False,
    permutations: int = 0,
    nulls: dict[str, PermutationNull] | None = None,
    skipped: list[tuple[int, str]] | None = None,
    checkpoint_seconds: float = 60.0,
) -> tuple[dict[str, IoUStats], ConceptIndex]:
    """Stream the dissected images through the network and count IoU for every unit and concept.

    Parameters
    ----------
    dissection : Dissection
        An opened dissection directory (gives thresholds, geometry, preprocessing).
    layers : sequence of str, optional
        Layers to label (default: all dissected ones).
    model : str, nn.Module or LoadedModel, optional
        The dissected model (default: loaded again from the manifest's MODEL spec); required
        when the dissection was run on an in-memory module.
    source : ImageSource, optional
        The dissected data with concept masks (default: opened again from the manifest).
    batch_size : int
        Images per forward.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    workers : int
        DataLoader worker processes (reading images and masks).
    progress : bool
        Show a progress bar.
    checkpoint : bool
        Save the counters to ``iou/.checkpoint/rank<r>.pt`` every ``checkpoint_seconds``, on
        Ctrl-C / SIGTERM (deferred to the end of the batch in flight; then ``KeyboardInterrupt``
        is raised) and on an interruption between batches, and resume from it. A checkpoint of
        another pass (other thresholds, layers, concepts, batch size, null, number of
        processes, or checkpoint format) is refused with a :class:`DissectError`.
    restart : bool
        Discard an existing checkpoint and start from the first image.
    permutations : int
        P, re-pairings of unit masks with the concept masks of other images counted alongside
        for the significance of every label (see :mod:`dissect.iou.significance`); 0 (the
        default here) for none; :func:`autolabel` asks for ``DEFAULT_PERMUTATIONS`` (19).
        Each adds one set of counters and one more counting pass per batch.
    nulls : dict, optional
        Filled with the :class:`PermutationNull` of every layer when ``permutations`` > 0.
    skipped : list, optional
        Filled with (index, reason) of every image left out because it or one of its label maps
        could not be read (all processes, all sessions of a resumed pass), by index.
    checkpoint_seconds : float
        Seconds between two checkpoints.

    Returns
    -------
    (dict of str to IoUStats, ConceptIndex)
        The counters per layer, and the concept columns they use.
    """
    layers = dissection.check_layers(layers)
    if batch_size < 1:
        raise DissectError(f"--batch-size must be at least 1, got {batch_size}.")
    if permutations < 0:
        raise DissectError(f"--permutations must be 0 or more, got {permutations}.")
    if permutations and batch_size < 2:
        raise DissectError(
            "the significance of labels pairs images within a batch, so it needs --batch-size "
            "of at least 2; raise --batch-size or pass --permutations 0 to skip p-values."
        )
    source = segmented_source(source or dissection.open_data())
    loaded = dissection.load_model(model)
    preprocess = dissection.preprocess
    index = ConceptIndex(source.concepts)
    torch_device = pick_device(device)
    distributed.init(torch_device)
    torch_device = distributed.local_device(torch_device)
    module = loaded.module.to(torch_device)
    thresholds = {
        layer: torch.from_numpy(dissection.thresholds(layer)).to(torch_device) for layer in layers
    }
    geometry = {layer: dissection.geometry(layer) for layer in layers}
    stats = {
        layer: IoUStats(
            len(thresholds[layer]), index.category_of, len(index.categories), torch_device
        )
        for layer in layers
    }
    seed = int(dissection.config.seed)
    null = {
        layer: PermutationNull(
            len(thresholds[layer]), index.category_of, len(index.categories), permutations,
            seed, torch_device,
        )
        for layer in layers
        if permutations
    }  # fmt: skip
    setup = {"permutations": permutations, "seed": seed} if permutations else {}
    saver = Checkpoint(
        dissection.directory,
        _fingerprint(dissection, layers, index, thresholds, batch_size, setup),
        distributed.rank(),
        CHECKPOINT_FOLDER,
    )
    if restart:
        saver.remove(distributed.world_size())
    state = saver.load() if checkpoint else None
    start, passed = 0, []  # passed: images skipped
    if state is not None:
        stats = {layer: IoUStats.from_state_dict(state["layers"][layer], torch_device)
                 for layer in layers}  # fmt: skip
        null = {layer: PermutationNull.from_state_dict(state["null"][layer], torch_device)
                for layer in null}  # fmt: skip
        passed = [(int(image), str(reason)) for image, reason in state["skipped"]]
        start = int(state["position"])
    size = preprocess.size
    shard = distributed.shard(range(len(source)), block=batch_size)
    loader = torch.utils.data.DataLoader(
        ConceptDataset(source, preprocess, index, shard[start:]),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=ConceptCollate(size[0] * size[1], len(index)),
    )
    show = progress and distributed.is_main()
    bar = tqdm(total=len(shard), initial=start, unit="img", desc="iou", disable=not show)
    position, saved, consistent = start, time.monotonic(), True

    def save() -> None:
        nonlocal saved
        if checkpoint:
            done = [[image, reason] for image, reason in passed]
            saver.save({"position": position, "layers": _states(stats), "null": _states(null),
                        "skipped": done})  # fmt: skip
        saved = time.monotonic()

    with (
        torch.inference_mode(),
        LayerTrace(
            module, layers, stop=True, channels_last=dissection.channels_last(layers)
        ) as trace,
        deferred_interrupts() as stop,
    ):
        try:
            for count, images, concepts, skipped_now in loader:
                for image, reason in skipped_now:
                    warnings.warn(
                        f"skipped image {source.image_id(image)!r}: {reason}", stacklevel=2
                    )
                consistent = False  # until every layer has counted this batch
                passed.extend(skipped_now)
                if images is not None:
                    outputs = trace(images.to(torch_device))
                    gone = {image for image, _ in skipped_now}
                    read = [i for i in shard[position : position + count] if i not in gone]
                    for layer in layers:
                        stats[layer].add_concepts(concepts)
                        if null:
                            null[layer].add_concepts(concepts, read)
                        count_layer(stats[layer], outputs[layer], thresholds[layer],
                                     geometry[layer], size, concepts, null.get(layer))  # fmt: skip
                position += count
                consistent = True
                bar.update(count)
                if stop.requested or time.monotonic() - saved > checkpoint_seconds:
                    save()
                if stop.requested:
                    raise KeyboardInterrupt(stop.signal)
        except KeyboardInterrupt:
            if consistent and not stop.requested:
                save()  # interrupted between batches (e.g. while reading): keep what is done
            raise
    bar.close()
    if checkpoint:
        save()  # the finished shard survives a failed merge
    merged = distributed.gather_and_merge(
        {"layers": _states(stats), "null": _states(null), "skipped": passed}, _merge_states
    )
    if merged is None:
        return {}, index
    if skipped is not None:
        skipped.extend((int(image), str(reason)) for image, reason in merged["skipped"])
    if nulls is not None:
        nulls.update(
            {
                name: PermutationNull.from_state_dict(merged["null"][name], torch_device)
                for name in merged["null"]
            }
        )
    merged = merged["layers"]
    return {layer: IoUStats.from_state_dict(merged[layer], torch_device) for layer in layers}, index


def _states(counters: dict) -> dict:
    return {layer: value.state_dict() for layer, value in counters.items()}


def _merge_states(first: dict, second: dict) -> dict:
    """Merge two ranks' ``{"layers": {layer: IoUStats state}, "null": {layer: null state}}``."""
    return {
        "layers": {
            layer: IoUStats.from_state_dict(first["layers"][layer])
            .merge(IoUStats.from_state_dict(second["layers"][layer]))
            .state_dict()
            for layer in first["layers"]
        },
        "null": {
            layer: PermutationNull.from_state_dict(first["null"][layer])
            .merge(PermutationNull.from_state_dict(second["null"][layer]))
            .state_dict()
            for layer in first["null"]
        },
        "skipped": sorted(first["skipped"] + second["skipped"]),
    }


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
    **options,
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
    **options
        ``model``, ``source``, ``batch_size``, ``device``, ``workers``, ``progress``,
        ``checkpoint``, ``restart``, ``permutations``, ``checkpoint_seconds``: see
        :func:`compute_iou`.

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
    options.setdefault("permutations", DEFAULT_PERMUTATIONS)
    stats, index = compute_iou(dissection, layers, nulls=nulls, skipped=skipped, **options)
    if distributed.is_main():
        labels = write_outputs(dissection, stats, index, taxonomy, nulls, skipped)
    distributed.barrier()  # rank 0 has written
    Checkpoint(dissection.directory, {}, distributed.rank(), CHECKPOINT_FOLDER).remove(
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

    Returns
    -------
    DataFrame
        The new ``iou`` labels of the layers in ``stats``.
    """
    paths = dissection.images().set_index("index")["path"]
    write_csv(
        dissection.path("iou", "skipped.csv"),
        pd.DataFrame(
            {"index": [image for image, _ in skipped],
             "path": [str(paths.get(image, "")) for image, _ in skipped],
             "reason": [reason for _, reason in skipped]}
        ),
    )  # fmt: skip
    write_csv(
        dissection.path("iou", "concepts.csv"),
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
            dissection.path("iou", f"{layer_file_name(layer)}.npz"),
            iou=iou,
            intersection=counts.intersection.cpu().numpy(),
            union=counts.union().cpu().numpy(),
            run_id=np.array(dissection.run_id),
            **arrays,
        )
        tables.append(labels.assign(layer=layer))
    labels = pd.concat(tables, ignore_index=True)
    labels = labels[["layer", *[c for c in labels.columns if c != "layer"]]]
    earlier = read_labels(dissection.directory, "iou", check=False)
    earlier = earlier[~earlier["layer"].isin(list(stats))]  # layers labelled in an earlier run
    if dissection.run_id and "run_id" in earlier:  # another pass's labels are dropped, not kept
        earlier = earlier[earlier["run_id"].isna() | (earlier["run_id"] == dissection.run_id)]
    write_labels(dissection.directory, "iou", pd.concat([earlier, labels], ignore_index=True))
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
    path = dissection.path("iou", f"{layer_file_name(layer)}.npz")
    if not path.is_file():
        raise DissectError(
            f"layer {layer!r} has no IoU table yet; run dissect autolabel {dissection.directory}."
        )
    concepts = read_csv(dissection.path("iou", "concepts.csv"), keep_default_na=False)
    columns = pd.MultiIndex.from_frame(concepts[["category", "name"]])
    arrays = read_npz(path)
    dissection.check_run(
        arrays["run_id"].item() if "run_id" in arrays else "",
        f"iou/{path.name}",
        f"dissect autolabel {dissection.directory}",
    )
    table = pd.DataFrame(arrays["iou"], columns=columns)
    return table.rename_axis("unit")
