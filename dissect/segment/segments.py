"""A unit's top images segmented: maps upsampled, thresholded (or disks drawn), pictures made.

:func:`iter_segments` recomputes the maps of a layer's top images (:func:`~dissect.segment.maps.
top_maps`) and yields a :class:`UnitSegments` per unit.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..alignment import placed_geometry
from ..config import SegmentConfig
from ..directory import RF_LAYERS, read_table
from ..dissection import Dissection, load_dissected_model, open_dissected_data
from ..errors import DissectError
from ..geometry import LayerGeometry
from ..images import ImageSource, Preprocess
from ..models import LoadedModel
from ..upsample import upsample_maps
from .maps import top_maps
from .pictures import crop, dim_outside, image_grid, outline
from .rules import disk_masks, peak_thresholds, threshold_masks


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
    config: SegmentConfig | None = None,
    model: str | torch.nn.Module | LoadedModel | None = None,
    progress: bool = True,
    **loose: Any,
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
    config : SegmentConfig, optional
        ``rule``: ``threshold`` (NetDissect's, default) or ``disk`` (Zhou et al.'s), see the
        package docstring; ``peak_fraction``: ``threshold`` rule: threshold each map at this
        fraction of its own peak instead of the unit's threshold T, ``disk`` rule: draw the
        cells at least this fraction of the map's maximum (default ``disk_fraction``, 0.5);
        ``rf_size``: ``disk`` rule, the receptive-field size in pixels (default: the layer's
        mean empirical size from ``receptive_fields_layers.csv``); ``align``: where the maps
        (and the disk rule's cells) are placed, see :mod:`dissect.alignment`; ``batch_size``
        images per forward when recomputing the maps, on ``device``. Its ``top`` is not used.
    model : str, nn.Module or LoadedModel, optional
        The dissected model (default: loaded again from the manifest's MODEL spec); required
        when the dissection was run on an in-memory module.
    progress : bool
        Show progress bars.
    **loose
        Fields of ``config`` given one by one (``rule=``, ``peak_fraction=``, ``rf_size=``,
        ``align=``, ``batch_size=``, ``device=``, ``workers=``, ``dtype=``).

    Yields
    ------
    UnitSegments
        One per unit, in the order of ``units``; a unit's empty top-K slots (fewer images than
        K in the data) are left out.
    """
    config = dataclasses.replace(config or SegmentConfig(), **loose)
    geometry = placed_geometry(dissection, layer, config.align)
    if not geometry.is_spatial:
        raise DissectError(
            f"layer {layer!r} has no spatial map (output {geometry.output_shape})"
            "; segment a convolution or pooling layer."
        )
    units = dissection.check_units(layer, units)
    if top is not None and top < 1:
        raise DissectError(f"--top must be at least 1, got {top}.")
    if config.peak_fraction is not None:
        peak_thresholds(np.zeros((1, 1)), config.peak_fraction)  # validates before any work
    if config.rule == "disk":
        if config.rf_size is None:
            config = dataclasses.replace(config, rf_size=layer_rf_size(dissection, layer))
        disk_masks(np.zeros((0, 1, 1)), [0.0], [0.0], (1, 1), config.rf_size, 1.0)  # validates it
    topk = dissection.topk(layer)
    index = topk["index"][units, :top]
    loaded = load_dissected_model(dissection, model)
    source = open_dissected_data(dissection)
    maps = top_maps(
        dissection,
        layer,
        index,
        units,
        module=loaded.module,
        source=source,
        config=config,
        progress=progress,
    )
    found = LayerMaps(
        layer,
        geometry,
        dissection.preprocess,
        source,
        index,
        topk["score"][units, :top],
        dissection.thresholds(layer)[units],
        maps,
        config,
    )
    for row, unit in enumerate(tqdm(units, desc=f"segment {layer}", disable=not progress)):
        yield found.segments(row, int(unit))


@dataclass
class LayerMaps:
    """The recomputed maps of a layer's units on their top images, and what segments them."""

    layer: str
    geometry: LayerGeometry
    preprocess: Preprocess
    source: ImageSource
    index: np.ndarray
    scores: np.ndarray
    thresholds: np.ndarray
    maps: np.ndarray
    config: SegmentConfig

    def __post_init__(self) -> None:
        self.display = functools.lru_cache(maxsize=256)(self._display)
        self.centres_y = [self.geometry.center(y, 0)[0] for y in range(self.maps.shape[2])]
        self.centres_x = [self.geometry.center(0, x)[1] for x in range(self.maps.shape[3])]

    def _display(self, image: int) -> np.ndarray:
        return self.preprocess.display(self.source.read_rgb(image))

    def segments(self, row: int, unit: int) -> UnitSegments:
        """The segmented top images of the unit of ``row`` (its empty slots left out)."""
        config, size = self.config, self.preprocess.size
        keep = self.index[row] >= 0
        maps = self.maps[row][keep]
        upsampled = upsample_maps(torch.from_numpy(maps[:, None]), self.geometry, size)[:, 0]
        upsampled = upsampled.numpy()
        fraction = config.peak_fraction
        if config.rule == "disk":
            fraction = config.disk_fraction if fraction is None else fraction
            thresholds = peak_thresholds(maps, fraction).astype(np.float32)
            masks = disk_masks(maps, self.centres_y, self.centres_x, size, config.rf_size, fraction)
        else:
            if fraction is None:
                thresholds = np.full(len(upsampled), self.thresholds[row], dtype=np.float32)
            else:
                thresholds = peak_thresholds(upsampled, fraction).astype(np.float32)
            masks = threshold_masks(upsampled, thresholds)
        return UnitSegments(
            layer=self.layer,
            unit=unit,
            indices=self.index[row][keep],
            scores=self.scores[row][keep],
            images=np.stack([self.display(int(image)) for image in self.index[row][keep]]),
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
    sizes = read_table(dissection.directory, RF_LAYERS)
    found = sizes[sizes["layer"] == layer]["rf_empirical_mean"] if sizes is not None else []
    if len(found) == 0 or not np.isfinite(float(found.iloc[0])):
        raise DissectError(
            f"the disk rule needs the empirical receptive field of layer {layer!r}: run dissect "
            f"rf {dissection.directory} --layers {layer} first, or give --rf-size PIXELS."
        )
    return float(found.iloc[0])
