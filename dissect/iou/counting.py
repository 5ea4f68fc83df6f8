"""The IoU pass of ``dissect autolabel``: counters of every unit and concept, in one pass.

:class:`IoUListener` folds each traced layer of a batch into its :class:`IoUStats` (and, with
permutations, its :class:`PermutationNull`); :func:`compute_iou` runs it with the pass driver of
:mod:`dissect.passes` (sharded under torchrun, saved every ``checkpoint_seconds`` and on Ctrl-C /
SIGTERM to ``iou/.checkpoint/``, resumed when started again).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import distributed
from ..alignment import placements
from ..checkpoint import Checkpoint
from ..config import IoUConfig, ResumeConfig
from ..device import forward_dtype, pick_device
from ..directory import IOU_CHECKPOINT
from ..dissection import Dissection, load_dissected_model, open_dissected_data
from ..errors import DissectError
from ..geometry import LayerGeometry
from ..images import ImageSource, data_loader
from ..models import LoadedModel
from ..passes import BaseListener, PassJob, run_pass
from .concepts import ConceptCollate, ConceptDataset, ConceptImages, ConceptIndex, segmented_source
from .significance import PermutationNull
from .tally import IoUStats, count_layer

#: ``compute_iou`` counts no permutation null unless asked (``autolabel`` asks for the default).
NO_NULL = IoUConfig(permutations=0)


@dataclass(frozen=True)
class IoUSetup:
    """What the counters of a pass are counted against.

    Attributes
    ----------
    thresholds : dict of str to Tensor
        The threshold T of every unit, per layer, on the pass's device.
    geometry : dict of str to LayerGeometry
        Where each layer's positions sit in the input.
    size : (int, int)
        The input's (height, width).
    index : ConceptIndex
        The concept columns.
    permutations : int
        P, re-pairings counted for the permutation null (0: none).
    seed : int
        Seed of the re-pairings.
    """

    thresholds: dict[str, torch.Tensor]
    geometry: dict[str, LayerGeometry]
    size: tuple[int, int]
    index: ConceptIndex
    permutations: int
    seed: int


class IoUListener(BaseListener):
    """IoU counters of every unit and concept (and the permutation null), per layer."""

    def __init__(self, setup: IoUSetup, device: torch.device):
        self.setup, self.device = setup, device
        self.stats: dict[str, IoUStats] = {}
        self.null: dict[str, PermutationNull] = {}
        self.load_state_dict(None)

    def _fresh(self) -> None:
        setup, index = self.setup, self.setup.index
        self.stats = {
            layer: IoUStats(len(limit), index.category_of, len(index.categories), self.device)
            for layer, limit in setup.thresholds.items()
        }
        self.null = {
            layer: PermutationNull(
                len(limit),
                index.category_of,
                len(index.categories),
                setup.permutations,
                setup.seed,
                self.device,
            )
            for layer, limit in setup.thresholds.items()
            if setup.permutations
        }

    def add(self, layer: str, output: torch.Tensor, batch: ConceptImages) -> None:
        setup = self.setup
        self.stats[layer].add_concepts(batch.concepts)
        if self.null:
            self.null[layer].add_concepts(batch.concepts, batch.indices.tolist())
        count_layer(
            self.stats[layer],
            output,
            setup.thresholds[layer],
            setup.geometry[layer],
            setup.size,
            batch.concepts,
            self.null.get(layer),
        )

    def state_dict(self) -> dict:
        return {
            "layers": {layer: value.state_dict() for layer, value in self.stats.items()},
            "null": {layer: value.state_dict() for layer, value in self.null.items()},
        }

    def load_state_dict(self, state: dict | None) -> None:
        if state is None:
            self._fresh()
            return
        self.stats = {
            layer: IoUStats.from_state_dict(value, self.device)
            for layer, value in state["layers"].items()
        }
        self.null = {
            layer: PermutationNull.from_state_dict(value, self.device)
            for layer, value in state["null"].items()
        }

    def merge(self, state: dict) -> None:
        for layer, value in state["layers"].items():
            self.stats[layer].merge(IoUStats.from_state_dict(value, self.device))
        for layer, value in state["null"].items():
            self.null[layer].merge(PermutationNull.from_state_dict(value, self.device))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(dissection: Dissection, setup: IoUSetup, batch_size: int) -> dict:
    """What must not change between an interrupted IoU pass and its resumption.

    The batch size is in it because torchrun shards are cut on batch boundaries (and the
    permutation null pairs images inside batches).
    """
    layers = list(setup.thresholds)
    null = {"permutations": setup.permutations, "seed": setup.seed} if setup.permutations else {}
    return {
        "pass": "iou",
        "dissection_created": str(dissection.manifest.get("created")),
        "run_id": str(dissection.run_id),
        "n_images": int(dissection.manifest.get("n_images", 0)),
        "world_size": distributed.world_size(),
        "layers": layers,
        "batch_size": batch_size,
        "concepts_sha256": _digest(setup.index.table.to_csv(index=False).encode()),
        "thresholds_sha256": _digest(
            b"".join(setup.thresholds[layer].cpu().numpy().tobytes() for layer in layers)
        ),
        "null": null,
        "placement": {layer: [*g.stride, *g.offset] for layer, g in setup.geometry.items()},
    }


def compute_iou(
    dissection: Dissection,
    layers: Sequence[str] | None = None,
    *,
    config: IoUConfig | None = None,
    resume: ResumeConfig | None = None,
    model: str | torch.nn.Module | LoadedModel | None = None,
    source: ImageSource | None = None,
    progress: bool = True,
    restart: bool = False,
    **options: Any,
) -> tuple[dict[str, IoUStats], ConceptIndex]:
    """Stream the dissected images through the network and count IoU for every unit and concept.

    Parameters
    ----------
    dissection : Dissection
        An opened dissection directory (gives thresholds, geometry, preprocessing).
    layers : sequence of str, optional
        Layers to label (default: all dissected ones).
    config : IoUConfig, optional
        ``batch_size``, ``device``, ``workers``, ``dtype`` (None: the run's), ``permutations``
        (P re-pairings of unit masks with the concept masks of other images, counted alongside
        for the significance of every label, see :mod:`dissect.iou.significance`; each adds
        one set of counters and one more counting pass per batch). Default: :class:`IoUConfig`'s,
        with no permutations (:func:`~dissect.iou.labelling.autolabel` asks for 19).
    resume : ResumeConfig, optional
        The counters are saved to ``iou/.checkpoint/rank<r>.pt`` every ``checkpoint_seconds``,
        on Ctrl-C / SIGTERM (deferred to the end of the batch in flight; then
        ``KeyboardInterrupt`` is raised) and on an interruption between batches, and resumed
        from. A checkpoint of another pass (other thresholds, layers, concepts, batch size,
        null, number of processes, or checkpoint format) is refused with a
        :class:`DissectError`.
    model : str, nn.Module or LoadedModel, optional
        The dissected model (default: loaded again from the manifest's MODEL spec); required
        when the dissection was run on an in-memory module.
    source : ImageSource, optional
        The dissected data with concept masks (default: opened again from the manifest).
    progress : bool
        Show a progress bar.
    restart : bool
        Discard an existing checkpoint and start from the first image.
    **options
        Fields of ``config`` or ``resume`` given one by one (``batch_size=``,
        ``permutations=``, ``checkpoint_seconds=``...); ``checkpoint=False`` saves nothing;
        ``nulls`` (a dict, filled with the :class:`PermutationNull` of every layer) and
        ``skipped`` (a list, filled with (index, reason) of every image left out because it or
        one of its label maps could not be read, all processes and sessions, by index).

    Returns
    -------
    (dict of str to IoUStats, ConceptIndex)
        The counters per layer, and the concept columns they use.
    """
    nulls, skipped = options.pop("nulls", None), options.pop("skipped", None)
    save = options.pop("checkpoint", True)
    config, resume = _configs(config or NO_NULL, resume or ResumeConfig(), options)
    layers = dissection.check_layers(layers)
    if config.permutations and config.batch_size < 2:
        raise DissectError(
            "the significance of labels pairs images within a batch, so it needs --batch-size "
            "of at least 2; raise --batch-size or pass --permutations 0 to skip p-values."
        )
    source = segmented_source(source or open_dissected_data(dissection))
    loaded = load_dissected_model(dissection, model)
    device = pick_device(config.device)
    dtype_name = config.dtype or dissection.config.dtype
    dtype = forward_dtype(dtype_name, device)
    distributed.init(device)
    device = distributed.local_device(device)
    setup = IoUSetup(
        {layer: torch.from_numpy(dissection.thresholds(layer)).to(device) for layer in layers},
        placements(dissection, layers, config.align),
        dissection.preprocess.size,
        ConceptIndex(source.concepts),
        config.permutations,
        int(dissection.config.seed),
    )
    checkpoint = Checkpoint(
        dissection.directory,
        {
            **fingerprint(dissection, setup, config.batch_size),
            **({"dtype": dtype_name} if dtype_name != "float32" else {}),
        },
        distributed.rank(),
        IOU_CHECKPOINT,
    )
    if restart:
        checkpoint.remove(distributed.world_size())
    shard = distributed.shard(range(len(source)), block=config.batch_size)
    listener = IoUListener(setup, device)
    state = run_pass(
        PassJob(
            loaded.module,
            layers,
            _batches(source, dissection, setup, shard, config.workers, device),
            len(shard),
            device,
            source,
            channels_last=dissection.channels_last(layers),
            stream=False,
            checkpoint=checkpoint if save else None,
            resume=resume,
            desc="iou",
            progress=progress and distributed.is_main(),
            dtype=dtype,
            batch_size=config.batch_size,
        ),
        {"iou": listener},
    )
    if state is None:
        return {}, setup.index
    if skipped is not None:
        skipped.extend(state.skipped)
    if nulls is not None:
        nulls.update(listener.null)
    return listener.stats, setup.index


def _configs(
    config: IoUConfig, resume: ResumeConfig, options: dict[str, Any]
) -> tuple[IoUConfig, ResumeConfig]:
    """``config`` and ``resume`` with the loose keywords of :func:`compute_iou` put in."""
    fields = {field.name for field in dataclasses.fields(IoUConfig)}
    resume_fields = {field.name for field in dataclasses.fields(ResumeConfig)}
    unknown = sorted(set(options) - fields - resume_fields)
    if unknown:
        raise TypeError(f"compute_iou() got unexpected keyword argument(s) {unknown}")
    given = {key: value for key, value in options.items() if value is not None}
    return (
        dataclasses.replace(config, **{k: v for k, v in given.items() if k in fields}),
        dataclasses.replace(resume, **{k: v for k, v in given.items() if k in resume_fields}),
    )


def _batches(source, dissection: Dissection, setup: IoUSetup, shard: list[int], workers, device):
    """``batches(start, size)`` of the IoU pass: images with their stacked concept masks."""
    height, width = setup.size
    collate = ConceptCollate(height * width, len(setup.index))

    def batches(start: int, size: int) -> torch.utils.data.DataLoader:
        dataset = ConceptDataset(source, dissection.preprocess, setup.index, shard[start:])
        return data_loader(dataset, size, collate, workers, device)

    return batches
