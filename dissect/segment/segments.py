"""A unit's top images segmented: maps upsampled, thresholded (or disks drawn), pictures made.

:func:`iter_segments` recomputes the maps of a layer's top images (:func:`~dissect.segment.maps.
top_maps`) and yields a :class:`UnitSegments` per unit.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..config import SegmentConfig
from ..directory import RF_LAYERS
from ..dissection import Dissection, load_dissected_model, open_dissected_data
from ..errors import DissectError
from ..models import LoadedModel
from ..upsample import upsample_maps
from .maps import top_maps
from .pictures import crop, dim_outside, image_grid, outline
from .rules import RULES, disk_masks, peak_thresholds, threshold_masks


@dataclass
class UnitSegments:
    """One unit's top images with the region it responds to.

    Attributes
    ----------
    layer : str
        Layer name.
    unit : int
        Unit number.
    indices : ndarray
        (K,) dataset index of each top image, best first.
    scores : ndarray
        (K,) the unit's peak activation on each.
    images : ndarray
        (K, H, W, 3) uint8: the images as the network saw them.
    maps : ndarray
        (K, H, W) float32 activation maps upsampled to the input.
    thresholds : ndarray
        (K,) the threshold applied to each map.
    masks : ndarray
        (K, H, W) bool: the region above threshold.
    """

    layer: str
    unit: int
    indices: np.ndarray
    scores: np.ndarray
    images: np.ndarray
    maps: np.ndarray
    thresholds: np.ndarray
    masks: np.ndarray

    def segmented(self, dim: float = 0.25) -> np.ndarray:
        """(K, H, W, 3) images with the rest dimmed (see :func:`dim_outside`)."""
        return np.stack(
            [dim_outside(i, m, dim) for i, m in zip(self.images, self.masks, strict=True)]
        )

    def outlined(self, color: tuple[int, int, int] = (255, 255, 0)) -> np.ndarray:
        """(K, H, W, 3) images with the region's outline (see :func:`outline`)."""
        return np.stack(
            [outline(i, m, color) for i, m in zip(self.images, self.masks, strict=True)]
        )

    def crops(self, margin: int = 0) -> list[np.ndarray]:
        """The tight crop around the region of each top image (sizes differ)."""
        return [crop(i, m, margin) for i, m in zip(self.images, self.masks, strict=True)]

    def grid(self, dim: float = 0.25, columns: int | None = None) -> np.ndarray:
        """The segmented top images side by side, as one uint8 image."""
        return image_grid(list(self.segmented(dim)), columns)


def iter_segments(
    dissection: Dissection,
    layer: str,
    units: Sequence[int] | None = None,
    top: int | None = None,
    *,
    peak_fraction: float | None = None,
    rule: str = "threshold",
    rf_size: float | None = None,
    model: str | torch.nn.Module | LoadedModel | None = None,
    batch_size: int = SegmentConfig.batch_size,
    device: str = SegmentConfig.device,
    progress: bool = True,
) -> Iterator[UnitSegments]:
    """Segment the top images of units of one layer.

    Parameters
    ----------
    dissection : Dissection
        An opened dissection directory.
    layer : str
        A dissected layer.
    units : sequence of int, optional
        Units to segment (default: all).
    top : int, optional
        How many top images per unit (default: all the dissection kept).
    peak_fraction : float, optional
        ``threshold`` rule: threshold each map at this fraction of its own peak instead of the
        unit's threshold T; ``disk`` rule: draw the cells at least this fraction of the map's
        maximum (default 0.5).
    rule : str
        ``threshold`` (NetDissect's, default) or ``disk`` (Zhou et al.'s), see the module
        docstring.
    rf_size : float, optional
        ``disk`` rule: the receptive-field size in pixels (default: the layer's mean empirical
        size from ``receptive_fields_layers.csv``).
    model : str, nn.Module or LoadedModel, optional
        The dissected model (default: loaded again from the manifest's MODEL spec); required
        when the dissection was run on an in-memory module.
    batch_size : int
        Images per forward when recomputing the maps.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    progress : bool
        Show progress bars.

    Yields
    ------
    UnitSegments
        One per unit, in the order of ``units``; a unit's empty top-K slots (fewer images than
        K in the data) are left out.
    """
    if not dissection.geometry(layer).is_spatial:
        raise DissectError(
            f"layer {layer!r} has no spatial map (output {dissection.geometry(layer).output_shape})"
            "; segment a convolution or pooling layer."
        )
    units = dissection.check_units(layer, units)
    if top is not None and top < 1:
        raise DissectError(f"--top must be at least 1, got {top}.")
    if rule not in RULES:
        raise DissectError(f"--rule must be one of {', '.join(RULES)}, got {rule!r}.")
    if peak_fraction is not None:
        peak_thresholds(np.zeros((1, 1)), peak_fraction)  # validates before any work
    if rule == "disk":
        rf_size = layer_rf_size(dissection, layer) if rf_size is None else rf_size
        disk_masks(np.zeros((0, 1, 1)), [0.0], [0.0], 1, rf_size, 1.0)  # validates rf_size
    topk = dissection.topk(layer)
    index = topk["index"][units, :top]
    scores = topk["score"][units, :top]
    unit_thresholds = dissection.thresholds(layer)[units]
    loaded = load_dissected_model(dissection, model)
    source = open_dissected_data(dissection)
    preprocess = dissection.preprocess
    geometry = dissection.geometry(layer)
    maps = top_maps(
        loaded.module, source, preprocess, layer, index, units, batch_size, device, progress,
        geometry.channels_last,
    )  # fmt: skip

    @functools.lru_cache(maxsize=256)
    def display(image: int) -> np.ndarray:
        return preprocess.display(source.read_rgb(image))

    size = preprocess.image_size
    centres_y = [geometry.center(y, 0)[0] for y in range(maps.shape[2])]
    centres_x = [geometry.center(0, x)[1] for x in range(maps.shape[3])]
    for row, unit in enumerate(tqdm(units, desc=f"segment {layer}", disable=not progress)):
        keep = index[row] >= 0
        upsampled = upsample_maps(torch.from_numpy(maps[row][keep][:, None]), geometry, size)[
            :, 0
        ].numpy()
        if rule == "disk":
            fraction = SegmentConfig.disk_fraction if peak_fraction is None else peak_fraction
            thresholds = peak_thresholds(maps[row][keep], fraction).astype(np.float32)
            masks = disk_masks(maps[row][keep], centres_y, centres_x, size, rf_size, fraction)
        elif peak_fraction is None:
            thresholds = np.full(len(upsampled), unit_thresholds[row], dtype=np.float32)
        else:
            thresholds = peak_thresholds(upsampled, peak_fraction).astype(np.float32)
        if rule == "threshold":
            masks = threshold_masks(upsampled, thresholds)
        yield UnitSegments(
            layer=layer,
            unit=int(unit),
            indices=index[row][keep],
            scores=scores[row][keep],
            images=np.stack([display(int(image)) for image in index[row][keep]]),
            maps=upsampled,
            thresholds=thresholds,
            masks=masks,
        )


def layer_rf_size(dissection: Dissection, layer: str) -> float:
    """The layer's mean empirical receptive-field size (half-max rule) from ``dissect rf``.

    Raises
    ------
    DissectError
        If the layer's receptive fields have not been measured, or none of its units has a size.
    """
    path = dissection.path(RF_LAYERS)
    sizes = pd.read_csv(path, dtype={"layer": str}) if path.is_file() else None
    found = sizes[sizes["layer"] == layer]["rf_empirical_mean"] if sizes is not None else []
    if len(found) == 0 or not np.isfinite(float(found.iloc[0])):
        raise DissectError(
            f"the disk rule needs the empirical receptive field of layer {layer!r}: run dissect "
            f"rf {dissection.directory} --layers {layer} first, or give --rf-size PIXELS."
        )
    return float(found.iloc[0])
