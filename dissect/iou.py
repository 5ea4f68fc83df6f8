"""Automatic unit labels by IoU with dense concept masks (NetDissect, Bau et al. 2017).

For unit k and concept c, over the whole dataset::

    IoU(k, c) = sum |M_k ∩ L_c| / sum |M_k ∪ L_c|

where M_k is the unit's activation map upsampled to the input (aligned by the layer's stride and
offset) and kept above the unit's threshold T_k, and L_c the pixels labelled c. An image-level
concept (a scene) covers the whole image. As in NetDissect, the union only counts the unit's area
on images where the concept's category is annotated, so a unit is not blamed for firing on images
that carry no part labels, say: ``union = A_k,cat(c) + |L_c| - I_k,c``.

:class:`IoUStats` keeps the three counters (units x concepts, units x categories, concepts), not
images; it has ``add``, ``merge``, ``state_dict`` and ``from_state_dict`` so shards combine
exactly. :func:`compute_iou` streams a dataset through the network and checkpoints after every
batch; :func:`autolabel` writes ``iou/<layer>.npz``, ``iou/concepts.csv`` and the ``iou`` label
source (``dissect autolabel``).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from . import distributed
from .datasets.masks import CATEGORIES, SegmentedSource
from .dissection import Dissection, layer_file_name, pick_device
from .errors import DissectError
from .hooks import LayerTrace
from .images import ImageReadError, ImageSource, Preprocess
from .io import atomic_path, read_npz, write_csv, write_npz
from .labels import read_labels, write_labels
from .models import LoadedModel
from .taxonomy import DEFAULT_TAXONOMY, Taxonomy
from .upsample import upsample_maps

#: Bytes of upsampled unit maps handled at once (images are split to stay under it).
CHUNK_BYTES = 2**28
CHECKPOINT = "checkpoint.pt"


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

    def image_concepts(self, segmentation, preprocess: Preprocess) -> ImageConcepts:
        """Bring one image's :class:`~dissect.datasets.Segmentation` to the network input."""
        size = preprocess.image_size
        maps = [
            self.columns(preprocess.display_labels(label_map)).reshape(-1)
            for category in segmentation.pixel
            for label_map in segmentation.pixel[category]
        ]
        pixel = np.stack(maps) if maps else np.full((0, size * size), -1, dtype=np.int64)
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


class _ConceptDataset(torch.utils.data.Dataset):
    """Preprocessed images with their concept masks; unreadable images come back as None."""

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
        except ImageReadError as error:
            return image, None, None, str(error)
        concepts = self.index.image_concepts(self.source.segmentation(image), self.preprocess)
        return image, tensor, concepts, ""


class _Collate:
    """Stack a batch of images and their concepts; keep (index, reason) of unreadable ones."""

    def __init__(self, pixels: int, concepts: int):
        self.pixels, self.concepts = pixels, concepts

    def __call__(self, items):
        good = [item for item in items if item[1] is not None]
        skipped = [(item[0], item[3]) for item in items if item[1] is None]
        if not good:
            return len(items), None, None, skipped
        images = torch.stack([item[1] for item in good])
        concepts = ConceptBatch.stack([item[2] for item in good], self.pixels, self.concepts)
        return len(items), images, concepts, skipped


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


def _fingerprint(dissection: Dissection, layers: Sequence[str], index: ConceptIndex) -> str:
    """Identifies what a checkpoint was computed for: the pass, the layers, the concepts."""
    text = "|".join(
        [
            str(dissection.manifest.get("created")),
            str(dissection.manifest.get("n_images")),
            f"world_size={distributed.world_size()}",
            ",".join(layers),
            index.table.to_csv(index=False),
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def compute_iou(
    dissection: Dissection,
    layers: Sequence[str] | None = None,
    *,
    model: LoadedModel | None = None,
    source: ImageSource | None = None,
    batch_size: int = 16,
    device: str = "auto",
    workers: int = 0,
    progress: bool = True,
    checkpoint: bool = True,
    restart: bool = False,
) -> tuple[dict[str, IoUStats], ConceptIndex]:
    """Stream the dissected images through the network and count IoU for every unit and concept.

    Parameters
    ----------
    dissection : Dissection
        An opened dissection directory (gives thresholds, geometry, preprocessing).
    layers : sequence of str, optional
        Layers to label (default: all dissected ones).
    model : LoadedModel, optional
        The dissected model (default: loaded again from the manifest).
    source : ImageSource, optional
        The dissected data with concept masks (default: opened again from the manifest).
    batch_size : int
        Images per forward.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    workers : int
        DataLoader worker processes (reading images and masks).
    progress : bool
        Show a progress bar.
    checkpoint : bool
        Save the counters to ``iou/checkpoint.pt`` after every batch and resume from it, so an
        interruption loses at most the batch in flight.
    restart : bool
        Ignore an existing checkpoint and start from the first image.

    Returns
    -------
    (dict of str to IoUStats, ConceptIndex)
        The counters per layer, and the concept columns they use.
    """
    layers = dissection.check_layers(layers)
    if batch_size < 1:
        raise DissectError(f"--batch-size must be at least 1, got {batch_size}.")
    source = segmented_source(source or dissection.open_data())
    loaded = model or dissection.load_model()
    preprocess = dissection.preprocess
    index = ConceptIndex(source.concepts)
    torch_device = pick_device(device)
    distributed.init(torch_device)
    torch_device = distributed.local_device(torch_device)
    module = loaded.module.to(torch_device)
    thresholds = {
        layer: torch.from_numpy(dissection.thresholds(layer)).to(torch_device) for layer in layers
    }
    geometry = {layer: dissection.geometry(layer) for layer in layers}
    stats = {
        layer: IoUStats(
            len(thresholds[layer]), index.category_of, len(index.categories), torch_device
        )
        for layer in layers
    }
    path = checkpoint_path(dissection)
    fingerprint = _fingerprint(dissection, layers, index)
    resume = checkpoint and not restart
    start = _resume(path, fingerprint, stats, torch_device) if resume else 0
    size = preprocess.image_size
    shard = distributed.shard(range(len(source)), block=batch_size)
    loader = torch.utils.data.DataLoader(
        _ConceptDataset(source, preprocess, index, shard[start:]),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_Collate(size * size, len(index)),
    )
    show = progress and distributed.is_main()
    bar = tqdm(total=len(shard), initial=start, unit="img", desc="iou", disable=not show)
    position = start
    with torch.inference_mode(), LayerTrace(module, layers, stop=True) as trace:
        for count, images, concepts, skipped in loader:
            for image, reason in skipped:
                warnings.warn(f"skipped image {source.image_id(image)!r}: {reason}", stacklevel=2)
            if images is not None:
                outputs = trace(images.to(torch_device))
                for layer in layers:
                    stats[layer].add_concepts(concepts)
                    _count_layer(stats[layer], outputs[layer], thresholds[layer],
                                 geometry[layer], size, concepts)  # fmt: skip
            position += count
            if checkpoint:
                _save_checkpoint(path, fingerprint, position, stats)
            bar.update(count)
    bar.close()
    merged = distributed.gather_and_merge(
        {layer: counts.state_dict() for layer, counts in stats.items()}, _merge_states
    )
    if merged is None:
        return {}, index
    return {layer: IoUStats.from_state_dict(merged[layer], torch_device) for layer in layers}, index


def _merge_states(first: dict, second: dict) -> dict:
    """Merge two ranks' ``{layer: IoUStats.state_dict()}``."""
    return {
        layer: IoUStats.from_state_dict(first[layer])
        .merge(IoUStats.from_state_dict(second[layer]))
        .state_dict()
        for layer in first
    }


def checkpoint_path(dissection: Dissection) -> Path:
    """This process's checkpoint of the IoU pass (one per rank under torchrun)."""
    rank = distributed.rank()
    return dissection.path("iou", CHECKPOINT if rank == 0 else f"checkpoint-rank{rank}.pt")


def _count_layer(
    stats: IoUStats,
    acts: torch.Tensor,
    thresholds: torch.Tensor,
    geometry,
    size: int,
    concepts: ConceptBatch,
) -> None:
    """Upsample, threshold and count the maps of one layer for one batch.

    Bilinear upsampling never exceeds a map's peak, so only (image, unit) pairs whose peak is
    above the unit's threshold can have a non-empty mask: the others are skipped, exactly.
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


def _resume(path: Path, fingerprint: str, stats: dict[str, IoUStats], device) -> int:
    """Load counters from a matching checkpoint; return the first image still to do."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint or set(state["layers"]) != set(stats):
        return 0
    for layer in stats:
        stats[layer] = IoUStats.from_state_dict(state["layers"][layer], device)
    return int(state["position"])


def _save_checkpoint(path: Path, fingerprint: str, position: int, stats) -> None:
    state = {
        "fingerprint": fingerprint,
        "position": position,
        "layers": {layer: value.state_dict() for layer, value in stats.items()},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def best_concepts(
    iou: np.ndarray, index: ConceptIndex, taxonomy: Taxonomy = DEFAULT_TAXONOMY
) -> pd.DataFrame:
    """The best concept of every unit, as label rows.

    Parameters
    ----------
    iou : ndarray
        (U, C) IoU of every unit with every concept column.
    index : ConceptIndex
        Names and categories of the columns.
    taxonomy : Taxonomy
        Maps the concept's dataset category onto a semantic type key.

    Returns
    -------
    DataFrame
        ``unit,label,category,concept_category,iou,concept``; ties go to the lower column.
    """
    best = iou.argmax(1)
    rows = index.table.iloc[best]
    return pd.DataFrame(
        {
            "unit": np.arange(len(iou)),
            "label": rows["name"].to_numpy(),
            "category": taxonomy.map_categories(rows["category"].tolist()),
            "concept_category": rows["category"].to_numpy(),
            "iou": iou[np.arange(len(iou)), best],
            "concept": rows["number"].to_numpy(),
        }
    )


def autolabel(
    directory: str | Path | Dissection,
    layers: Sequence[str] | None = None,
    *,
    taxonomy: Taxonomy = DEFAULT_TAXONOMY,
    **options,
) -> pd.DataFrame:
    """Label every unit by its best IoU concept and write the results.

    Writes ``iou/<layer>.npz`` (arrays ``iou``, ``intersection``, ``union`` of shape (U, C)),
    ``iou/concepts.csv`` (``column,number,name,category``) and the ``iou`` label source, which
    rebuilds ``labels.csv`` (crowd labels keep precedence; the ``iou`` labels of layers not
    labelled this time are kept).

    Parameters
    ----------
    directory : path-like or Dissection
        The dissection directory.
    layers : sequence of str, optional
        Layers to label (default: all).
    taxonomy : Taxonomy
        Maps dataset categories onto semantic types for the ``category`` column.
    **options
        ``model``, ``source``, ``batch_size``, ``device``, ``workers``, ``progress``,
        ``checkpoint``, ``restart``: see :func:`compute_iou`.

    Returns
    -------
    DataFrame
        The ``iou`` labels: ``layer,unit,label,category,concept_category,iou,concept``.
    """
    dissection = directory if isinstance(directory, Dissection) else Dissection(directory)
    stats, index = compute_iou(dissection, layers, **options)
    if distributed.is_main():
        labels = _write_labels(dissection, stats, index, taxonomy)
    distributed.barrier()  # rank 0 has written
    checkpoint_path(dissection).unlink(missing_ok=True)
    if not distributed.is_main():
        labels = read_labels(dissection.directory, "iou")
        labels = labels[labels["layer"].isin(dissection.check_layers(layers))]
    return labels


def _write_labels(
    dissection: Dissection, stats: dict[str, IoUStats], index: ConceptIndex, taxonomy: Taxonomy
) -> pd.DataFrame:
    """Write the IoU tables and the ``iou`` label source; return the new labels."""
    write_csv(
        dissection.path("iou", "concepts.csv"),
        index.table.rename_axis("column").reset_index(),
    )
    tables = []
    for layer, counts in stats.items():
        iou = counts.iou()
        write_npz(
            dissection.path("iou", f"{layer_file_name(layer)}.npz"),
            iou=iou,
            intersection=counts.intersection.cpu().numpy(),
            union=counts.union().cpu().numpy(),
        )
        tables.append(best_concepts(iou, index, taxonomy).assign(layer=layer))
    labels = pd.concat(tables, ignore_index=True)
    labels = labels[["layer", *[c for c in labels.columns if c != "layer"]]]
    earlier = read_labels(dissection.directory, "iou")
    earlier = earlier[~earlier["layer"].isin(list(stats))]  # layers labelled in an earlier run
    write_labels(dissection.directory, "iou", pd.concat([earlier, labels], ignore_index=True))
    return labels


def read_iou(directory: str | Path | Dissection, layer: str) -> pd.DataFrame:
    """The unit x concept IoU table of one layer, written by :func:`autolabel`.

    Returns
    -------
    DataFrame
        One row per unit, one column per concept (a (category, name) MultiIndex).
    """
    dissection = directory if isinstance(directory, Dissection) else Dissection(directory)
    dissection.check_layers([layer])
    path = dissection.path("iou", f"{layer_file_name(layer)}.npz")
    if not path.is_file():
        raise DissectError(
            f"layer {layer!r} has no IoU table yet; run dissect autolabel {dissection.directory}."
        )
    concepts = pd.read_csv(dissection.path("iou", "concepts.csv"), keep_default_na=False)
    columns = pd.MultiIndex.from_frame(concepts[["category", "name"]])
    table = pd.DataFrame(read_npz(path)["iou"], columns=columns)
    return table.rename_axis("unit")
