"""The loader of ``dissect run --iou``: the images of a batch with their concept masks, as regions.

The workers find each image's regions (:func:`~dissect.iou.regions.segmentation_regions`) and
send a batch's in two tensors (a tensor sent from a worker costs a shared-memory file, so two per
image were the main process's largest cost on a GPU); :meth:`LabelledBatch.concepts` unpacks
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from ..images import Batch, ImageReadError, TensorDataset, collate
from .regions import RegionConcepts, segmentation_regions

if TYPE_CHECKING:
    from .concepts import ConceptIndex


@dataclass
class LabelledBatch(Batch):
    """A :class:`~dissect.images.Batch` with the concept masks of its readable images.

    Attributes
    ----------
    regions : Tensor
        (L, P) int32: the region of every pixel of each of the L readable images with masks.
    hits : Tensor
        (sum of R, C + K) bool: those images' ``hits`` (see :class:`RegionConcepts`), one after
        the other.
    sizes : list of int or None
        One per readable image (row of ``images``): its R, or None where a label map could not
        be read.
    unlabelled : list of (int, str)
        (index, reason) of the readable images whose label maps could not be read.
    """

    regions: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.int32))
    hits: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=torch.bool))
    sizes: list[int | None] = field(default_factory=list)
    unlabelled: list[tuple[int, str]] = field(default_factory=list)

    def concepts(self) -> list[RegionConcepts | None]:
        """One :class:`RegionConcepts` per readable image (None where its masks are missing),
        holding its own memory."""
        found, row, start = [], 0, 0
        for size in self.sizes:
            if size is None:
                found.append(None)
                continue
            hits = self.hits[start : start + size].clone()
            kind = torch.int16 if size < 2**15 else torch.int32
            found.append(RegionConcepts(self.regions[row].to(kind, copy=True), hits))
            row, start = row + 1, start + size
        return found


class LabelledDataset(TensorDataset):
    """Preprocessed images with their concept masks; a mask that fails leaves the image in."""

    def __init__(self, source, preprocess, indices, index: ConceptIndex):
        super().__init__(source, preprocess, indices)
        self.index = index

    def __getitem__(self, position: int):
        image, tensor, reason = super().__getitem__(position)
        if tensor is None:
            return image, tensor, reason, None, ""
        try:
            segmentation = self.source.segmentation(image)
        except ImageReadError as error:
            return image, tensor, reason, None, str(error)
        regions = segmentation_regions(segmentation, self.index, self.preprocess)
        return image, tensor, reason, regions, ""


def collate_labelled(items) -> LabelledBatch:
    """:func:`~dissect.images.collate`, with the readable images' regions packed."""
    batch = collate([item[:3] for item in items])
    readable = [item for item in items if item[1] is not None]
    labelled = [item[3] for item in readable if item[3] is not None]
    if labelled:
        regions = torch.stack([concepts.region.to(torch.int32) for concepts in labelled])
        hits = torch.cat([concepts.hits for concepts in labelled])
    else:
        regions, hits = torch.zeros(0, 0, dtype=torch.int32), torch.zeros(0, 0, dtype=torch.bool)
    return LabelledBatch(
        batch.indices,
        batch.images,
        batch.skipped,
        regions,
        hits,
        [None if item[3] is None else len(item[3].hits) for item in readable],
        [(item[0], item[4]) for item in readable if item[3] is None],
    )
