"""Concept masks as regions, and counting the real pairing and the permutation null at once.

``dissect run --iou`` decodes each image's concept masks once, in the loader (its workers, with
``--workers``), into the compact form its count needs: a *region* map, one small integer per
pixel naming the distinct combination of concepts at that pixel, and a table of which concept
columns (pixel-level and image-level) and which annotated categories each region holds. A unit
mask's intersections with every concept and its area under every annotated category are then
one gather and one histogram of region numbers per mask pixel, whatever the number of label
maps, and a histogram of regions times the table gives them all.

:class:`PairedCounts` counts the mask pixels of one layer under several *pairings* of unit masks
with images' concept masks at once: pairing 0 is the real one (each image with itself), pairings
1..P the permutation null of :mod:`dissect.iou.significance` (each image with its partner in its
batch). The counts are integers held in float64, so they equal :class:`~dissect.iou.tally.
IoUStats` and :class:`~dissect.iou.significance.PermutationNull` counted pixel by pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..datasets.masks import Segmentation
from ..images import Preprocess
from .concepts import ConceptIndex, ImageConcepts
from .significance import PermutationNull, partners
from .tally import IoUStats

#: Mask pixels x pairings gathered at once when counting.
CHUNK = 2**22
#: Bytes up to which a batch's pairing table is built whole (see RegionGroup.met).
PAIRING_TABLE_BYTES = 2**28


@dataclass
class RegionConcepts:
    """One image's concept masks as regions.

    Attributes
    ----------
    region : Tensor
        (P,) int16 (int32 beyond 32767 regions): the region of every pixel.
    hits : Tensor
        (R, C + K) bool: the concept columns each region lies in (its pixel-level columns and
        the image-level ones), then the K categories annotated on the image (every region).
    """

    region: torch.Tensor
    hits: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return self.region.nbytes + self.hits.nbytes

    def area(self, concepts: int) -> torch.Tensor:
        """(C,) float64 pixels of each concept (image-level ones cover every pixel)."""
        sizes = torch.bincount(self.region.long(), minlength=len(self.hits)).double()
        return sizes @ self.hits[:, :concepts].double()


def region_concepts(image: ImageConcepts, concepts: int) -> RegionConcepts:
    """The :class:`RegionConcepts` of one image's :class:`ImageConcepts` (``concepts``: C)."""
    pixel = image.pixel.numpy().T  # (P, maps)
    if pixel.shape[1] == 0:
        pixel = np.full((pixel.shape[0], 1), -1, dtype=np.int64)
    base = concepts + 1
    if pixel.shape[1] * np.log2(base) < 62:  # one int64 key per combination
        keys = (pixel + 1) @ (base ** np.arange(pixel.shape[1], dtype=np.int64))
        _, first, region = np.unique(keys, return_index=True, return_inverse=True)
        combinations = pixel[first]
    else:
        combinations, region = np.unique(pixel, axis=0, return_inverse=True)
    present = image.present.numpy()
    hits = np.zeros((len(combinations), concepts + len(present)), dtype=bool)
    rows, maps = np.nonzero(combinations >= 0)
    hits[rows, combinations[rows, maps]] = True
    hits[:, image.image.numpy()] = True
    hits[:, concepts:] = present
    return _regions(region.reshape(-1), hits)


def _regions(region: np.ndarray, hits: np.ndarray) -> RegionConcepts:
    kind = torch.int16 if len(hits) < 2**15 else torch.int32
    return RegionConcepts(torch.from_numpy(region).to(kind), torch.from_numpy(hits))


def segmentation_regions(
    segmentation: Segmentation, index: ConceptIndex, preprocess: Preprocess
) -> RegionConcepts:
    """The :class:`RegionConcepts` of one image's label maps at the network input.

    The same as ``region_concepts(index.image_concepts(segmentation, preprocess), len(index))``,
    found at the label maps' own size: every step before the regions is pixel by pixel and the
    resize to the input is nearest-neighbour (each input pixel takes one label-map pixel, the
    same one in every map), so the region map is resized instead of every label map, and the
    regions it no longer holds (cropped away, or between the pixels taken) are dropped, the
    others keeping their order.
    """
    shapes = {np.shape(label_map) for maps in segmentation.pixel.values() for label_map in maps}
    if len(shapes) != 1:  # no pixel-level map, or maps of several sizes: resize each
        return region_concepts(index.image_concepts(segmentation, preprocess), len(index))
    found = region_concepts(index.image_concepts(segmentation, None), len(index))
    region = preprocess.display_labels(found.region.numpy().reshape(shapes.pop()))
    kept = np.bincount(region.reshape(-1), minlength=len(found.hits)) > 0
    number = np.cumsum(kept) - 1
    return _regions(number[region.reshape(-1)], found.hits.numpy()[kept])


@dataclass
class RegionGroup:
    """The regions of the labelled images of one batch, as each image's pairings see them.

    Attributes
    ----------
    regions : Tensor
        (B, P) int16 (int32 where ``pairing * width + region`` would not fit): the region at
        every pixel of every image (see :meth:`met`).
    rows : Tensor
        (1 + permutations, B) int64: the image each image's unit masks meet under each pairing.
    offset : Tensor
        (B,) int64: the first row of each image's regions in ``table``.
    table : Tensor
        (sum of R, C + K) float64: every image's ``hits``.
    pixels : int
        P, pixels of an image.
    width : int
        The most regions of an image.
    whole : Tensor or None
        (B * P, 1 + permutations): :meth:`met` of every pixel, where it takes at most
        ``PAIRING_TABLE_BYTES``; None past that.
    """

    regions: torch.Tensor
    rows: torch.Tensor
    offset: torch.Tensor
    table: torch.Tensor
    pixels: int
    width: int
    whole: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> RegionGroup:
        """The same group on ``device``."""
        return RegionGroup(
            self.regions.to(device),
            self.rows.to(device),
            self.offset.to(device),
            self.table.to(device),
            self.pixels,
            self.width,
            None if self.whole is None else self.whole.to(device),
        )

    def met(self, image: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """(m, 1 + permutations): at pixel ``where[i]`` of image ``image[i]`` (rows of the
        batch), ``pairing * width + region``, the region there of the image its unit masks meet
        under each pairing (column 0: its own), so that a mask pixel's bins under every pairing
        are one row. Read from ``whole`` where it was built (the faster), else looked up for
        the pixels asked only."""
        if self.whole is not None:
            return self.whole.index_select(0, image * self.pixels + where)
        partners = self.rows.T.index_select(0, image)  # (m, Q)
        met = self.regions.reshape(-1)[partners * self.pixels + where[:, None]]
        first = torch.arange(len(self.rows), dtype=met.dtype, device=met.device) * self.width
        return met + first

    @classmethod
    def stack(
        cls, images: Sequence[RegionConcepts], indices: Sequence[int], permutations: int, seed: int
    ) -> RegionGroup:
        """Stack the regions of a batch's labelled images (``indices``: their global indices)."""
        sizes = torch.tensor([len(image.hits) for image in images], dtype=torch.int64)
        pairings = [np.arange(len(images))]
        pairings += [partners(indices, seed, p) for p in range(permutations)]
        rows = torch.from_numpy(np.stack(pairings))
        width = int(sizes.max())
        kind = torch.int16 if len(rows) * width < 2**15 else torch.int32
        regions = torch.stack([image.region.to(kind) for image in images])  # (B, P)
        group = cls(
            regions,
            rows,
            sizes.cumsum(0) - sizes,
            torch.cat([image.hits for image in images]).double(),
            len(images[0].region),
            width,
        )
        if regions.numel() * len(rows) * regions.element_size() <= PAIRING_TABLE_BYTES:
            first = (torch.arange(len(rows), dtype=kind) * width)[None, :, None]
            whole = (regions[rows.T] + first).transpose(1, 2)  # (B, P, Q): image, pixel, pairing
            group.whole = whole.reshape(-1, len(rows))
        return group


class PairedCounts:
    """Intersections and unit areas of one layer's unit masks under several pairings.

    Duck-types :meth:`IoUStats.add_pixels <dissect.iou.tally.IoUStats.add_pixels>` (with a
    :class:`RegionGroup` for the concepts), so :func:`~dissect.iou.tally.count_maps` feeds it.

    Parameters
    ----------
    units : int
        Units of the layer.
    category_of : array of int
        (C,) the category column of every concept column.
    categories : int
        K, the number of categories.
    pairings : int
        1 + P: the real pairing and the P permutations of the null.
    device : str or torch.device
        Where the counters live.
    """

    def __init__(
        self,
        units: int,
        category_of: np.ndarray,
        categories: int,
        pairings: int,
        device: torch.device | str = "cpu",
    ):
        self.units, self.pairings = units, pairings
        self.category_of, self.categories = category_of, categories
        width = len(category_of) + categories
        #: (pairings * units, C + K): intersections, then unit areas under each category.
        self.hits = torch.zeros((pairings * units, width), dtype=torch.float64, device=device)

    def add_pixels(
        self,
        pair: torch.Tensor,
        position: torch.Tensor,
        images: torch.Tensor,
        units: torch.Tensor,
        group: RegionGroup,
    ) -> None:
        """Count mask pixels given as (pair, position) lists (see ``IoUStats.add_pixels``)."""
        count = self.pairings
        step = max(1, CHUNK // count)
        for start in range(0, len(pair), step):
            some, where = pair[start : start + step], position[start : start + step]
            # Bins for the pairs this chunk spans only (the pixels come grouped by pair), not for
            # every pair: bincount zeroes and nonzero reads all of them, chunk after chunk.
            first, last = (int(end) for end in torch.aminmax(some))
            bins = (last - first + 1) * count * group.width  # (pair, pairing, region)
            kind = torch.int32 if bins < 2**31 else torch.int64  # half the memory traffic
            met = group.met(images[some], where)  # (m, Q)
            keys = ((some - first).to(kind) * (count * group.width))[:, None] + met
            found = torch.bincount(keys.reshape(-1), minlength=bins)
            key = found.nonzero().squeeze(1)
            slot, region = key // group.width, key % group.width  # slot: pair * Q + pairing
            which, pairing = slot // count + first, slot % count
            table_row = group.offset[group.rows[pairing, images[which]]] + region
            target = pairing * self.units + units[which]
            self.hits.index_add_(0, target, group.table[table_row] * found[key, None])

    def results(
        self, concept_area: torch.Tensor, images: int, seed: int
    ) -> tuple[IoUStats, PermutationNull | None]:
        """The real counters and the null's (None with no permutation), given the concept areas
        and the number of images, which every pairing shares."""
        concepts, counted = len(self.category_of), []
        for pairing in range(self.pairings):
            stats = IoUStats(self.units, self.category_of, self.categories, self.hits.device)
            hits = self.hits[pairing * self.units : (pairing + 1) * self.units]
            stats.intersection += hits[:, :concepts]
            stats.unit_area += hits[:, concepts:]
            stats.concept_area += concept_area.to(self.hits.device)
            stats.images = images
            counted.append(stats)
        if self.pairings == 1:
            return counted[0], None
        state = {"seed": seed, "counts": [stats.state_dict() for stats in counted[1:]]}
        return counted[0], PermutationNull.from_state_dict(state, self.hits.device)
