"""``dissect run``: every traced layer folded into running statistics in one pass.

``run_dissection`` loads model and data, probes the layer geometry, runs the pass of
:mod:`dissect.passes` with a :class:`UnitStatsListener` (and, with ``--iou``, the same-pass IoU
listener of :mod:`dissect.iou.samepass`, handed in), and writes the dissection directory
(:mod:`dissect.dissection`).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import __version__, distributed
from .block_outputs import model_default_layers
from .checkpoint import Checkpoint, module_digest, source_digest
from .config import ALIGN, ResumeConfig, RunConfig
from .datasets import open_data
from .device import forward_dtype, pick_device
from .directory import (
    IMAGES,
    MANIFEST,
    TOPK,
    UNITS,
    layer_file_name,
    retire_stale_outputs,
    run_digest,
)
from .dissection import Dissection
from .errors import DissectError
from .geometry import LayerGeometry, cached_layer_geometry, layer_geometry
from .hooks import resolve_layers
from .images import Batch, ImageSource, Preprocess, make_loader
from .io import write_csv, write_json, write_npz
from .lock import writes
from .models import LoadedModel, load_model
from .passes import BaseListener, Listener, PassJob, PassState, run_pass, state_to
from .running_stats import UnitStats


class UnitStatsListener(BaseListener):
    """The statistics of ``dissect run``: a :class:`UnitStats` per traced layer.

    Parameters
    ----------
    config : RunConfig
        ``topk``, ``quantile`` and ``seed`` (which keys the threshold sketch's sample with the
        global image index and position, the same on every rank).
    total_images : int
        Images of the whole run, all processes together; it bounds what the threshold sketches
        must hold, so shards of one run merge exactly.
    device : torch.device
        Where the statistics live.
    """

    def __init__(self, config: RunConfig, total_images: int, device: torch.device):
        self.config, self.total_images, self.device = config, total_images, device
        #: Per layer; empty until a readable image has been seen.
        self.stats: dict[str, UnitStats] = {}
        self._indices = torch.empty(0, dtype=torch.int64)
        self._warned: set[str] = set()  # layers warned about non-finite values, once each

    def begin(self, batch: Batch) -> None:
        self._indices = batch.indices.to(self.device)

    def add(self, layer: str, output: torch.Tensor, batch: Batch) -> None:
        """Fold one layer's output for the current batch into its statistics."""
        if layer not in self.stats:
            self.stats[layer] = UnitStats(
                output.shape[1],
                self.config.topk,
                self.total_images * output[0, 0].numel(),
                self.config.quantile,
                self.config.seed,
                device=output.device,
            )
        found = self.stats[layer].add(output, self._indices)
        if found and layer not in self._warned:
            self._warned.add(layer)
            warnings.warn(
                f"layer {layer!r} gave {found} NaN or infinite activation value(s) in this "
                "batch; they are left out of its statistics and counted in units.csv "
                "(nonfinite). Check the model's weights and the input normalisation.",
                stacklevel=2,
            )

    def lower_bound(self, layer: str) -> torch.Tensor:
        """A lower bound of every unit's threshold T of ``layer`` at this point of the pass."""
        return self.stats[layer].tail.lower_bound()

    def state_dict(self) -> dict:
        return {name: state_to(stats.state_dict(), "cpu") for name, stats in self.stats.items()}

    def load_state_dict(self, state: dict | None) -> None:
        self.stats = {
            name: UnitStats.from_state_dict(state_to(value, self.device))
            for name, value in (state or {}).items()
        }

    def merge(self, state: dict) -> None:
        for name, value in state.items():
            other = UnitStats.from_state_dict(state_to(value, self.device))
            if name in self.stats:
                self.stats[name].merge(other)
            else:
                self.stats[name] = other


def run_fingerprint(
    loaded: LoadedModel,
    source: ImageSource,
    preprocess: Preprocess,
    config: RunConfig,
    device: torch.device,
) -> dict:
    """What must not change between an interrupted run and its resumption."""
    return {
        "model": loaded.spec,
        "model_weights_sha256": module_digest(loaded.module),
        "data": source.spec,
        "n_images": len(source),
        "image_list_sha256": source_digest(source),
        "preprocess": preprocess.to_dict(),
        "layers": list(config.layers),
        "topk": config.topk,
        "quantile": config.quantile,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "device_type": device.type,
        "world_size": distributed.world_size(),
        # only when set, so that the checkpoints of float32 runs stay valid
        **({"dtype": config.dtype} if config.dtype != "float32" else {}),
    }


@writes("out")
def run_dissection(
    model: str | nn.Module | LoadedModel,
    data: str | ImageSource,
    out: str | Path,
    layers: Sequence[str] | None = None,
    *,
    config: RunConfig | None = None,
    weights: str | None = None,
    preprocess: Preprocess | None = None,
    iou: bool = False,
    **options: Any,
) -> Dissection:
    """Dissect ``layers`` of ``model`` over ``data`` and write the dissection directory ``out``.

    Started by ``torchrun``, every process dissects its own shard of the images and rank 0 merges
    the statistics and writes the directory; the result equals a one-process run (see
    :func:`write_dissection`). Partial state is checkpointed in ``out/.checkpoint``; calling again
    with the same arguments after an interruption resumes from it, and the checkpoints are removed
    once the directory is written.

    Parameters
    ----------
    model : str, nn.Module or LoadedModel
        A MODEL spec (see :func:`dissect.models.load_model`), an in-memory module (later stages
        then take it again as ``model=``), or an already loaded model.
    data : str or ImageSource
        A DATA spec (see :func:`dissect.datasets.open_data`) or a source.
    out : path-like
        The dissection directory to write.
    layers : sequence of str, optional
        Layers to dissect (names, globs, ``type:`` filters); default as ``dissect run``'s:
        the block outputs, one per resolution stage (a built-in model's own default, every
        convolution and pooling layer, for ``scene-cnn`` and ``object-cnn``; see
        :func:`dissect.block_outputs.model_default_layers`).
    config : RunConfig, optional
        ``topk``, ``quantile``, ``batch_size``, ``device``, ``seed``, ``workers``, ``dtype`` (its
        ``layers`` are replaced by ``layers``); default :class:`RunConfig`'s defaults.
    weights : str, optional
        State-dict file for a ``file.py:callable`` MODEL.
    preprocess : Preprocess, optional
        Input size and normalisation; default the model's own (ImageNet statistics, 224 px).
    iou : bool
        Also label every unit by IoU with the data's concept masks, in the same pass (see
        :mod:`dissect.iou.samepass`): writes ``iou/`` and the ``iou`` labels, with the
        permutation null's ``p_value``, ``z_score`` and ``q_value``, as ``dissect autolabel``
        with the same batch size and ``permutations`` would.
    **options
        ``progress`` (bool, default True: a progress bar on rank 0); ``restart`` (bool: discard
        any checkpoint in ``out`` instead of resuming from it, or refusing it when it belongs to
        a run with other arguments); ``permutations`` (int: P of the permutation null counted
        with ``iou``, default :class:`~dissect.config.IoUConfig`'s; 0: no p-values);
        ``align`` (with ``iou``: ``theoretical`` or ``resize``, where the unit maps are placed,
        see :mod:`dissect.alignment`); ``resume`` (a :class:`ResumeConfig`: when the pass saves
        its state); fields of ``config`` (``topk=``, ``batch_size=``, ...) or of ``resume``
        (``checkpoint_every=``) given one by one.

    Returns
    -------
    Dissection
        The directory just written, opened.
    """
    progress, restart = options.pop("progress", True), options.pop("restart", False)
    align = options.pop("align", ALIGN)  # placement of the --iou labels' maps
    permutations = options.pop("permutations", None)
    resume = options.pop("resume", None) or ResumeConfig()
    config, resume = split_loose(config or RunConfig(), resume, options)
    loaded = load_model(model, weights)
    source = open_data(data)
    preprocess = preprocess or loaded.preprocess
    names = resolve_layers(
        loaded.module, layers or model_default_layers(loaded, preprocess.size).layers
    )
    config = dataclasses.replace(config, layers=tuple(names))
    torch_device = pick_device(config.device)
    dtype = forward_dtype(config.dtype, torch_device)
    distributed.init(torch_device)
    device = distributed.local_device(torch_device)
    listeners: dict[str, Listener] = {"stats": UnitStatsListener(config, len(source), device)}
    if iou:  # refuses data without concept masks before the probe's seconds are spent
        from .iou.samepass import PendingIoU, null_config

        null = null_config(permutations, config)
        listeners["iou"] = PendingIoU(
            source, out, distributed.rank(), listeners["stats"].lower_bound, null, align
        )
    fingerprint = run_fingerprint(loaded, source, preprocess, config, torch_device)
    started = time.perf_counter()  # the probe, or reading what an earlier one found
    geometry = cached_layer_geometry(
        loaded.module,
        names,
        preprocess.size,
        fingerprint["model_weights_sha256"],
        probe=layer_geometry,
    )
    probe_seconds = time.perf_counter() - started
    if iou:
        fingerprint["iou_concepts_sha256"] = listeners["iou"].concepts_sha256
        fingerprint["iou_null"] = list(null)
    checkpoint = Checkpoint(out, fingerprint, distributed.rank())
    if restart:
        checkpoint.remove(distributed.world_size())
        if iou:
            listeners["iou"].remove(distributed.world_size())
    shard = distributed.shard(range(len(source)), block=config.batch_size)
    loader = make_loader if not iou else listeners["iou"].loader
    job = PassJob(
        loaded.module,
        names,
        lambda start, size: loader(source, preprocess, shard[start:], size, config.workers, device),
        len(shard),
        device,
        source,
        channels_last=[name for name in names if geometry[name].channels_last],
        checkpoint=checkpoint,
        resume=resume,
        progress=progress and distributed.is_main(),
        dtype=dtype,
        batch_size=config.batch_size,
    )
    state = run_pass(job, listeners)
    written = Written(out, loaded, source, preprocess, config, geometry, probe_seconds)
    dissection = finish_run(written, state, listeners, device)
    checkpoint.remove(distributed.world_size())
    return dissection


def split_loose(
    config: RunConfig, resume: ResumeConfig, loose: dict[str, Any]
) -> tuple[RunConfig, ResumeConfig]:
    """``config`` and ``resume`` with the loose keyword arguments of :func:`run_dissection`
    (those not None) put in; an unknown keyword is a ``TypeError``, as in any call."""
    run_fields = {field.name for field in dataclasses.fields(RunConfig)} - {"layers"}
    resume_fields = {field.name for field in dataclasses.fields(ResumeConfig)}
    unknown = sorted(set(loose) - run_fields - resume_fields)
    if unknown:
        raise TypeError(f"run_dissection() got unexpected keyword argument(s) {unknown}")
    given = {key: value for key, value in loose.items() if value is not None}
    config = dataclasses.replace(config, **{k: v for k, v in given.items() if k in run_fields})
    resume = dataclasses.replace(resume, **{k: v for k, v in given.items() if k in resume_fields})
    return config, resume


@dataclass(frozen=True)
class Written:
    """What a run writes besides the statistics: where, of what, how."""

    out: Path | str
    loaded: LoadedModel
    source: ImageSource
    preprocess: Preprocess
    config: RunConfig
    geometry: dict[str, LayerGeometry]
    probe_seconds: float = 0.0


def finish_run(
    written: Written,
    state: PassState | None,
    listeners: dict[str, Listener],
    device: torch.device,
) -> Dissection:
    """Rank 0 writes the directory; with ``--iou`` every rank then counts its kept pairs."""
    problem, thresholds = None, None
    if state is not None:
        stats = listeners["stats"].stats
        if stats:
            write_dissection(written, stats, state)
            thresholds = {
                name: stats[name].threshold().astype(np.float32) for name in written.config.layers
            }
        else:
            problem = f"no readable image in DATA {written.source.spec!r}; nothing to dissect."
    problem = distributed.broadcast(problem)  # also: nobody goes on before rank 0 has written
    if problem:
        raise DissectError(problem)
    dissection = Dissection(written.out)
    if "iou" in listeners:
        from .iou.samepass import label_run

        thresholds = distributed.broadcast(thresholds)
        skipped = state.skipped if state is not None else []
        label_run(listeners["iou"], dissection, thresholds, skipped, device)
        listeners["iou"].remove(distributed.world_size())
    return dissection


def write_dissection(written: Written, stats: dict[str, UnitStats], state: PassState) -> None:
    """Write the statistics of a finished pass as a dissection directory (manifest last).

    ``topk/*.npz``, ``max_activation`` and ``threshold`` do not depend on how the images were
    sharded over processes or how often the run was resumed (the threshold sketch's sample is
    keyed on seed, image index and position; see :mod:`dissect.running_stats`).
    ``mean_activation`` is accumulated in float64, where a different summation order changes
    only the last bits, and is stored as float32. ``written.probe_seconds`` is the time the
    geometry probe took.
    """
    out, config, source = Path(written.out), written.config, written.source
    rows, topk = [], {}
    for name in config.layers:
        layer = stats[name]
        topk[name] = layer.topk()
        rows.append(
            pd.DataFrame(
                {
                    "layer": name,
                    "unit": np.arange(len(layer.max())),
                    "max_activation": layer.max(),
                    "mean_activation": layer.mean().astype(np.float32),
                    "threshold": layer.threshold(),
                    "quantile": config.quantile,
                    "nonfinite": layer.nonfinite.cpu().numpy(),
                }
            )
        )
    units = pd.concat(rows, ignore_index=True)
    images = images_table(source, state.skipped)
    manifest = run_manifest(written, state)
    tables = [units.to_csv(index=False).encode(), images.to_csv(index=False).encode()]
    tables += [
        np.ascontiguousarray(array).tobytes()
        for name in config.layers
        for _, array in sorted(topk[name].items())
    ]
    manifest["run_id"] = run_digest(manifest, tables)
    moved = retire_stale_outputs(out, manifest["run_id"], config.layers)
    if moved is not None:
        warnings.warn(
            f"{str(out)!r} held the outputs of later stages of another run; they were moved to "
            f"{str(moved)!r}. Run those stages again for this run.",
            stacklevel=2,
        )
    for name in config.layers:
        write_npz(out / TOPK / f"{layer_file_name(name)}.npz", **topk[name])
    write_csv(out / UNITS, units)
    write_csv(out / IMAGES, images)
    write_json(out / MANIFEST, manifest)


def run_manifest(written: Written, state: PassState) -> dict:
    """``manifest.json`` of a run (without its run id)."""
    config = written.config
    return {
        "dissect_version": __version__,
        "model": written.loaded.spec,
        "weights": written.loaded.weights,
        "data": written.source.spec,
        "preprocess": written.preprocess.to_dict(),
        "config": config.to_dict(),
        "geometry": {name: written.geometry[name].to_dict() for name in config.layers},
        "n_images": len(written.source),
        "n_skipped": len(state.skipped),
        "world_size": distributed.world_size(),
        "seconds": round(state.seconds, 3),
        "probe_seconds": round(written.probe_seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def images_table(source: ImageSource, skipped: Sequence[tuple[int, str]]) -> pd.DataFrame:
    """``index,path,skipped,reason`` for every image of ``source``."""
    reasons = dict(skipped)
    return pd.DataFrame(
        {
            "index": np.arange(len(source)),
            "path": [source.image_id(i) for i in range(len(source))],
            "skipped": [i in reasons for i in range(len(source))],
            "reason": [reasons.get(i, "") for i in range(len(source))],
        }
    )
