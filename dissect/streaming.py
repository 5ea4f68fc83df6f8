"""The one streaming pass: forward hooks fold every traced layer into running statistics.

``run_dissection`` loads model and data, probes the layer geometry, runs the pass (sharded under
torchrun, checkpointed, resumable) and writes the dissection directory (:mod:`dissect.dissection`).
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__, distributed
from .checkpoint import (
    DEFAULT_CHECKPOINT_EVERY,
    Checkpoint,
    deferred_interrupts,
    module_digest,
    source_digest,
)
from .datasets import open_data
from .device import pick_device
from .dissection import (
    MANIFEST,
    Dissection,
    RunConfig,
    layer_file_name,
    retire_stale_outputs,
    run_digest,
)
from .errors import DissectError
from .geometry import LayerGeometry, layer_geometry
from .hooks import LayerTrace, resolve_layers
from .images import ImageSource, Preprocess, make_loader, warn_skipped
from .io import write_csv, write_json, write_npz
from .lock import writes
from .models import LoadedModel, load_model
from .running_stats import UnitStats

if TYPE_CHECKING:
    from .iou.samepass import PendingIoU

_DEFAULT_KINDS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def default_layers(module: nn.Module) -> list[str]:
    """Every convolution and pooling layer, in definition order.

    Layers of a ``.pt2`` program count by the module they were exported from
    (``original_type``, see :mod:`dissect.models.export`).
    """
    names = {f"{kind.__module__}.{kind.__qualname__}" for kind in _DEFAULT_KINDS}
    return [
        name
        for name, child in module.named_modules()
        if name
        and (isinstance(child, _DEFAULT_KINDS) or getattr(child, "original_type", None) in names)
    ]


@dataclass
class PassResult:
    """Statistics of one pass (or of one rank's shard of it) and the images that were skipped.

    Attributes
    ----------
    stats : dict of str to UnitStats
        Per layer; empty until a readable image has been seen.
    skipped : list of (int, str)
        Unreadable images (index, reason), by index.
    seconds : float
        Time spent in the pass, over all sessions of a resumed run (the slowest rank's).
    done : int
        Images of the shard consumed so far (read or skipped).
    """

    stats: dict[str, UnitStats]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    done: int = 0

    def merge(self, other: PassResult) -> PassResult:
        """Fold in the result of another shard (disjoint images); return ``self``."""
        for name, stats in other.stats.items():
            if name in self.stats:
                self.stats[name].merge(stats)
            else:
                self.stats[name] = stats
        self.skipped = sorted(self.skipped + other.skipped)
        self.seconds = max(self.seconds, other.seconds)
        self.done += other.done
        return self

    def state_dict(self) -> dict:
        """Tensors on the CPU, numbers and strings (for checkpoints and between processes)."""
        return {
            "stats": {name: _state_to(s.state_dict(), "cpu") for name, s in self.stats.items()},
            "skipped": [[index, reason] for index, reason in self.skipped],
            "seconds": self.seconds,
            "done": self.done,
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> PassResult:
        """Rebuild a result from :meth:`state_dict`, its statistics on ``device``."""
        stats = {
            name: UnitStats.from_state_dict(_state_to(value, device))
            for name, value in state["stats"].items()
        }
        skipped = [(int(index), str(reason)) for index, reason in state["skipped"]]
        return cls(stats, skipped, float(state["seconds"]), int(state["done"]))


def _state_to(state: dict, device: torch.device | str) -> dict:
    """A nested state dict with its tensors on ``device``."""
    moved = {}
    for key, value in state.items():
        if isinstance(value, dict):
            value = _state_to(value, device)
        elif isinstance(value, torch.Tensor):
            value = value.to(device)
        moved[key] = value
    return moved


def _merge_states(first: dict, second: dict, device: torch.device) -> dict:
    merged = PassResult.from_state_dict(first, device)
    return merged.merge(PassResult.from_state_dict(second, device)).state_dict()


def collect_stats(
    module: nn.Module,
    source: ImageSource,
    preprocess: Preprocess,
    config: RunConfig,
    indices: Sequence[int] | None = None,
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    total_images: int | None = None,
    channels_last: Collection[str] | None = None,
    labels: PendingIoU | None = None,
) -> PassResult:
    """Run the images through ``module`` once and accumulate per-unit statistics.

    Parameters
    ----------
    module : nn.Module
        The network, in eval mode.
    source : ImageSource
        Where images come from.
    preprocess : Preprocess
        Resizing and normalisation.
    config : RunConfig
        Layers and pass parameters. ``config.seed`` keys the threshold sketch's sampling with
        the global image index and position, the same on every rank.
    indices : sequence of int, optional
        Which images (default: all of them, in order).
    progress : bool
        Show a tqdm bar with images/s.
    checkpoint : Checkpoint, optional
        Resume from it when it holds a state, and save to it every ``checkpoint_every`` images,
        on Ctrl-C / SIGTERM (then ``KeyboardInterrupt`` is raised) and at the end.
    checkpoint_every : int
        Images between two checkpoints.
    total_images : int, optional
        Images of the whole run, all processes together (default: ``len(indices)``); it bounds
        what the threshold sketches must hold, so shards of one run merge exactly.
    labels : PendingIoU, optional
        Read the concept masks with the images and keep what IoU labels need (``--iou``); its
        state is checkpointed with the statistics.

    Returns
    -------
    PassResult
        Its ``stats`` are empty when no image was readable.
    """
    device = distributed.local_device(pick_device(config.device))
    seed = config.seed
    torch.manual_seed(seed)
    module.to(device)
    indices = list(range(len(source)) if indices is None else indices)
    total_images = len(indices) if total_images is None else total_images
    state = checkpoint.load() if checkpoint is not None else None
    result = PassResult({}) if state is None else PassResult.from_state_dict(state, device)
    if labels is not None:
        labels.load_state_dict(None if state is None else state["iou"])
    loader = (make_loader if labels is None else labels.loader)(
        source, preprocess, indices[result.done :], config.batch_size, config.workers
    )
    bar = tqdm(
        total=len(indices), initial=result.done, unit="img", desc="dissect", disable=not progress
    )
    start, before, unsaved = time.perf_counter(), result.seconds, 0
    batch_indices = torch.empty(0, dtype=torch.int64)
    warned: set[str] = set()  # layers warned about non-finite values, once each

    def add_to_stats(name: str, acts: torch.Tensor) -> None:
        """Fold one layer's output for the current batch into its statistics."""
        if name not in result.stats:
            values = total_images * acts[0, 0].numel()  # the most a unit can see
            result.stats[name] = UnitStats(
                acts.shape[1], config.topk, values, config.quantile, seed, device=acts.device
            )
        found = result.stats[name].add(acts, batch_indices)
        if labels is not None:
            labels.add(name, acts, result.stats[name].tail.lower_bound())
        if found and name not in warned:
            warned.add(name)
            warnings.warn(
                f"layer {name!r} gave {found} NaN or infinite activation value(s) in this batch; "
                "they are left out of its statistics and counted in units.csv (nonfinite). "
                "Check the model's weights and the input normalisation.",
                stacklevel=2,
            )

    with (
        torch.inference_mode(),
        LayerTrace(module, config.layers, stop=True, channels_last=channels_last) as trace,
        deferred_interrupts() as stop,
    ):
        for batch in loader:
            if batch.skipped:
                warn_skipped(source, batch.skipped)
                result.skipped.extend(batch.skipped)
            if len(batch.indices):
                batch_indices = batch.indices.to(device)
                if labels is not None:
                    labels.begin_batch(batch, source)
                trace.stream(add_to_stats, batch.images.to(device, non_blocking=True))
                if labels is not None:
                    labels.end_batch()
            count = len(batch.indices) + len(batch.skipped)
            result.done += count
            unsaved += count
            result.seconds = before + time.perf_counter() - start
            bar.update(count)
            if checkpoint is not None and (unsaved >= checkpoint_every or stop.requested):
                checkpoint.save(_snapshot(result, labels))
                unsaved = 0
            if stop.requested:
                raise KeyboardInterrupt(stop.signal)
    bar.close()
    if checkpoint is not None:
        checkpoint.save(_snapshot(result, labels))  # the shard survives a failed merge/write
    return result


def _snapshot(result: PassResult, labels: PendingIoU | None) -> dict:
    state = result.state_dict()
    return state if labels is None else {**state, "iou": labels.state_dict()}


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
    }


@writes("out")
def run_dissection(
    model: str | nn.Module | LoadedModel,
    data: str | ImageSource,
    out: str | Path,
    layers: Sequence[str] | None = None,
    *,
    weights: str | None = None,
    topk: int = 50,
    quantile: float = 0.005,
    batch_size: int = 64,
    preprocess: Preprocess | None = None,
    device: str = "auto",
    seed: int = 0,
    workers: int = 0,
    progress: bool = True,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    restart: bool = False,
    iou: bool = False,
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
        Layers to dissect; default every convolution and pooling layer.
    weights : str, optional
        State-dict file for a ``file.py:callable`` MODEL.
    topk, quantile, batch_size, device, seed, workers
        See :class:`RunConfig`.
    preprocess : Preprocess, optional
        Input size and normalisation; default the model's own (ImageNet statistics, 224 px).
    progress : bool
        Show a progress bar (rank 0 only).
    checkpoint_every : int
        Images each process handles between two checkpoints.
    restart : bool
        Discard any checkpoint in ``out`` instead of resuming from it (or refusing it, when it
        belongs to a run with other arguments).
    iou : bool
        Also label every unit by IoU with the data's concept masks, in the same pass (see
        :mod:`dissect.iou.samepass`): writes ``iou/`` and the ``iou`` labels as ``dissect
        autolabel --permutations 0`` with the same batch size would.

    Returns
    -------
    Dissection
        The directory just written, opened.
    """
    if checkpoint_every < 1:
        raise DissectError(f"--checkpoint-every must be at least 1 image, got {checkpoint_every}.")
    loaded = load_model(model, weights)
    source = open_data(data)
    preprocess = preprocess or loaded.preprocess
    names = resolve_layers(loaded.module, layers or default_layers(loaded.module))
    config = RunConfig(tuple(names), topk, quantile, batch_size, device, seed, workers)
    torch_device = pick_device(config.device)
    distributed.init(torch_device)
    labels = None
    if iou:  # refuses data without concept masks before the probe's seconds are spent
        from .iou.samepass import PendingIoU

        labels = PendingIoU(source, out, distributed.rank())
    started = time.perf_counter()
    geometry = layer_geometry(loaded.module, names, preprocess.image_size)
    probe_seconds = time.perf_counter() - started
    fingerprint = run_fingerprint(loaded, source, preprocess, config, torch_device)
    if labels is not None:
        fingerprint["iou_concepts_sha256"] = labels.concepts_sha256
    checkpoint = Checkpoint(out, fingerprint, distributed.rank())
    if restart:
        checkpoint.remove(distributed.world_size())
        if labels is not None:
            labels.remove(distributed.world_size())
    shard = distributed.shard(range(len(source)), block=config.batch_size)
    result = collect_stats(
        loaded.module,
        source,
        preprocess,
        config,
        shard,
        progress and distributed.is_main(),
        checkpoint,
        checkpoint_every,
        total_images=len(source),
        channels_last=[name for name in names if geometry[name].channels_last],
        labels=labels,
    )
    device = distributed.local_device(torch_device)
    merged = distributed.gather_and_merge(
        result.state_dict(), functools.partial(_merge_states, device=device)
    )
    problem = None
    if merged is not None:
        merged = PassResult.from_state_dict(merged, device)
        if merged.stats:
            write_dissection(
                out, loaded, source, preprocess, config, geometry, merged, probe_seconds
            )
        else:
            problem = f"no readable image in DATA {source.spec!r}; nothing to dissect."
    problem = distributed.broadcast(problem)  # also: nobody goes on before rank 0 has written
    if problem:
        raise DissectError(problem)
    if labels is not None:
        from .iou.samepass import label_run

        label_run(labels, out, merged.skipped if merged is not None else [], device)
        labels.remove(distributed.world_size())
    checkpoint.remove(distributed.world_size())
    return Dissection(out)


def write_dissection(
    out: str | Path,
    loaded: LoadedModel,
    source: ImageSource,
    preprocess: Preprocess,
    config: RunConfig,
    geometry: dict[str, LayerGeometry],
    result: PassResult,
    probe_seconds: float = 0.0,
) -> Dissection:
    """Write the statistics of a finished pass as a dissection directory (manifest last).

    ``topk/*.npz``, ``max_activation`` and ``threshold`` do not depend on how the images were
    sharded over processes or how often the run was resumed (the threshold sketch's sample is
    keyed on seed, image index and position; see :mod:`dissect.running_stats`).
    ``mean_activation`` is accumulated in float64, where a different summation order changes
    only the last bits, and is stored as float32. ``probe_seconds`` is the time the geometry
    probe took.
    """
    out = Path(out)
    rows, topk = [], {}
    for name in config.layers:
        stats = result.stats[name]
        topk[name] = stats.topk()
        rows.append(
            pd.DataFrame(
                {
                    "layer": name,
                    "unit": np.arange(len(stats.max())),
                    "max_activation": stats.max(),
                    "mean_activation": stats.mean().astype(np.float32),
                    "threshold": stats.threshold(),
                    "quantile": config.quantile,
                    "nonfinite": stats.nonfinite.cpu().numpy(),
                }
            )
        )
    units = pd.concat(rows, ignore_index=True)
    images = images_table(source, result.skipped)
    manifest = {
        "dissect_version": __version__,
        "model": loaded.spec,
        "weights": loaded.weights,
        "data": source.spec,
        "preprocess": preprocess.to_dict(),
        "config": config.to_dict(),
        "geometry": {name: geometry[name].to_dict() for name in config.layers},
        "n_images": len(source),
        "n_skipped": len(result.skipped),
        "world_size": distributed.world_size(),
        "seconds": round(result.seconds, 3),
        "probe_seconds": round(probe_seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tables = [units.to_csv(index=False).encode(), images.to_csv(index=False).encode()]
    tables += [np.ascontiguousarray(array).tobytes()
               for name in config.layers for _, array in sorted(topk[name].items())]  # fmt: skip
    manifest["run_id"] = run_digest(manifest, tables)
    moved = retire_stale_outputs(out, manifest["run_id"])
    if moved is not None:
        warnings.warn(
            f"{str(out)!r} held the outputs of later stages of another run; they were moved to "
            f"{str(moved)!r}. Run those stages again for this run.",
            stacklevel=2,
        )
    for name in config.layers:
        write_npz(out / "topk" / f"{layer_file_name(name)}.npz", **topk[name])
    write_csv(out / "units.csv", units)
    write_csv(out / "images.csv", images)
    write_json(out / MANIFEST, manifest)
    return Dissection(out)


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
