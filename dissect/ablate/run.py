"""The ablation pass: what it ablates in each layer, and the pass that measures it.

:func:`plan_layer` picks each layer's ablation sets (single units, concept groups, their random
groups) and values; :func:`run_pass` runs them through :func:`dissect.passes.run_pass` with an
:class:`~dissect.ablate.listener.AblationListener`.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import distributed, passes
from ..checkpoint import Checkpoint, source_digest
from ..config import ResumeConfig
from ..device import pick_device
from ..directory import ABLATION_CHECKPOINT
from ..dissection import Dissection
from ..errors import DissectError
from ..evaluate import class_map
from ..images import ImageSource, make_loader
from ..labels import read_labels
from ..models import LoadedModel
from ..passes import PassJob
from ..semantics import detectors
from .config import AblationConfig
from .listener import AblationListener, LayerPlan, Scoring
from .sets import concept_groups, random_groups, unit_sets
from .sums import AblationSums


@dataclass(frozen=True)
class PassOptions:
    """How the ablation pass runs (not what it measures).

    Attributes
    ----------
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    progress : bool
        Show a progress bar (on rank 0).
    restart : bool
        Discard a checkpoint of an interrupted run and start over.
    resume : ResumeConfig
        When the sums are saved.
    """

    device: str = "auto"
    progress: bool = True
    restart: bool = False
    resume: ResumeConfig = field(default_factory=ResumeConfig)


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


def _fingerprint(
    dissection: Dissection, source: ImageSource, plans: Sequence[LayerPlan], config: AblationConfig
) -> dict:
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
        "classes": list(source.classes),
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
    options: PassOptions,
) -> dict[str, AblationSums] | None:
    """Stream ``source`` through the network, ablating every set of every plan.

    One pass of :func:`dissect.passes.run_pass` with an :class:`AblationListener`: images
    sharded over torchrun's processes on batch boundaries, the sums saved every
    ``options.resume.checkpoint_seconds`` and on Ctrl-C / SIGTERM to
    ``ablation/.checkpoint/rank<r>.pt``, resumed by the same call, merged exactly on rank 0.

    Returns
    -------
    dict of str to AblationSums or None
        The merged sums per layer on rank 0 (None on other ranks).
    """
    scoring = Scoring(source.label, check_labelled(loaded, source))
    if getattr(loaded.module, "static_batch", None):
        raise DissectError(
            "the model was exported with a static batch size, so it cannot take stacked ablated "
            "copies; export it with a dynamic batch (torch.export.Dim) to ablate its units."
        )
    device = pick_device(options.device)
    distributed.init(device)
    device = distributed.local_device(device)
    module = loaded.module.to(device).eval()
    checkpoint = ablation_checkpoint(dissection, _fingerprint(dissection, source, plans, config))
    if options.restart:
        checkpoint.remove(distributed.world_size())
    shard = distributed.shard(range(len(source)), block=config.batch_size)
    job = PassJob(
        module,
        (),  # the listener runs the network itself
        lambda start: make_loader(source, dissection.preprocess, shard[start:], config.batch_size),
        len(shard),
        device,
        source,
        checkpoint=checkpoint,
        resume=options.resume,
        desc="ablate",
        progress=options.progress and distributed.is_main(),
    )
    with AblationListener(module, plans, device, config, scoring) as listener:
        state = passes.run_pass(job, {"ablation": listener})
    distributed.barrier()
    if state is None:
        checkpoint.remove()  # merged on rank 0, which removes its file once the tables are written
        return None
    return listener.sums


def ablation_checkpoint(dissection: Dissection, fingerprint: dict) -> Checkpoint:
    """This rank's checkpoint file of the ablation pass (``fingerprint``: {} to remove files)."""
    return Checkpoint(dissection.directory, fingerprint, distributed.rank(), ABLATION_CHECKPOINT)
