"""Mergeable IoU counters of units against concepts, and counting one batch of one layer.

Counters are added to by :meth:`IoUStats.add_pixels` (mask pixels as (pair, position) lists);
:func:`count_layer` finds those pixels sparsely, evaluating only the cells of the upsampled maps
that can exceed the unit's threshold.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..upsample import layer_weights
from .concepts import ConceptBatch, ImageConcepts

#: Bytes of upsampled unit maps handled at once (images are split to stay under it).
CHUNK_BYTES = 2**28
#: Relative round-off of an upsampled float32 value, with room to spare (it is a few 2**-24).
ROUND_OFF = 2**-16


class IoUStats:
    """Mergeable intersection and area counts between unit masks and concept masks.

    Parameters
    ----------
    units : int
        Units of the layer.
    category_of : array of int
        (C,) the category column of every concept column.
    categories : int
        Number of categories.
    device : str or torch.device
        Where the counters live.
    """

    def __init__(
        self,
        units: int,
        category_of: np.ndarray | torch.Tensor,
        categories: int,
        device: torch.device | str = "cpu",
    ):
        self.category_of = torch.as_tensor(category_of, dtype=torch.int64, device=device)
        concepts = len(self.category_of)
        self.intersection = torch.zeros((units, concepts), dtype=torch.float64, device=device)
        self.unit_area = torch.zeros((units, categories), dtype=torch.float64, device=device)
        self.concept_area = torch.zeros(concepts, dtype=torch.float64, device=device)
        self.images = 0

    def add(self, masks: torch.Tensor, concepts: Sequence[ImageConcepts] | ConceptBatch) -> None:
        """Count one batch from dense masks.

        Parameters
        ----------
        masks : Tensor
            (B, U, P) bool: each unit's thresholded upsampled map of each image, flattened.
        concepts : sequence of ImageConcepts, or ConceptBatch
            The concept masks of the same B images, flattened the same way.
        """
        batch, units, pixels = masks.shape
        if not isinstance(concepts, ConceptBatch):
            concepts = ConceptBatch.stack(concepts, pixels, len(self.category_of))
        self.add_concepts(concepts)
        images = torch.arange(batch, device=masks.device).repeat_interleave(units)
        unit = torch.arange(units, device=masks.device).repeat(batch)
        self.add_masks(masks.reshape(batch * units, pixels), images, unit, concepts)

    def add_concepts(self, concepts: ConceptBatch) -> None:
        """Count the concept areas of a batch of images (once per batch)."""
        self.concept_area += concepts.area.to(self.concept_area.device)
        self.images += len(concepts.whole)

    def add_masks(
        self,
        masks: torch.Tensor,
        images: torch.Tensor,
        units: torch.Tensor,
        concepts: ConceptBatch,
    ) -> None:
        """Count the masks of some (image, unit) pairs of a batch; the others must be empty.

        Parameters
        ----------
        masks : Tensor
            (n, P) bool: thresholded upsampled maps of n (image, unit) pairs.
        images, units : Tensor
            (n,) int64: the image (row of ``concepts``) and the unit of each mask.
        concepts : ConceptBatch
            The concept masks of the batch's images.
        """
        pair, position = masks.to(self.intersection.device).nonzero(as_tuple=True)
        self.add_pixels(pair, position, images, units, concepts)

    def add_pixels(
        self,
        pair: torch.Tensor,
        position: torch.Tensor,
        images: torch.Tensor,
        units: torch.Tensor,
        concepts: ConceptBatch,
    ) -> None:
        """Count mask pixels given as (pair, pixel) lists: the sparse form of :meth:`add_masks`.

        Parameters
        ----------
        pair, position : Tensor
            (m,) int64: for every pixel inside a mask, its pair (index into ``images`` and
            ``units``) and its flat position in the image; each pixel of a pair at most once.
        images, units : Tensor
            (n,) int64: the image (row of ``concepts``) and the unit of each pair; pairs are
            distinct.
        concepts : ConceptBatch
            The concept masks of the batch's images.
        """
        device = self.intersection.device
        total, count = self.intersection.shape
        pair, position = pair.to(device), position.to(device)
        images, units = images.to(device), units.to(device)
        area = torch.bincount(pair, minlength=len(images)).double()  # (n,)
        # Areas as (image, unit): image-level sums become one small matrix product each.
        by_image = torch.zeros((len(concepts.whole), total), dtype=torch.float64, device=device)
        by_image.index_put_((images, units), area, accumulate=True)
        self.unit_area += by_image.T @ concepts.present.to(device).double()
        # Image-level concepts cover every pixel of their image.
        self.intersection += by_image.T @ concepts.whole.to(device).double()
        # Pixel-level concepts: count (unit, concept) pairs at the pixels inside the masks.
        pixels = concepts.pixel.shape[1]
        columns = concepts.by_pixel.to(device).index_select(0, images[pair] * pixels + position)
        # Pixels without a concept in a map (-1) go to one spare bin past the end.
        keys = torch.where(columns >= 0, (units[pair] * count)[:, None] + columns, total * count)
        found = torch.bincount(keys.flatten(), minlength=total * count + 1)[: total * count]
        self.intersection += found.view(total, count)

    def merge(self, other: IoUStats) -> IoUStats:
        """Add another shard's counts (over different images) to these; return self."""
        if self.intersection.shape != other.intersection.shape:
            raise ValueError("cannot merge IoU statistics of different shapes")
        self.intersection += other.intersection.to(self.intersection.device)
        self.unit_area += other.unit_area.to(self.unit_area.device)
        self.concept_area += other.concept_area.to(self.concept_area.device)
        self.images += other.images
        return self

    def union(self) -> torch.Tensor:
        """(U, C) float64 union counts."""
        unit_area = self.unit_area[:, self.category_of]
        return unit_area + self.concept_area[None, :] - self.intersection

    def iou(self) -> np.ndarray:
        """(U, C) float64 IoU of every unit with every concept; 0 where the union is empty."""
        union = self.union()
        iou = torch.where(union > 0, self.intersection / union.clamp(min=1), 0.0)
        return iou.cpu().numpy()

    def state_dict(self) -> dict:
        """Tensors and numbers only (readable with ``torch.load(..., weights_only=True)``)."""
        return {
            "category_of": self.category_of.cpu(),
            "intersection": self.intersection.cpu(),
            "unit_area": self.unit_area.cpu(),
            "concept_area": self.concept_area.cpu(),
            "images": self.images,
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> IoUStats:
        """Rebuild statistics saved with :meth:`state_dict`."""
        units, categories = state["unit_area"].shape
        stats = cls(units, state["category_of"], categories, device)
        stats.intersection.copy_(state["intersection"])
        stats.unit_area.copy_(state["unit_area"])
        stats.concept_area.copy_(state["concept_area"])
        stats.images = int(state["images"])
        return stats


def count_layer(
    stats: IoUStats,
    acts: torch.Tensor,
    thresholds: torch.Tensor,
    geometry,
    size: tuple[int, int],
    concepts: ConceptBatch,
    null=None,
) -> None:
    """Threshold the upsampled maps of one layer for one batch and count them, sparsely.

    Exactly what upsampling every map with :func:`~dissect.upsample.upsample_maps` and
    thresholding it gives, without upsampling every map: a bilinear value never exceeds the four
    feature values around it, so only (image, unit) pairs whose peak is above the unit's
    threshold, and in them only the cells (pixels between four feature centres) with a corner
    above it, can hold mask pixels; those pixels alone are evaluated, with the same float32
    operations as :func:`~dissect.upsample.upsample_maps` (``size``: the input's (height,
    width)). ``null``, a
    :class:`~dissect.iou.significance.PermutationNull`, counts the same mask pixels against the
    concept masks of other images.
    """
    acts = acts[:, :, None, None] if acts.dim() == 2 else acts
    height, width = acts.shape[2:]
    peaks = acts.flatten(2).amax(2)
    images, units = (peaks > thresholds[None, :]).nonzero(as_tuple=True)
    step = max(1, CHUNK_BYTES // (16 * height * width))
    for first in range(0, len(images), step):
        image, unit = images[first : first + step], units[first : first + step]
        count_maps(
            stats,
            acts[image, unit].float(),
            (image, unit),
            thresholds,
            geometry,
            size,
            concepts,
            null,
        )


def count_maps(
    stats: IoUStats,
    maps: torch.Tensor,
    pairs: tuple[torch.Tensor, torch.Tensor],
    thresholds: torch.Tensor,
    geometry,
    size: tuple[int, int],
    concepts: ConceptBatch,
    null=None,
) -> None:
    """Count the thresholded upsampled maps of some (image, unit) pairs (see :func:`count_layer`).

    Parameters
    ----------
    stats : IoUStats
        The layer's counters.
    maps : Tensor
        (n, h, w) float32 feature maps of n distinct (image, unit) pairs; pairs left out must
        have no value above their unit's threshold (their masks are empty).
    pairs : (Tensor, Tensor)
        (n,) int64 each: the row of ``concepts`` and the unit of each map.
    thresholds : Tensor
        (U,) every unit's threshold T.
    geometry : LayerGeometry
        Stride and offset of the layer.
    size : int
        Side of the input, or its (height, width), in pixels.
    concepts : ConceptBatch
        The concept masks of the images.
    null : PermutationNull, optional
        Counts the same pixels against other images' concept masks.
    """
    height, width = maps.shape[1:]
    ys, xs = (a.to(maps.device) for a in _weights(geometry, size, height, width))
    cells_y, cells_x = _Cells.of(ys), _Cells.of(xs)
    limit = thresholds[pairs[1]]
    # Each cell's largest corner: the most any pixel of the cell can reach.
    below = (torch.arange(height, device=maps.device) + 1).clamp(max=height - 1)
    right = (torch.arange(width, device=maps.device) + 1).clamp(max=width - 1)
    corners = torch.maximum(maps, maps[:, below])
    corners = torch.maximum(corners, corners[:, :, right])
    pair, row, column = (corners > limit[:, None, None]).nonzero(as_tuple=True)
    cells = max(1, CHUNK_BYTES // (16 * ys.cells.shape[1] * xs.cells.shape[1]))
    for start in range(0, len(pair), cells):
        part = slice(start, start + cells)
        _count_cells(
            stats,
            maps,
            limit,
            (pair[part], row[part], column[part]),
            (cells_y, cells_x, size[1]),
            pairs,
            concepts,
            null,
        )


@dataclass(frozen=True)
class _Cells:
    """The pixels of every cell along one axis (rows: cells; columns: pixels, -1 padded) with
    their interpolation weights, and the position of each cell's last pixel."""

    pixel: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    rest: torch.Tensor
    weight: torch.Tensor
    last: torch.Tensor

    @classmethod
    def of(cls, axis) -> _Cells:
        """From an :class:`~dissect.upsample.AxisWeights`."""
        pixel = axis.cells
        at = pixel.clamp(min=0)
        last = ((pixel >= 0).sum(1) - 1).clamp(min=0)
        return cls(pixel, axis.low[at], axis.high[at], axis.rest[at], axis.weight[at], last)

    def pick(self, cells: torch.Tensor, *names: str) -> list[torch.Tensor]:
        """The fields ``names`` (``pixel``, ``low``, ...) of ``cells``, one row each."""
        return [getattr(self, name).index_select(0, cells) for name in names]


def _count_cells(stats, maps, limit, cells, grid, pairs, concepts, null) -> None:
    """Evaluate the pixels of some ``cells`` (map, row, column) of some maps and count those
    above the threshold (``grid``: the :class:`_Cells` along y and x, and the input's width;
    ``pairs``: the image row and unit of each map).

    Along a pixel row of a cell the upsampled value is monotone (linear between two feature
    centres, constant past the outer ones), so the row's two end pixels bound it: a row whose
    ends are both above the threshold by more than the round-off (``ROUND_OFF`` of the largest
    feature value the cell reads) is counted whole, one whose ends are both below it by as much
    is skipped, and only the rows between are evaluated pixel by pixel; every evaluated value is
    computed as :func:`~dissect.upsample.upsample_maps` computes it.
    """
    (pair, row, column), (ys, xs, width), (image, unit) = cells, grid, pairs
    pixel_y, rest_y, weight_y = ys.pick(row, "pixel", "rest", "weight")  # (m, most) each
    pixel_x, low_x, high_x, rest_x, weight_x = xs.pick(
        column, "pixel", "low", "high", "rest", "weight"
    )
    rows = maps.reshape(-1, maps.shape[2])
    below = (row + 1).clamp(max=maps.shape[1] - 1)
    low_row = rows.index_select(0, pair * maps.shape[1] + row)  # (m, w): the cell's feature rows
    high_row = rows.index_select(0, pair * maps.shape[1] + below)
    # Along x within the two feature rows, then along y: as upsample_maps does.
    top = low_row.gather(1, low_x) * rest_x + low_row.gather(1, high_x) * weight_x
    bottom = high_row.gather(1, low_x) * rest_x + high_row.gather(1, high_x) * weight_x
    threshold = limit[pair]
    last = xs.last.index_select(0, column)[:, None]
    ends = [torch.cat([part[:, :1], part.gather(1, last)], 1) for part in (top, bottom)]
    ends = ends[0][:, None, :] * rest_y[:, :, None] + ends[1][:, None, :] * weight_y[:, :, None]
    margin = ROUND_OFF * torch.maximum(low_row.abs().amax(1), high_row.abs().amax(1))
    real = pixel_y >= 0
    whole = real & (ends.amin(2) > (threshold + margin)[:, None])
    mixed = real & ~whole & (ends.amax(2) > (threshold - margin)[:, None])
    found = []
    for kind in (whole, mixed):
        cell, at = kind.nonzero(as_tuple=True)
        columns = pixel_x.index_select(0, cell)
        inside = columns >= 0
        flat = cell * pixel_y.shape[1] + at  # the row in (m * most) order
        if kind is mixed:
            values = top.index_select(0, cell) * rest_y.reshape(-1)[flat][:, None]
            values = values + bottom.index_select(0, cell) * weight_y.reshape(-1)[flat][:, None]
            inside &= values > threshold.index_select(0, cell)[:, None]
        position = pixel_y.reshape(-1)[flat][:, None] * width + columns
        found.append((cell[:, None].expand_as(columns).masked_select(inside),
                      position.masked_select(inside)))  # fmt: skip
    which = pair[torch.cat([found[0][0], found[1][0]])]
    position = torch.cat([found[0][1], found[1][1]])
    stats.add_pixels(which, position, image, unit, concepts)
    if null is not None:
        null.add_pixels(which, position, image, unit, concepts)


@functools.lru_cache(maxsize=64)
def _cached_weights(geometry, size, height: int, width: int):
    return layer_weights(geometry, size, height, width)


def _weights(geometry, size, height: int, width: int):
    try:
        return _cached_weights(geometry, size, height, width)
    except TypeError:  # an unhashable geometry
        return layer_weights(geometry, size, height, width)
