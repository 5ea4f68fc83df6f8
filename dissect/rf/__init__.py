"""Empirical receptive fields by occlusion (Zhou et al., ICLR 2015, section 3.2).

For a unit and each of its top images, a patch of random pixel noise (the *occluder*, ``occluder``
px square) is pasted at every position of a grid with step ``stride`` px (top-left corners
``0, stride, 2 * stride, ...`` until a patch reaches the last pixel; that last one is clipped
by the border where the stride does not fit the image evenly). For each position the
*discrepancy* is measured:

- ``peak`` (default): ``|a_occluded - a_original|`` of the unit at its peak feature position
  (the ``y, x`` stored with the top image);
- ``map``: ``sum |a_occluded - a_original|`` over every position of the unit's feature map.

That gives a discrepancy map per image on the grid of occluder centres. Each map is re-centred on
the input pixel of the unit's peak (:meth:`LayerGeometry.center`): it is sampled at integer pixel
offsets ``-R..R`` from that pixel by bilinear interpolation between occluder centres (the outermost
centre's value between it and the border, nothing outside the image). The
re-centred maps are averaged over the unit's top images, each offset over the images that cover it
(offsets no image covers are mirrored from the opposite side of the peak, see
:func:`~dissect.rf.maps.average_maps`): that average is the unit's empirical receptive field. Its
size is measured by two rules, in input pixels, as the side of a square of the same area:

- half-max (``rf_empirical``, the paper's): the region where the map is at least ``fraction``
  (0.5) of its maximum; sensitive to a sharp maximum;
- mass (``rf_mass50``, ``rf_mass80``): the smallest region that holds 50% (80%) of the map's
  total discrepancy; steadier.

Both include the blur of the occluder itself (a unit that sees one pixel responds to every
occluder covering it). Units whose discrepancy is zero everywhere have no size and are counted
apart (``n_silent`` of the layer summary). ``rf_theoretical`` is the side of the square with the
area of the theoretical receptive field (``rf`` of the layer geometry, padding pixels counted).

Speed. The naive method (:func:`discrepancy_maps` with ``method="naive"``) runs one full forward
per occluder position, per image, per unit. The fast method computes the same numbers with

- one set of occluded passes per *image*, shared by every unit whose top images include it;
- the forward stopped at the measured layer;
- occluders that cannot touch the theoretical receptive field of any measured position of the
  image skipped (their discrepancy is exactly 0 for a convolution/pooling stack);
- each occluded pass restricted to what the occluder can change, in one of two ways:

  - ``crop`` (any network): the pass runs on a crop of the image, the union of the receptive
    fields of the measured positions the occluder touches (for each image, one crop around all
    its peaks or one per peak, whichever covers fewer pixels). The crop's corner is a multiple
    of the layer stride so its feature grid coincides with the image's, and it is flush with the
    image border wherever such a receptive field reaches past it, so zero padding is the same as
    on the whole image; only positions whose whole receptive field lies in the crop are read;
  - ``incremental`` (networks that reach the layer through a plain chain of convolutions, max
    pooling and point-wise modules, checked on the first image): the unoccluded activations of
    every step are kept, and each step recomputes only a window of outputs, reading the kept
    activations around it with the step's own padding: the outputs whose inputs the occluder
    changed *and* that the measured peak positions depend on (for each image, one window around
    all its peaks or one per peak, whichever costs fewer multiply-adds). Passes are batched by
    the side of their window at the costliest step and run at the largest window of their batch
    kind at every step, so each step handles all passes of a batch at once: one gather of the
    kept activations, one paste of the recomputed window, one convolution or pooling, in
    buffers reused from batch to batch;

  ``fast`` picks ``incremental`` when it applies and the crops would cover more than a quarter
  of the image on average, else ``crop``;
- occluded passes streamed in batches of ``batch_size`` whole-image equivalents, never built all
  at once: more passes per batch when they are smaller, as many as hold (channels counted, at
  their largest step, with a convolution's unfolded input) what ``batch_size`` whole-image
  forwards would, so the fast methods' peak memory stays at the naive method's.

All methods use the same seeded noise patch, so their maps agree to float32 round-off.

Resume. Results are written per layer, atomically (``receptive_fields/<layer>.npz``). While a layer
runs, its occluded passes follow a fixed order; every ``checkpoint_seconds`` and on interruption
the finished passes are saved to ``receptive_fields/<layer>.partial.npz``. A rerun with the same
parameters skips finished layers and restarts a partial one after its last saved pass, so an
interruption (Ctrl-C) loses at most the batch in flight; a partial file written by a version of
dissect whose passes ran in another order is measured again.

Layout: :mod:`~dissect.rf.occlusion` (parameters, noise occluder, grid),
:mod:`~dissect.rf.discrepancy` (the entry point of every method), :mod:`~dissect.rf.naive`,
:mod:`~dissect.rf.crop` and :mod:`~dissect.rf.incremental` (one method each),
:mod:`~dissect.rf.schedule` (batching the fast methods' passes), :mod:`~dissect.rf.maps`
(re-centring, averaging, sizes); this module runs the measurement per layer and resumes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import distributed
from ..checkpoint import CHECKPOINT_FORMAT
from ..device import pick_device
from ..dissection import Dissection, layer_file_name
from ..errors import DissectError
from ..io import read_csv, read_npz, write_csv, write_npz
from ..lock import writes
from ..models import LoadedModel
from .discrepancy import discrepancy_maps
from .maps import (
    MASSES,
    _rows,
    average_maps,
    layer_summary,
    map_radius,
    rf_mass_size,
    rf_size,
    theoretical_size,
)
from .occlusion import (
    DISCREPANCIES,
    METHODS,
    Measurements,
    OcclusionConfig,
    noise_patch,
    occluder_corners,
)

__all__ = [
    "DISCREPANCIES",
    "LAYERS_CSV",
    "MAPS_FOLDER",
    "METHODS",
    "UNITS_CSV",
    "Measurements",
    "OcclusionConfig",
    "average_maps",
    "discrepancy_maps",
    "layer_summary",
    "load_maps",
    "map_radius",
    "maps_path",
    "noise_patch",
    "occluder_corners",
    "receptive_fields",
    "rf_mass_size",
    "rf_size",
    "theoretical_size",
]

#: Folder (inside the dissection directory) of the per-layer map files.
MAPS_FOLDER = "receptive_fields"
#: Per-unit table and per-layer summary written by :func:`receptive_fields`.
UNITS_CSV = "receptive_fields.csv"
LAYERS_CSV = "receptive_fields_layers.csv"


@writes("dissection")
def receptive_fields(
    dissection: str | Path | Dissection,
    layers: Sequence[str] | None = None,
    units: Sequence[int] | None = None,
    config: OcclusionConfig | None = None,
    *,
    model: LoadedModel | None = None,
    device: str = "auto",
    progress: bool = True,
    checkpoint_seconds: float = 60.0,
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
    checkpoint_seconds : float
        How often unfinished work of a layer is saved.

    Returns
    -------
    DataFrame
        One row per unit: ``layer, unit, rf_empirical, rf_theoretical, n_images, ratio,
        max_discrepancy, rf_theoretical_h, rf_theoretical_w, rf_mass50, rf_mass80``. The same
        rows (plus those of layers measured earlier) are written to ``receptive_fields.csv``; the
        per-layer summary to ``receptive_fields_layers.csv``, the maps to
        ``receptive_fields/<layer>.npz``.
    """
    config = config or OcclusionConfig()
    dissection = dissection if isinstance(dissection, Dissection) else Dissection(dissection)
    layers = dissection.check_layers(layers)
    chosen = {layer: dissection.check_units(layer, units) for layer in layers}
    preprocess = dissection.preprocess
    config.check_image(preprocess.size)
    for layer in layers:
        Measurements.from_topk(dissection.topk(layer), chosen[layer][:1], config.top)
    loaded = dissection.load_model(model)
    source = dissection.open_data()
    torch_device = pick_device(device)
    distributed.init(torch_device)
    torch_device = distributed.local_device(torch_device)
    patch = noise_patch(preprocess, config.occluder, config.seed)

    def load_image(index: int) -> torch.Tensor:
        return preprocess.tensor(source.read_rgb(index))

    frames = []
    for layer in layers:
        # Under torchrun each rank measures its share of the units (they are independent) into a
        # file of its own; rank 0 joins them into the file one process would write.
        mine = distributed.shard(chosen[layer])
        final = maps_path(dissection, layer)
        if distributed.world_size() > 1:
            final = final.with_name(f"{final.stem}.rank{distributed.rank()}.npz")
        arrays = None
        if mine:
            arrays = _measure_layer(
                dissection, layer, mine, config, loaded.module, load_image, patch,
                torch_device, progress and distributed.is_main(), checkpoint_seconds, final,
            )  # fmt: skip
        if distributed.world_size() > 1:
            parts = distributed.gather(arrays)
            if distributed.is_main():
                arrays = _join(
                    [part for part in parts if part is not None],
                    _params(config, chosen[layer], dissection.run_id),
                )
                write_npz(maps_path(dissection, layer), **arrays)
            distributed.barrier()
            final.unlink(missing_ok=True)
        if distributed.is_main():
            frames.append(_rows(layer, dissection.geometry(layer), arrays))
    if not distributed.is_main():
        distributed.barrier()  # wait for rank 0's tables
        return read_csv(dissection.path(UNITS_CSV), dtype={"layer": str})
    table = pd.concat(frames, ignore_index=True).assign(run_id=dissection.run_id)
    path = dissection.path(UNITS_CSV)
    if path.is_file():
        previous = read_csv(path, dtype={"layer": str, "run_id": str})
        previous = previous[~previous["layer"].isin(layers)]
        if "run_id" in previous:  # rows of another run are dropped, not kept
            previous = previous[previous["run_id"].fillna(dissection.run_id) == dissection.run_id]
        table = pd.concat([previous, table], ignore_index=True)
    depth = {name: position for position, name in enumerate(dissection.layers)}
    table = table.sort_values(
        ["layer", "unit"], key=lambda c: c.map(depth) if c.name == "layer" else c
    )
    table = table.reset_index(drop=True)
    write_csv(path, table)
    write_csv(dissection.path(LAYERS_CSV), layer_summary(table).assign(run_id=dissection.run_id))
    distributed.barrier()
    return table


def _params(config: OcclusionConfig, units: Sequence[int], run_id: str) -> str:
    """What a layer's maps file was measured with (a rerun with the same reuses it)."""
    # ``version``: how grids and maps are computed; files of an earlier version are measured again.
    # ``format``: the checkpoint format of dissect (see dissect.checkpoint.CHECKPOINT_FORMAT).
    # ``run``: the dissection's run id: maps of another run's top images are measured again.
    fields = {"config": config.to_dict(), "units": list(units), "version": _VERSION, "run": run_id}
    return json.dumps({**fields, "format": CHECKPOINT_FORMAT}, sort_keys=True)


#: Version 2: clipped last occluder window, per-offset averaging, mass-rule sizes.
_VERSION = 2
#: Order of the fast methods' occluded passes, which a partial file's count of finished passes
#: refers to; a partial file of another order is measured again. Order 2: incremental passes
#: batched by their window at the costliest step.
_PASS_ORDER = 2


def _join(parts: list[dict], params: str) -> dict:
    """The maps arrays of several ranks' units, in rank (= unit list) order."""
    joined = {key: np.concatenate([part[key] for part in parts]) for key in _PER_UNIT}
    shared = {key: parts[0][key] for key in ("radius", "rf_theoretical")}
    return {**joined, **shared, "params": np.str_(params)}


#: Arrays of a layer's maps file with one entry per unit.
_PER_UNIT = (
    "maps", "units", "n_images", "rf_empirical", "max_discrepancy",
    *(f"rf_mass{round(100 * m)}" for m in MASSES),
)  # fmt: skip


def maps_path(dissection: Dissection, layer: str) -> Path:
    """Where the averaged maps of ``layer`` are kept."""
    return dissection.path(MAPS_FOLDER, f"{layer_file_name(layer)}.npz")


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


def _measure_layer(
    dissection, layer, units, config, module, load_image, patch, device, progress,
    checkpoint_seconds, final,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Measure one layer's units (or reuse the finished file ``final``); return its arrays."""
    geometry = dissection.geometry(layer)
    params = _params(config, units, dissection.run_id)
    if final.is_file():
        stored = read_npz(final)
        if str(stored["params"]) == params:
            return stored
    measurements = Measurements.from_topk(dissection.topk(layer), units, config.top)
    partial = final.with_name(final.stem + ".partial.npz")
    # A partial file holds passes in the order of the code that wrote it.
    resumable = json.dumps({"params": params, "pass_order": _PASS_ORDER}, sort_keys=True)
    grids, done = None, 0
    if partial.is_file():
        stored = read_npz(partial)
        if str(stored["params"]) == resumable:
            grids, done = stored["grids"], int(stored["done"])
    state = {"done": done, "saved": time.monotonic()}

    def save() -> None:
        write_npz(partial, grids=result, done=np.int64(state["done"]), params=np.str_(resumable))
        state["saved"] = time.monotonic()

    def checkpoint(finished: int) -> None:
        state["done"] = finished
        if time.monotonic() - state["saved"] > checkpoint_seconds:
            save()

    image_size = dissection.preprocess.size
    corners = [len(occluder_corners(side, config.occluder, config.stride)) for side in image_size]
    result = grids if grids is not None else np.zeros((len(measurements), *corners), "f4")
    if progress:
        print(f"dissect rf: layer {layer}, {len(units)} unit(s), {len(measurements)} top images")
    try:
        discrepancy_maps(
            module, layer, geometry, load_image, measurements, patch, config,
            device=device, progress=progress, grids=result, done=done, checkpoint=checkpoint,
        )  # fmt: skip
    except KeyboardInterrupt:
        save()
        raise
    radius = map_radius(geometry, config, image_size)
    maps, counts, _ = average_maps(
        result, measurements, units, geometry, config, radius, image_size
    )
    arrays = {
        "maps": maps,
        "units": np.asarray(units, dtype=np.int64),
        "n_images": counts,
        "rf_empirical": rf_size(maps, config.fraction).astype(np.float32),
        **{f"rf_mass{round(100 * m)}": rf_mass_size(maps, m).astype(np.float32) for m in MASSES},
        "max_discrepancy": maps.reshape(len(maps), -1).max(1),
        "radius": np.int64(radius),
        "rf_theoretical": np.asarray(geometry.rf, dtype=np.int64),
        "params": np.str_(params),
    }
    write_npz(final, **arrays)
    if partial.is_file():
        partial.unlink()
    return arrays
