"""Where an upsampled unit map is placed on the image: the placements ``--align`` offers.

The stages that upsample unit maps (``dissect run --iou``, ``dissect autolabel``, ``dissect
segment``, ``dissect export``) place feature cell ``i`` of a layer at input pixel
``offset + stride * i`` (:mod:`dissect.upsample`). This module chooses that stride and offset:

- ``theoretical``: the layer's probed geometry, the centre of cell i's theoretical receptive
  field (:class:`~dissect.geometry.LayerGeometry`);
- ``resize``: a plain resize of the ``n``-cell map onto ``S`` pixels (NetDissect-Lite's
  bilinear resize with ``align_corners=False``): stride ``S / n``, cell i at
  ``(S / n) * i + (S / n - 1) / 2``;
- ``empirical``: the theoretical placement shifted by the mean centroid (dy, dx) of the layer's
  averaged occlusion maps (``dissect rf``), each measured from the theoretical centre of its
  unit's peak cell: where the units were measured to look, without using the concept masks.

:func:`placements` returns the geometry every layer is upsampled with; :func:`record_alignment`
writes it into ``manifest.json`` (key ``alignment``: per stage, per layer). The evidence behind the
default (:data:`dissect.config.ALIGN`) is in ``docs/findings.md`` and
``benchmarks/bench_alignment.py``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

import numpy as np

from .config import check_align, image_hw
from .directory import MANIFEST, RF_MAPS, layer_file_name, read_manifest
from .dissection import Dissection
from .errors import DissectError
from .geometry import LayerGeometry
from .io import read_npz, write_json


def resize_geometry(geometry: LayerGeometry, image_size: int | tuple[int, int]) -> LayerGeometry:
    """``geometry`` with the stride and offset of a plain resize of its map onto the image.

    Parameters
    ----------
    geometry : LayerGeometry
        The layer's probed geometry (its ``output_shape`` gives the map's cells).
    image_size : int or (int, int)
        Side of the square input, or its (height, width).

    Returns
    -------
    LayerGeometry
        Cell i along an axis of ``n`` cells over ``S`` pixels centred at ``(S / n) * i +
        (S / n - 1) / 2``; non-spatial layers unchanged.
    """
    if not geometry.is_spatial:
        return geometry
    stride = tuple(
        side / cells
        for side, cells in zip(image_hw(image_size), geometry.output_shape[1:], strict=True)
    )
    offset = tuple((step - 1) / 2 for step in stride)
    return dataclasses.replace(geometry, stride=stride, offset=offset)


def map_centroid(maps: np.ndarray) -> tuple[float, float]:
    """Mean centroid (dy, dx), in pixels from the centre, of averaged occlusion maps.

    Parameters
    ----------
    maps : ndarray
        (U, 2R+1, 2R+1) averaged discrepancy maps, centred on each unit's peak cell (as
        ``dissect rf`` stores them). Negative and non-finite values weigh nothing.

    Returns
    -------
    (float, float)
        The centroid of each unit's map, averaged over the units whose map has any weight.

    Raises
    ------
    DissectError
        If no map has any weight.
    """
    mass = np.clip(np.nan_to_num(np.asarray(maps, dtype=np.float64)), 0, None)
    radius = (mass.shape[1] - 1) // 2
    grid = np.arange(-radius, radius + 1)
    total = mass.sum((1, 2))
    kept = total > 0
    if not kept.any():
        raise DissectError("every averaged occlusion map is zero: no centroid to align with.")
    dy = (mass.sum(2) * grid).sum(1)[kept] / total[kept]
    dx = (mass.sum(1) * grid).sum(1)[kept] / total[kept]
    return float(dy.mean()), float(dx.mean())


def empirical_shift(dissection: Dissection, layer: str) -> tuple[float, float]:
    """The mean occlusion-map centroid (dy, dx) of ``layer``, from ``dissect rf``'s results.

    Raises
    ------
    DissectError
        If the layer's receptive fields were not measured for this run, naming the command.
    """
    fix = f"dissect rf {dissection.directory} --layers {layer}"
    path = dissection.path(RF_MAPS, f"{layer_file_name(layer)}.npz")
    if not path.is_file():
        raise DissectError(
            f"--align empirical places the maps of layer {layer!r} by its measured receptive "
            f"fields, which {str(dissection.directory)!r} does not have; measure them first: "
            f"{fix} (or choose --align theoretical or resize)."
        )
    stored = read_npz(path)
    params = json.loads(str(stored["params"])) if "params" in stored else {}
    dissection.check_run(params.get("run", ""), f"{RF_MAPS}/{path.name}", fix)
    try:
        return map_centroid(stored["maps"])
    except DissectError as error:
        raise DissectError(f"layer {layer!r}: {error} Measure more units: {fix}") from None


def placed_geometry(dissection: Dissection, layer: str, align: str) -> LayerGeometry:
    """The stride and offset ``layer``'s maps are upsampled with under ``align``."""
    geometry = dissection.geometry(layer)
    if check_align(align) == "resize":
        return resize_geometry(geometry, dissection.preprocess.size)
    if align == "empirical" and geometry.is_spatial:
        dy, dx = empirical_shift(dissection, layer)
        return dataclasses.replace(
            geometry, offset=(geometry.offset[0] + dy, geometry.offset[1] + dx)
        )
    return geometry


def placements(
    dissection: Dissection, layers: Sequence[str], align: str
) -> dict[str, LayerGeometry]:
    """:func:`placed_geometry` of every layer, checked before any work starts.

    Raises
    ------
    DissectError
        For ``empirical``, naming every layer without receptive fields of this run.
    """
    check_align(align)
    if align == "empirical":
        missing = [
            layer
            for layer in layers
            if dissection.geometry(layer).is_spatial
            and not dissection.path(RF_MAPS, f"{layer_file_name(layer)}.npz").is_file()
        ]
        if missing:
            raise DissectError(
                f"--align empirical places each layer's maps by its measured receptive fields; "
                f"{str(dissection.directory)!r} has none for {', '.join(missing)}. Measure them "
                f"first: dissect rf {dissection.directory} --layers {','.join(missing)} (or "
                "choose --align theoretical or resize)."
            )
    return {layer: placed_geometry(dissection, layer, align) for layer in layers}


def alignment_record(
    dissection: Dissection, align: str, placed: dict[str, LayerGeometry]
) -> dict[str, dict]:
    """What :func:`record_alignment` stores per layer: the placement, the stride and offset the
    maps were upsampled with, and the shift (dy, dx) from the theoretical offset, in pixels."""
    record = {}
    for layer, geometry in placed.items():
        theoretical = dissection.geometry(layer).offset
        record[layer] = {
            "align": align,
            "stride": [float(value) for value in geometry.stride],
            "offset": [float(value) for value in geometry.offset],
            "shift": [float(a - b) for a, b in zip(geometry.offset, theoretical, strict=True)],
        }
    return record


def record_alignment(
    dissection: Dissection, stage: str, align: str, placed: dict[str, LayerGeometry]
) -> None:
    """Record in ``manifest.json`` how ``stage`` placed each layer's maps (``iou``; ``segments``
    or ``segments_disk``, the pictures' folder).

    ``manifest["alignment"][stage][layer]`` is :func:`alignment_record`'s entry; layers placed
    earlier by the stage and not now keep theirs. The run id is not changed (the placement is a
    choice of the later stages, not of the pass).
    """
    manifest = read_manifest(dissection.directory)
    if manifest is None:
        return
    stages = manifest.setdefault("alignment", {})
    stages[stage] = {**stages.get(stage, {}), **alignment_record(dissection, align, placed)}
    write_json(dissection.path(MANIFEST), manifest)
    dissection.manifest["alignment"] = stages
