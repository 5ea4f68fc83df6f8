"""Concept masks in batches: which concepts each image holds, read alongside the images.

:class:`ConceptIndex` numbers the concepts of a :class:`~dissect.datasets.masks.SegmentedSource`;
a loader yields :class:`ConceptBatch` objects (per-pixel concept lists and image-level ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..datasets.masks import CATEGORIES, SegmentedSource
from ..errors import DissectError
from ..images import Batch, ImageReadError, ImageSource, Preprocess


@dataclass
class ImageConcepts:
    """The concept masks of one image, at the network's input size, as concept columns.

    Attributes
    ----------
    pixel : Tensor
        (maps, P) int64: the concept column of every pixel in each label map, -1 where none.
        A concept appears at most once per pixel and never where it is also image-level (so
        summing over maps counts the union of the masks).
    image : Tensor
        (n,) int64: concept columns that cover the whole image.
    present : Tensor
        (categories,) bool: the categories annotated on this image.
    """

    pixel: torch.Tensor
    image: torch.Tensor
    present: torch.Tensor


class ConceptIndex:
    """Concept numbers of a :class:`SegmentedSource` as columns 0..C-1, grouped by category.

    Parameters
    ----------
    concepts : DataFrame
        ``number,name,category`` (the source's ``concepts`` table).
    """

    def __init__(self, concepts: pd.DataFrame):
        table = concepts[["number", "name", "category"]].reset_index(drop=True)
        self.table = table.assign(number=table["number"].astype(np.int64))
        known = [name for name in CATEGORIES if name in set(table["category"])]
        self.categories = known + sorted(set(table["category"]) - set(known))
        category_column = {name: i for i, name in enumerate(self.categories)}
        #: (C,) category column of every concept column.
        self.category_of = np.array([category_column[c] for c in table["category"]], np.int64)
        top = int(self.table["number"].max()) if len(table) else 0
        self._column = np.full(max(top, 0) + 1, -1, dtype=np.int64)
        self._column[self.table["number"].to_numpy()] = np.arange(len(table))
        self._category_column = category_column

    def __len__(self) -> int:
        return len(self.table)

    def columns(self, numbers: np.ndarray) -> np.ndarray:
        """Concept numbers -> columns (-1 for 0 and for numbers not in the table)."""
        numbers = np.asarray(numbers, dtype=np.int64)
        inside = (numbers >= 0) & (numbers < len(self._column))
        return np.where(inside, self._column[np.clip(numbers, 0, len(self._column) - 1)], -1)

    def image_concepts(self, segmentation, preprocess: Preprocess | None) -> ImageConcepts:
        """Bring one image's :class:`~dissect.datasets.Segmentation` to the network input
        (``preprocess`` None: keep its label maps at their own size, which they must share and
        there must be one)."""
        fit = np.asarray if preprocess is None else preprocess.display_labels
        maps = [
            self.columns(fit(label_map)).reshape(-1)
            for category in segmentation.pixel
            for label_map in segmentation.pixel[category]
        ]
        if maps:
            pixel = np.stack(maps)
        elif preprocess is None:
            raise ValueError("image_concepts without preprocess needs a pixel-level label map")
        else:
            pixel = np.full((0, preprocess.size[0] * preprocess.size[1]), -1, dtype=np.int64)
        image = self.columns(
            [number for numbers in segmentation.image.values() for number in numbers]
        )
        image = image[image >= 0]
        pixel = _keep_first(pixel, image)
        present = np.zeros(len(self.categories), dtype=bool)
        for kind in (segmentation.pixel, segmentation.image):
            for category, values in kind.items():
                if len(values) and category in self._category_column:
                    present[self._category_column[category]] = True
        return ImageConcepts(
            torch.from_numpy(pixel), torch.from_numpy(image), torch.from_numpy(present)
        )


@dataclass
class ConceptBatch:
    """The concept masks of a batch of images, stacked.

    Attributes
    ----------
    pixel : Tensor
        (B, P, maps) int64 concept columns, -1 where none (and in maps an image lacks).
    whole : Tensor
        (B, C) bool: concepts covering each whole image.
    present : Tensor
        (B, categories) bool: the categories annotated on each image.
    area : Tensor
        (C,) float64: pixels of each concept in the batch (image-level ones cover every pixel).
    """

    pixel: torch.Tensor
    whole: torch.Tensor
    present: torch.Tensor
    area: torch.Tensor

    @property
    def by_pixel(self) -> torch.Tensor:
        """(B * P, maps): the concept columns of every pixel of the batch, row by row."""
        return self.pixel.reshape(-1, self.pixel.shape[-1])

    @classmethod
    def stack(cls, images: Sequence[ImageConcepts], pixels: int, concepts: int) -> ConceptBatch:
        """Stack the concepts of a batch of images (``concepts``: the number of columns C)."""
        most = max([len(image.pixel) for image in images] + [1])
        pixel = torch.full((len(images), pixels, most), -1, dtype=torch.int64)
        whole = torch.zeros((len(images), concepts), dtype=torch.bool)
        for row, image in enumerate(images):
            pixel[row, :, : len(image.pixel)] = image.pixel.T
            whole[row, image.image] = True
        present = torch.stack([image.present for image in images])
        labelled = pixel[pixel >= 0]
        area = torch.bincount(labelled, minlength=concepts).double() + whole.sum(0) * pixels
        return cls(pixel, whole, present, area)


def _keep_first(pixel: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """Count each concept once per pixel: blank repeats in later maps and image-level ones."""
    for later in range(1, len(pixel)):
        for earlier in range(later):
            pixel[later][pixel[later] == pixel[earlier]] = -1
    pixel[np.isin(pixel, whole)] = -1
    return pixel


class ConceptDataset(torch.utils.data.Dataset):
    """Preprocessed images with their concept masks; images that cannot be read, or whose label
    maps cannot, come back as None (with the reason)."""

    def __init__(
        self,
        source: SegmentedSource,
        preprocess: Preprocess,
        index: ConceptIndex,
        indices: Sequence[int],
    ):
        self.source = source
        self.preprocess = preprocess
        self.index = index
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        image = self.indices[position]
        try:
            tensor = self.preprocess.tensor(self.source.read_rgb(image))
            segmentation = self.source.segmentation(image)  # a corrupt label map skips the image
        except ImageReadError as error:
            return image, None, None, str(error)
        return image, tensor, self.index.image_concepts(segmentation, self.preprocess), ""


@dataclass
class ConceptImages(Batch):
    """A :class:`~dissect.images.Batch` with the stacked concept masks of its readable images
    (None when none was readable)."""

    concepts: ConceptBatch | None = None


class ConceptCollate:
    """Stack a batch of images and their concepts; keep (index, reason) of unreadable ones."""

    def __init__(self, pixels: int, concepts: int):
        self.pixels, self.concepts = pixels, concepts

    def __call__(self, items) -> ConceptImages:
        good = [item for item in items if item[1] is not None]
        skipped = [(item[0], item[3]) for item in items if item[1] is None]
        if not good:
            return ConceptImages(torch.zeros(0, dtype=torch.int64), torch.zeros(0), skipped)
        indices = torch.tensor([item[0] for item in good], dtype=torch.int64)
        images = torch.stack([item[1] for item in good])
        concepts = ConceptBatch.stack([item[2] for item in good], self.pixels, self.concepts)
        return ConceptImages(indices, images, skipped, concepts)


def segmented_source(source: ImageSource) -> SegmentedSource:
    """Return ``source`` if it has concept masks; otherwise a clear error."""
    if not isinstance(source, SegmentedSource):
        raise DissectError(
            f"DATA {source.spec!r} has no concept masks, so units cannot be labelled by IoU. "
            "Dissect a Broden directory or synthetic:N, or label units by crowd annotation."
        )
    if not len(source.concepts):
        raise DissectError(f"DATA {source.spec!r} defines no concepts; nothing to label.")
    return source
