"""The ablation pass: every batch through the head once, ablated copies through the tail.

Written as a loop over batches that feeds one mergeable listener per layer
(:class:`~dissect.ablate.sums.AblationSums`): images sharded over torchrun's processes on batch
boundaries, the sums saved every ``checkpoint_seconds`` and on Ctrl-C / SIGTERM to
``ablation/.checkpoint/rank<r>.pt``, resumed by the same call, merged exactly on rank 0.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..checkpoint import Checkpoint, deferred_interrupts, source_digest
from ..device import pick_device
from ..dissection import Dissection
from ..errors import DissectError
from ..evaluate import class_map
from ..images import ImageSource, make_loader
from ..labels import read_labels
from ..models import LoadedModel
from ..semantics import detectors
from .config import AblationConfig
from .copies import StackedAblation, check_against_naive
from .sets import AblationSet, concept_groups, masks, random_groups, unit_sets
from .sums import AblationSums, BatchScores

#: Folder of the ablation pass's checkpoints (one file per rank), inside the dissection directory.
CHECKPOINT_FOLDER = "ablation/.checkpoint"


@dataclass
class LayerPlan:
    """What one layer's pass ablates, and with which values."""

    layer: str
    sets: list[AblationSet]
    values: torch.Tensor
    channels_last: bool


def plan_layer(dissection: Dissection, layer: str, config: AblationConfig) -> LayerPlan:
    """The ablation sets of ``layer``: single units, concept groups and their random groups."""
    n_units = dissection.n_units(layer)
    found = detectors(read_labels(dissection.directory))
    found = found[found["layer"].astype(str) == layer] if len(found) else found
    if config.units == "all":
        units = list(range(n_units))
    elif config.units == "labelled":
        units = sorted({int(unit) for unit in found["unit"]})
    elif config.units == "none":
        units = []
    else:
        units = dissection.check_units(layer, list(config.units))
    groups = concept_groups(found, layer, config.groups) if config.groups and len(found) else []
    if config.groups and not groups:
        warnings.warn(
            f"layer {layer!r} has no labelled detectors in labels.csv, so no concept groups are "
            f"ablated; label it first: dissect autolabel {dissection.directory}",
            stacklevel=2,
        )
    null = random_groups(n_units, [len(g.units) for g in groups], config.draws, config.seed)
    sets = unit_sets(units) + groups + (null if groups else [])
    if not sets:
        raise DissectError(f"nothing to ablate in layer {layer!r}: give --units or --groups.")
    if config.mode == "mean":
        table = dissection.units()
        values = table.loc[table["layer"] == layer, "mean_activation"].to_numpy(np.float32)
    else:
        values = np.zeros(n_units, dtype=np.float32)
    channels_last = bool(dissection.geometry(layer).channels_last)
    return LayerPlan(layer, sets, torch.from_numpy(values), channels_last)


def _fingerprint(dissection: Dissection, source: ImageSource, plans, config, classes) -> dict:
    sets = hashlib.sha256()
    for plan in plans:
        sets.update(repr([(s.kind, s.name, s.units) for s in plan.sets]).encode())
        sets.update(plan.values.numpy().tobytes())
    return {
        "pass": "ablate",
        "run_id": str(dissection.run_id),
        "data": source.spec,
        "images_sha256": source_digest(source),
        "world_size": distributed.world_size(),
        "layers": [plan.layer for plan in plans],
        "batch_size": config.batch_size,
        "mode": config.mode,
        "classes": list(classes),
        "sets_sha256": sets.hexdigest(),
    }


def check_labelled(loaded: LoadedModel, source: ImageSource) -> torch.Tensor:
    """The model output of each data class; refuse unlabelled data and non-classifiers."""
    if loaded.presence_category is not None:
        raise DissectError(
            f"the model predicts which {loaded.presence_category} concepts an image holds, not "
            "one class per image; ablation measures a classifier's class scores."
        )
    if source.classes is None:
        raise DissectError(
            f"DATA {source.spec!r} has no class labels, which ablation needs to score each "
            "class; use synthetic:N[:SEED], a Broden directory with a scene column, or a folder "
            "with one sub-folder per class."
        )
    return torch.tensor(class_map(loaded.classes, source.classes), dtype=torch.int64)


def run_pass(
    dissection: Dissection,
    loaded: LoadedModel,
    source: ImageSource,
    plans: Sequence[LayerPlan],
    config: AblationConfig,
    *,
    device: str = "auto",
    progress: bool = True,
    restart: bool = False,
    checkpoint_seconds: float = 60.0,
) -> dict[str, AblationSums] | None:
    """Stream ``source`` through the network, ablating every set of every plan.

    Returns
    -------
    dict of str to AblationSums or None
        The merged sums per layer on rank 0 (None on other ranks).
    """
    outputs = check_labelled(loaded, source)
    classes = list(source.classes)
    if getattr(loaded.module, "static_batch", None):
        raise DissectError(
            "the model was exported with a static batch size, so it cannot take stacked ablated "
            "copies; export it with a dynamic batch (torch.export.Dim) to ablate its units."
        )
    run_on = pick_device(device)
    distributed.init(run_on)
    run_on = distributed.local_device(run_on)
    module = loaded.module.to(run_on).eval()
    saver = Checkpoint(
        dissection.directory,
        _fingerprint(dissection, source, plans, config, classes),
        distributed.rank(),
        CHECKPOINT_FOLDER,
    )
    if restart:
        saver.remove(distributed.world_size())
    sums = {plan.layer: AblationSums(len(plan.sets), len(classes)) for plan in plans}
    state = saver.load()
    position = 0
    if state is not None:
        sums = {name: AblationSums.from_state_dict(s) for name, s in state["layers"].items()}
        position = int(state["position"])
    shard = distributed.shard(range(len(source)), block=config.batch_size)
    loader = make_loader(source, dissection.preprocess, shard[position:], config.batch_size)
    all_masks = {plan.layer: masks(plan.sets, len(plan.values)).to(run_on) for plan in plans}
    bar = tqdm(
        total=len(shard),
        initial=position,
        unit="img",
        desc="ablate",
        disable=not (progress and distributed.is_main()),
    )
    saved, checked = time.monotonic(), False

    def save() -> None:
        nonlocal saved
        states = {name: value.state_dict() for name, value in sums.items()}
        saver.save({"position": position, "layers": states})
        saved = time.monotonic()

    hooks = [StackedAblation(module, p.layer, p.values.to(run_on), p.channels_last) for p in plans]
    with torch.inference_mode(), deferred_interrupts() as stop:
        for hook in hooks:
            hook.__enter__()
        try:
            for batch in loader:
                count = len(batch.indices) + len(batch.skipped)
                for index, reason in batch.skipped:
                    warnings.warn(
                        f"skipped image {source.image_id(index)!r}: {reason}", stacklevel=2
                    )
                if len(batch.indices):
                    number = int(shard[position]) // config.batch_size
                    labels = torch.tensor([source.label(int(i)) for i in batch.indices])
                    scores = ablate_batch(
                        hooks, all_masks, batch.images.to(run_on), config, check=not checked
                    )
                    checked = True
                    for hook, ablated in zip(hooks, scores, strict=True):
                        sums[hook.layer].add(number, BatchScores(*ablated, labels, outputs))
                position += count
                bar.update(count)
                if stop.requested or time.monotonic() - saved > checkpoint_seconds:
                    save()
                if stop.requested:
                    raise KeyboardInterrupt(stop.signal)
        finally:
            for hook in hooks:
                hook.__exit__()
    bar.close()
    save()  # the finished shard survives a failed merge
    merged = distributed.gather_and_merge(
        {name: value.state_dict() for name, value in sums.items()}, _merge_states
    )
    if merged is None:
        distributed.barrier()
        saver.remove()  # merged on rank 0, which removes its own file once the tables are written
        return None
    distributed.barrier()
    return {name: AblationSums.from_state_dict(state) for name, state in merged.items()}


def _merge_states(first: dict, second: dict) -> dict:
    return {
        name: AblationSums.from_state_dict(first[name])
        .merge(AblationSums.from_state_dict(second[name]))
        .state_dict()
        for name in first
    }


def chunk_size(images: torch.Tensor, kept: torch.Tensor, config: AblationConfig) -> int:
    """Ablated copies per forward: their memory at most ``copies_mib`` (default: the input's)."""
    budget = (config.copies_mib or images.numel() * images.element_size() / 2**20) * 2**20
    return max(1, int(budget // max(kept.numel() * kept.element_size(), 1)))


def ablate_batch(hooks, all_masks, images, config, check: bool):
    """[(base, ablated)] per layer for one batch: one normal forward, then the stacked tails."""
    for hook in hooks:
        hook.keep, hook.calls = True, 0
    base = hooks[0].forward(images)
    for hook in hooks:
        hook.keep = False
        if hook.calls != 1:
            raise DissectError(
                f"layer {hook.layer!r} ran {hook.calls} times in one forward; ablate a module "
                "the network calls once."
            )
    dummy = images[:1]
    results = []
    for hook in hooks:
        layer_masks = all_masks[hook.layer]
        size = chunk_size(images, hook.kept, config)

        def stacked(chosen, hook=hook, size=size):
            parts = [
                hook.forward_ablated(chosen[i : i + size], dummy)
                for i in range(0, len(chosen), size)
            ]
            return torch.cat(parts)

        if check:  # two copies in one forward, whatever the chunk size, to see any mixing
            check_against_naive(
                hook, images, layer_masks[[0, -1]], lambda m, h=hook: h.forward_ablated(m, dummy)
            )
        results.append((base, stacked(layer_masks)))
    return results
