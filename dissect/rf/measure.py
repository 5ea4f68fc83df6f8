"""Measure receptive fields layer by layer, resumably, and write them as each layer finishes.

:func:`receptive_fields` (``dissect rf``) spreads each layer's units over the processes of a
torchrun launch, measures them with :func:`~dissect.rf.discrepancy.discrepancy_maps` (one
:class:`LayerJob` per layer and process), writes ``receptive_fields/<layer>.npz`` and adds the
layer's rows to ``receptive_fields.csv`` and ``receptive_fields_layers.csv`` at once, so an
interruption never loses a finished layer. The finished passes of the layer in flight are saved to
this process's :class:`~dissect.checkpoint.Checkpoint` (``receptive_fields/.checkpoint/``) every
``checkpoint_seconds`` and on Ctrl-C / SIGTERM, which are deferred to the end of the batch in
flight; a checkpoint of other settings is refused (``restart`` discards it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import distributed
from ..checkpoint import Checkpoint, StopRequest, deferred_interrupts, format_refusal
from ..config import OcclusionConfig, ResumeConfig, RfOptions
from ..device import pick_device
from ..directory import (
    RF_CHECKPOINT,
    RF_LAYERS,
    RF_MAPS,
    RF_UNITS,
    keep_run_rows,
    layer_file_name,
    read_table,
)
from ..dissection import Dissection, load_dissected_model, open_dissected_data
from ..errors import DissectError
from ..io import read_npz, write_csv, write_npz
from ..lock import writes
from ..models import LoadedModel
from .discrepancy import discrepancy_maps
from .maps import (
    MASSES,
    average_maps,
    layer_summary,
    map_radius,
    rf_mass_size,
    rf_size,
    unit_rows,
)
from .occlusion import Measurements, noise_patch, occluder_corners

#: Version 2: clipped last occluder window, per-offset averaging, mass-rule sizes.
VERSION = 2
#: Recorded in every maps file's parameters: the format of the partial files of version 2 (which
#: are now checkpoints); kept so that maps files measured since then are still reused.
FORMAT = 2
#: Order of the fast methods' occluded passes, which a checkpoint's count of finished passes
#: refers to; part of its fingerprint, so a checkpoint of another order is refused. Order 2:
#: incremental passes batched by their window at the costliest step; order 3: and by the extent
#: of their box.
PASS_ORDER = 3
#: Arrays of a layer's maps file with one entry per unit.
PER_UNIT = (
    "maps",
    "units",
    "n_images",
    "rf_empirical",
    "max_discrepancy",
    *(f"rf_mass{round(100 * m)}" for m in MASSES),
)


@writes("dissection")
def receptive_fields(
    dissection: str | Path | Dissection,
    layers: Sequence[str] | None = None,
    units: Sequence[int] | None = None,
    config: OcclusionConfig | None = None,
    *,
    model: LoadedModel | None = None,
    device: str = RfOptions.device,
    progress: bool = True,
    **resume: Any,
) -> pd.DataFrame:
    """Measure empirical receptive fields of units of a dissection and write them to it.

    Parameters
    ----------
    dissection : path-like or Dissection
        A dissection directory (``dissect run``).
    layers : sequence of str, optional
        Layers to measure (default: every dissected layer).
    units : sequence of int, optional
        Units to measure in each layer (default: all).
    config : OcclusionConfig, optional
        Occlusion parameters (default: 11 px occluder, stride 3, top 20 images, ``peak``).
    model : LoadedModel, optional
        The dissected model, when it cannot be reloaded from the manifest's MODEL spec.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    progress : bool
        Show progress bars.
    **resume
        ``checkpoint_seconds`` (float, 60 by default, :class:`ResumeConfig`): how often the
        finished passes of the layer in flight are saved; they are also saved on Ctrl-C /
        SIGTERM. ``restart`` (bool): discard the checkpoint of an interrupted run instead of
        resuming it (finished layers measured with the same parameters are still reused).

    Returns
    -------
    DataFrame
        One row per unit: ``layer, unit, rf_empirical, rf_theoretical, n_images, ratio,
        max_discrepancy, rf_theoretical_h, rf_theoretical_w, rf_mass50, rf_mass80``. The same
        rows (plus those of layers measured earlier) are written to ``receptive_fields.csv`` as
        each layer finishes; the per-layer summary to ``receptive_fields_layers.csv``, the maps
        to ``receptive_fields/<layer>.npz``.

    Raises
    ------
    DissectError
        If the checkpoint was left by a run with other settings (and ``restart`` is not set).
    """
    restart = bool(resume.pop("restart", False))
    seconds = ResumeConfig(**resume).checkpoint_seconds
    config = config or OcclusionConfig()
    dissection = dissection if isinstance(dissection, Dissection) else Dissection(dissection)
    layers = dissection.check_layers(layers)
    chosen = {layer: dissection.check_units(layer, units) for layer in layers}
    preprocess = dissection.preprocess
    config.check_image(preprocess.size)
    for layer in layers:
        Measurements.from_topk(dissection.topk(layer), chosen[layer][:1], config.top)
    loaded = load_dissected_model(dissection, model)
    source = open_dissected_data(dissection)
    torch_device = pick_device(device)
    distributed.init(torch_device)
    torch_device = distributed.local_device(torch_device)
    checkpoint = rf_checkpoint(dissection, layers, units, config, restart)
    saved = checkpoint.load()
    tables = RfTables(dissection)
    with deferred_interrupts() as stop:
        for layer in layers:
            job = LayerJob(
                dissection,
                layer,
                distributed.shard(chosen[layer]),
                config,
                loaded.module,
                lambda index: preprocess.tensor(source.read_rgb(index)),
                noise_patch(preprocess, config.occluder, config.seed),
                torch_device,
                progress and distributed.is_main(),
                seconds,
                stop,
                checkpoint,
                saved if saved is not None and saved["layer"] == layer else None,
            )
            arrays = measure_shards(job, chosen[layer])
            if distributed.is_main():
                tables.add(layer, unit_rows(layer, dissection.geometry(layer), arrays))
            distributed.barrier()  # rank 0 has written the layer's rows
            if stop.requested:  # honoured between layers by the naive method
                raise KeyboardInterrupt(stop.signal)
    checkpoint.remove(distributed.world_size())
    return tables.table if distributed.is_main() else tables.read()


def rf_checkpoint(
    dissection: Dissection,
    layers: Sequence[str],
    units: Sequence[int] | None,
    config: OcclusionConfig,
    restart: bool,
) -> Checkpoint:
    """This process's checkpoint of a ``dissect rf`` run (the finished passes of the layer in
    flight), discarded first when ``restart``; a partial file of an earlier version is refused.

    The fingerprint holds everything the saved passes depend on: the run of the top images, the
    layers and units, the occlusion parameters, the pass order and the number of processes.
    """
    fingerprint = {
        "pass": "rf",
        "run_id": str(dissection.run_id),
        "world_size": distributed.world_size(),
        "layers": list(layers),
        "units": "all" if units is None else [int(unit) for unit in units],
        **config.to_dict(),
        "version": VERSION,
        "pass_order": PASS_ORDER,
    }
    checkpoint = Checkpoint(dissection.directory, fingerprint, distributed.rank(), RF_CHECKPOINT)
    # ``<layer>.partial.npz``: what versions before rf's checkpoints saved.
    earlier = sorted(dissection.path(RF_MAPS).glob("*.partial.npz"))
    if restart:
        checkpoint.remove(distributed.world_size())
        for path in earlier:
            path.unlink(missing_ok=True)
    elif earlier:
        raise DissectError(format_refusal(earlier[0], None))
    return checkpoint


class RfTables:
    """``receptive_fields.csv`` and its per-layer summary, rewritten as each layer finishes.

    Rows of layers not measured again are kept when they belong to the directory's run; those
    of another run are dropped.
    """

    def __init__(self, dissection: Dissection):
        self.dissection = dissection
        self.path = dissection.path(RF_UNITS)
        self.previous = pd.DataFrame()
        previous = read_table(dissection.directory, RF_UNITS) if distributed.is_main() else None
        if previous is not None:
            self.previous = keep_run_rows(previous, dissection.run_id)
        self.frames: list[pd.DataFrame] = []
        self.table = pd.DataFrame()

    def add(self, layer: str, rows: pd.DataFrame) -> None:
        """The finished ``layer``'s rows: write both tables again."""
        run = self.dissection.run_id
        self.frames.append(rows)
        table = pd.concat(self.frames, ignore_index=True).assign(run_id=run)
        if "layer" in self.previous:
            measured = {frame["layer"].iloc[0] for frame in self.frames if len(frame)}
            kept = self.previous[~self.previous["layer"].isin(measured | {layer})]
            table = pd.concat([kept, table], ignore_index=True)
        depth = {name: position for position, name in enumerate(self.dissection.layers)}
        table = table.sort_values(
            ["layer", "unit"], key=lambda c: c.map(depth) if c.name == "layer" else c
        )
        self.table = table.reset_index(drop=True)
        write_csv(self.path, self.table)
        write_csv(self.dissection.path(RF_LAYERS), layer_summary(self.table).assign(run_id=run))

    def read(self) -> pd.DataFrame:
        """The table rank 0 wrote (on the other ranks)."""
        return read_table(self.dissection.directory, RF_UNITS)


@dataclass(frozen=True)
class LayerJob:
    """The measurement of some units of one layer in one process.

    Attributes
    ----------
    dissection : Dissection
        The directory (top images, geometry, run id).
    layer : str
        The measured layer.
    units : sequence of int
        This process's units of the layer.
    config : OcclusionConfig
        Occluder, stride, top images, batch size.
    module : nn.Module
        The network.
    load_image : callable
        ``load_image(index)``: the preprocessed (3, H, W) tensor of an image.
    patch : Tensor
        The noise occluder.
    device : torch.device
        Where the passes run.
    progress : bool
        Show a progress bar.
    checkpoint_seconds : float
        Seconds between two saves of the finished passes.
    stop : StopRequest
        Set on Ctrl-C / SIGTERM: the batch in flight is saved and the run stops.
    checkpoint : Checkpoint
        This process's checkpoint of the run (:func:`rf_checkpoint`).
    resumed : dict or None
        The saved state of this layer (``grids``, ``done``) when the run resumes it.
    """

    dissection: Dissection
    layer: str
    units: Sequence[int]
    config: OcclusionConfig
    module: torch.nn.Module
    load_image: Callable[[int], torch.Tensor]
    patch: torch.Tensor
    device: torch.device
    progress: bool
    checkpoint_seconds: float
    stop: StopRequest
    checkpoint: Checkpoint
    resumed: dict | None


def measure_shards(job: LayerJob, every: Sequence[int]) -> dict[str, np.ndarray] | None:
    """Measure this process's units of ``job.layer``; rank 0 joins every rank's into the file
    one process would write, and returns the arrays (None on the other ranks)."""
    dissection, layer = job.dissection, job.layer
    final = maps_path(dissection, layer)
    if distributed.world_size() > 1:
        final = final.with_name(f"{final.stem}.rank{distributed.rank()}.npz")
    arrays = measure_layer(job, final) if job.units else None
    if distributed.world_size() == 1:
        return arrays
    parts = distributed.gather(arrays)
    if distributed.is_main():
        params = measurement_params(job.config, every, dissection.run_id)
        arrays = join_parts([part for part in parts if part is not None], params)
        write_npz(maps_path(dissection, layer), **arrays)
    distributed.barrier()
    final.unlink(missing_ok=True)
    return arrays


def measurement_params(config: OcclusionConfig, units: Sequence[int], run_id: str) -> str:
    """What a layer's maps file was measured with (a rerun with the same reuses it)."""
    # ``version``: how grids and maps are computed; files of an earlier version are measured again.
    # ``format``: the format of rf's partial files (:data:`FORMAT`).
    # ``run``: the dissection's run id: maps of another run's top images are measured again.
    fields = {"config": config.to_dict(), "units": list(units), "version": VERSION, "run": run_id}
    return json.dumps({**fields, "format": FORMAT}, sort_keys=True)


def join_parts(parts: list[dict], params: str) -> dict:
    """The maps arrays of several ranks' units, in rank (= unit list) order."""
    joined = {key: np.concatenate([part[key] for part in parts]) for key in PER_UNIT}
    shared = {key: parts[0][key] for key in ("radius", "rf_theoretical")}
    return {**joined, **shared, "params": np.str_(params)}


def maps_path(dissection: Dissection, layer: str) -> Path:
    """Where the averaged maps of ``layer`` are kept."""
    return dissection.path(RF_MAPS, f"{layer_file_name(layer)}.npz")


def load_maps(dissection: str | Path | Dissection, layer: str) -> dict[str, np.ndarray]:
    """Read ``receptive_fields/<layer>.npz``: ``maps, units, n_images, rf_empirical, radius``...

    Raises
    ------
    DissectError
        If the layer has not been measured.
    """
    dissection = dissection if isinstance(dissection, Dissection) else Dissection(dissection)
    path = maps_path(dissection, layer)
    if not path.is_file():
        raise DissectError(
            f"no receptive fields measured for layer {layer!r} in {str(dissection.directory)!r}; "
            f"run dissect rf {dissection.directory} --layers {layer}."
        )
    return read_npz(path)


class _Partial:
    """A layer's finished passes (resumed from the job's checkpoint when it holds them), saved
    to the checkpoint by time and when a stop is asked."""

    def __init__(self, job: LayerJob, shape: tuple[int, ...]):
        self.job = job
        self.grids, self.done = np.zeros(shape, "f4"), 0
        if job.resumed is not None:
            self.grids, self.done = job.resumed["grids"].numpy(), int(job.resumed["done"])
        self.saved = time.monotonic()

    def save(self) -> None:
        grids = torch.from_numpy(self.grids)
        self.job.checkpoint.save({"layer": self.job.layer, "grids": grids, "done": self.done})
        self.saved = time.monotonic()

    def checkpoint(self, finished: int) -> None:
        """Called after every batch of passes: save when due; stop when asked."""
        self.done = finished
        if self.job.stop.requested:
            self.save()
            raise KeyboardInterrupt(self.job.stop.signal)
        if time.monotonic() - self.saved > self.job.checkpoint_seconds:
            self.save()


def measure_layer(job: LayerJob, final: Path) -> dict[str, np.ndarray]:
    """Measure one layer's units (or reuse the finished file ``final``); return its arrays."""
    dissection, layer, config = job.dissection, job.layer, job.config
    geometry = dissection.geometry(layer)
    params = measurement_params(config, job.units, dissection.run_id)
    if final.is_file():
        stored = read_npz(final)
        if str(stored["params"]) == params:
            return stored
    measurements = Measurements.from_topk(dissection.topk(layer), job.units, config.top)
    image_size = dissection.preprocess.size
    corners = [len(occluder_corners(side, config.occluder, config.stride)) for side in image_size]
    partial = _Partial(job, (len(measurements), *corners))
    if job.progress:
        print(
            f"dissect rf: layer {layer}, {len(job.units)} unit(s), {len(measurements)} top images"
        )
    try:
        discrepancy_maps(
            job.module,
            layer,
            geometry,
            job.load_image,
            measurements,
            job.patch,
            config,
            device=job.device,
            progress=job.progress,
            grids=partial.grids,
            done=partial.done,
            checkpoint=partial.checkpoint,
            image_size=image_size,
        )
    except KeyboardInterrupt:
        if not job.stop.requested:
            partial.save()  # a direct Ctrl-C: the passes recorded so far
        raise
    arrays = layer_arrays(job, partial.grids, measurements, params)
    write_npz(final, **arrays)
    return arrays


def layer_arrays(
    job: LayerJob, grids: np.ndarray, measurements: Measurements, params: str
) -> dict[str, np.ndarray]:
    """The arrays of a layer's maps file, from the discrepancy of every measurement."""
    geometry, config = job.dissection.geometry(job.layer), job.config
    image_size = job.dissection.preprocess.size
    radius = map_radius(geometry, config, image_size)
    maps, counts, _ = average_maps(
        grids, measurements, job.units, geometry, config, radius, image_size
    )
    return {
        "maps": maps,
        "units": np.asarray(job.units, dtype=np.int64),
        "n_images": counts,
        "rf_empirical": rf_size(maps, config.fraction).astype(np.float32),
        **{f"rf_mass{round(100 * m)}": rf_mass_size(maps, m).astype(np.float32) for m in MASSES},
        "max_discrepancy": maps.reshape(len(maps), -1).max(1),
        "radius": np.int64(radius),
        "rf_theoretical": np.asarray(geometry.rf, dtype=np.int64),
        "params": np.str_(params),
    }
