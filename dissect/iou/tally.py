"""Mergeable IoU counters of units against concepts, and counting one batch of one layer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..upsample import upsample_maps
from .concepts import ConceptBatch, ImageConcepts

#: Bytes of upsampled unit maps handled at once (images are split to stay under it).
CHUNK_BYTES = 2**28


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
        device = self.intersection.device
        total, count = self.intersection.shape
        masks, images, units = masks.to(device), images.to(device), units.to(device)
        pair, position = masks.nonzero(as_tuple=True)
        area = torch.bincount(pair, minlength=len(masks)).double()  # (n,)
        by_unit = torch.nn.functional.one_hot(units, total).T.double() * area  # (U, n)
        self.unit_area += by_unit @ concepts.present.to(device)[images].double()
        # Image-level concepts cover every pixel of their image.
        self.intersection += by_unit @ concepts.whole.to(device)[images].double()
        # Pixel-level concepts: count (unit, concept) pairs at the pixels inside the masks.
        pixels = concepts.pixel.shape[1]
        columns = concepts.by_pixel.to(device).index_select(0, images[pair] * pixels + position)
        pairs = (units[pair] * count)[:, None] + columns  # (m, maps)
        pairs = pairs[columns >= 0]
        self.intersection += (
            torch.bincount(pairs, minlength=total * count).view(total, count).double()
        )

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
    size: int,
    concepts: ConceptBatch,
    null=None,
) -> None:
    """Upsample, threshold and count the maps of one layer for one batch.

    Bilinear upsampling never exceeds a map's peak, so only (image, unit) pairs whose peak is
    above the unit's threshold can have a non-empty mask: the others are skipped, exactly.
    ``null``, a :class:`~dissect.iou.significance.PermutationNull`, counts the same masks
    against the concept masks of other images.
    """
    acts = acts[:, :, None, None] if acts.dim() == 2 else acts
    peaks = acts.flatten(2).amax(2)
    images, units = (peaks > thresholds[None, :]).nonzero(as_tuple=True)
    step = max(1, CHUNK_BYTES // (4 * size * size))
    for first in range(0, len(images), step):
        image, unit = images[first : first + step], units[first : first + step]
        maps = acts[image, unit].reshape(len(image), 1, *acts.shape[2:])
        masks = upsample_maps(maps, geometry, size)[:, 0] > thresholds[unit][:, None, None]
        stats.add_masks(masks.flatten(1), image, unit, concepts)
        if null is not None:
            null.add_masks(masks.flatten(1), image, unit, concepts)
