"""Concept masks predicted by a segmentation network, for images that have none.

:class:`PredictedSource` wraps any :class:`~dissect.images.ImageSource` (a folder of photos) and
gives it the concept-mask interface (:class:`~dissect.datasets.masks.SegmentedSource`), so
``dissect run --iou`` and ``dissect autolabel`` label units on it unchanged. Masks are predicted
a batch of images at a time, when the first image of the batch is asked for, and kept only while
that batch is read: nothing is written to disk (``dissect data export`` of the source writes a
Broden-layout copy).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..datasets.masks import Segmentation, SegmentedSource
from ..device import pick_device
from ..errors import DissectError
from ..images import ImageReadError, ImageSource, Preprocess
from ..models import LoadedModel, load_model
from .concepts import SegmenterConcepts


class PredictedSource(SegmentedSource):
    """An image source whose concept masks come from a segmenter.

    Each image is resized whole (no crop; its aspect is not kept) to the segmenter's input size
    and normalised with the segmenter's mean and std; the predicted label maps are resized back
    to the image's own size with nearest-neighbour sampling.

    Parameters
    ----------
    images : ImageSource
        The images (a folder, or any source; its own masks, if any, are not used).
    segmenter : str, nn.Module or LoadedModel
        A MODEL spec of a network whose output is (B, C, h, w) per-pixel class scores.
    concepts : SegmenterConcepts, DataFrame or path, optional
        Its concepts table (``index,name,category[,head]``); a built-in segmenter brings its own.
    batch_size : int
        Images predicted together.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    name : str, optional
        How labels name the segmenter (default: its spec).
    preprocess : Preprocess, optional
        The segmenter's input size and normalisation (default: its own, as for any MODEL).
    """

    def __init__(
        self,
        images: ImageSource,
        segmenter,
        concepts=None,
        *,
        batch_size: int = 32,
        device: str = "auto",
        name: str | None = None,
        preprocess: Preprocess | None = None,
    ):
        self.images = images
        self.model: LoadedModel = load_model(segmenter)
        if concepts is None:
            concepts = self.model.segmenter_concepts
        if concepts is None:
            raise DissectError(
                f"segmenter {self.model.spec or 'module'!r} needs a concepts table: "
                "--concepts CSV with index,name,category[,head], one row per output channel."
            )
        if not isinstance(concepts, SegmenterConcepts):
            concepts = SegmenterConcepts(concepts)
        self.decoder = concepts
        self.concepts = concepts.concepts
        self.spec = images.spec
        self.classes = images.classes
        self.name = name or self.model.spec or "module"
        self.preprocess = preprocess or self.model.preprocess
        self.batch_size = max(1, int(batch_size))
        self.device = pick_device(device)
        self._block: tuple[int, dict[int, np.ndarray], dict[int, Segmentation | str]] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def image_id(self, index: int) -> str:
        return self.images.image_id(index)

    def label(self, index: int) -> int:
        return self.images.label(index)

    def read_rgb(self, index: int) -> np.ndarray:
        if self._block is not None and index in self._block[1]:
            return self._block[1][index].copy()
        return self.images.read_rgb(index)

    def segmentation(self, index: int) -> Segmentation:
        start = index - index % self.batch_size
        if self._block is None or self._block[0] != start:
            self._block = (start, *self._predict(start))
        found = self._block[2][index]
        if isinstance(found, str):
            raise ImageReadError(found)
        return found

    def _predict(self, start: int) -> tuple[dict[int, np.ndarray], dict[int, Segmentation | str]]:
        """Read and segment images start..start+batch_size-1."""
        rgbs: dict[int, np.ndarray] = {}
        result: dict[int, Segmentation | str] = {}
        for index in range(start, min(start + self.batch_size, len(self))):
            try:
                rgbs[index] = self.images.read_rgb(index)
            except ImageReadError as error:
                result[index] = str(error)
        if not rgbs:
            return rgbs, result
        preprocess = self.preprocess
        size = preprocess.size
        batch = torch.stack([preprocess.tensor(_stretch(rgb, size)) for rgb in rgbs.values()]).to(
            self.device
        )
        module = self.model.module.to(self.device).eval()
        with torch.inference_mode():
            scores = module(batch)
        if not isinstance(scores, torch.Tensor):
            raise DissectError(
                f"segmenter {self.name!r} returned {type(scores).__name__}, not a tensor of "
                "per-pixel class scores (B, C, h, w)."
            )
        if scores.ndim == 4 and scores.shape[0] != len(rgbs):
            raise DissectError(
                f"segmenter {self.name!r} gave {scores.shape[0]} score maps for a batch of "
                f"{len(rgbs)} images: its output must be (B, C, h, w)."
            )
        maps = self.decoder.decode(scores.cpu())
        for (index, rgb), found in zip(rgbs.items(), maps, strict=True):
            result[index] = Segmentation(
                pixel={
                    category: [_resize_labels(label_map, rgb.shape[:2]) for label_map in layers]
                    for category, layers in found.items()
                }
            )
        return rgbs, result


def _stretch(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The whole image resized to (height, width) (bilinear)."""
    if rgb.shape[:2] == size:
        return rgb
    image = Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def _resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An int32 label map resized to (height, width) by nearest-neighbour sampling."""
    if labels.shape == tuple(size):
        return labels
    image = Image.fromarray(labels.astype(np.int32)).resize(
        (size[1], size[0]), Image.Resampling.NEAREST
    )
    return np.asarray(image, dtype=np.int32)
