"""IoU labels in the same pass as the statistics (``dissect run --iou``).

The threshold T of a unit is only known once every image has been seen, but the threshold sketch
knows a lower bound L <= T at any time (:meth:`~dissect.running_stats.TailQuantile.lower_bound`).
An (image, unit) pair whose map never exceeds L never exceeds T either, so its mask is empty and
it adds nothing to any counter; the concept areas need no T at all. :class:`PendingIoU` reads the
concept masks with the images (:mod:`~dissect.iou.labelled_batches`), counts the concept areas as
it goes, and keeps the feature maps of the pairs whose peak exceeds L (only the values a mask
pixel can read: :mod:`~dissect.iou.kept_maps`; with the concept masks of their images, as
regions), dropping those overtaken as L rises. What it holds beyond :data:`PENDING_BYTES` goes
to numbered files under ``DIR/.checkpoint/iou-rank<r>/``, so memory stays flat in the number of
images.
Once T is written, :func:`label_run` counts the kept pairs exactly as ``dissect autolabel``
counts every pair above T (:func:`~dissect.iou.tally.count_maps`, the same float32 operations),
so the counters, ``iou/`` and the ``iou`` labels equal those of ``dissect autolabel
--permutations 0`` with the same batch size, under any sharding and resume.
"""

from __future__ import annotations

import hashlib
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..alignment import placements
from ..config import ALIGN, IoUConfig, RunConfig, check_align
from ..directory import CHECKPOINT_DIR
from ..dissection import Dissection
from ..errors import DissectError
from ..images import Batch, ImageSource, Preprocess, data_loader
from ..io import write_torch
from ..passes import BaseListener
from ..taxonomy import DEFAULT_TAXONOMY
from .concepts import ConceptIndex, segmented_source
from .kept_maps import KeptMaps
from .labelled_batches import LabelledBatch, LabelledDataset, collate_labelled
from .labelling import write_outputs
from .regions import PairedCounts, RegionConcepts, RegionGroup
from .significance import PermutationNull
from .tally import CHUNK_BYTES, IoUStats, count_maps

#: Bytes of pending maps and masks a process holds in memory before it writes them to disk.
PENDING_BYTES = 2**24


class PendingIoU(BaseListener):
    """One process's IoU counting while the thresholds are unknown: a listener of the pass.

    Parameters
    ----------
    source : ImageSource
        The data; must have concept masks.
    out : path-like
        The dissection directory (pending maps beyond :data:`PENDING_BYTES` go under it).
    rank : int
        This process's rank.
    bounds : callable
        ``bounds(layer)``: a lower bound of every unit's threshold T of ``layer`` at this point
        of the pass (the statistics listener's, which must see each layer first).
    null : (int, int)
        (P, seed) of the permutation null counted with the labels (P = 0: none); it pairs the
        labelled images of each batch as ``dissect autolabel`` does, so the concept masks of a
        batch are kept whole while any of its pairs is.
    align : str
        Where the maps are placed (``theoretical`` or ``resize``; ``empirical`` needs ``dissect
        rf``'s results of the finished run, so it is refused here).
    """

    #: Kept in each process: the kept pairs are counted by :func:`label_run` once T is known.
    per_rank = True

    def __init__(
        self,
        source: ImageSource,
        out: str | Path,
        rank: int,
        bounds: Callable[[str], torch.Tensor],
        null: tuple[int, int] = (0, 0),
        align: str = ALIGN,
    ):
        if check_align(align) == "empirical":
            raise DissectError(
                "--align empirical places maps by the receptive fields dissect rf measures on a "
                "finished run, so dissect run --iou cannot use it: run dissect run, then dissect "
                "rf DIR, then dissect autolabel DIR --align empirical."
            )
        self.source, self.bounds, self.align = source, bounds, align
        self.permutations, self.seed = int(null[0]), int(null[1])
        self.index = ConceptIndex(segmented_source(source).concepts)
        #: SHA-256 of the concept table (in the run's checkpoint fingerprint with ``--iou``).
        self.concepts_sha256 = hashlib.sha256(
            self.index.table.to_csv(index=False).encode()
        ).hexdigest()
        self.folder = Path(out) / CHECKPOINT_DIR / f"iou-rank{rank}"
        self.rank = rank
        self.concept_area = torch.zeros(len(self.index), dtype=torch.float64)
        self.images = 0
        self.skipped: list[tuple[int, str]] = []  # readable images whose masks were not
        self.parts = 0  # files written to self.folder
        self._clear()
        self._batch: set[int] = set()  # labelled images of the batch in flight
        self._rows = torch.zeros(0, dtype=torch.bool)
        self._indices = torch.zeros(0, dtype=torch.int64)
        self._lower: dict[str, torch.Tensor] = {}
        self._added: set[int] = set()  # images of the batch in flight with a pair kept

    def _clear(self) -> None:
        #: layer: chunks of (maps, image, unit, peak) of the pairs kept
        self._maps: dict[str, list[tuple[torch.Tensor, ...]]] = {}
        #: image: its regions and its batch (the batch's smallest labelled image index)
        self._concepts: dict[int, tuple[RegionConcepts, int]] = {}
        self.held = 0  # bytes

    def loader(
        self,
        source: ImageSource,
        preprocess: Preprocess,
        indices: Sequence[int],
        batch_size: int,
        workers: int | str = 0,
        device: torch.device | None = None,
    ) -> torch.utils.data.DataLoader:
        """Like :func:`~dissect.images.make_loader`, yielding :class:`LabelledBatch` objects."""
        dataset = LabelledDataset(source, preprocess, indices, self.index)
        return data_loader(dataset, batch_size, collate_labelled, workers, device)

    def begin(self, batch: LabelledBatch) -> None:
        """Count the concept areas of a batch's labelled images; keep their masks for now."""
        for image, reason in batch.unlabelled:
            warnings.warn(f"skipped image {self.source.image_id(image)!r}: {reason}", stacklevel=2)
        self.skipped.extend(batch.unlabelled)
        concepts = batch.concepts()
        self._rows = torch.tensor([c is not None for c in concepts], dtype=torch.bool)
        self._indices = batch.indices.cpu()
        self._added = set()
        rows = enumerate(concepts)
        labelled = {int(self._indices[row]): c for row, c in rows if c is not None}
        self._batch = set(labelled)
        if not labelled:
            return
        first = min(labelled)
        for image, regions in labelled.items():
            self.concept_area += regions.area(len(self.index))
            self._concepts[image] = (regions, first)
            self.held += regions.nbytes
        self.images += len(labelled)

    def add(self, layer: str, output: torch.Tensor, batch: Batch) -> None:
        """Keep the maps of this batch's pairs of ``layer`` whose peak exceeds the lower bound
        of the unit's threshold."""
        acts = output[:, :, None, None] if output.dim() == 2 else output
        lower = self.bounds(layer).to(acts.device)
        peaks = acts.flatten(2).amax(2)
        keep = (peaks > lower[None, :]) & self._rows.to(peaks.device)[:, None]
        image, unit = keep.nonzero(as_tuple=True)
        images = self._indices[image.cpu()]
        step = max(1, CHUNK_BYTES // (4 * acts[0, 0].numel()))  # maps copied at once
        for first in range(0, len(image), step):
            rows, units = image[first : first + step], unit[first : first + step]
            maps = KeptMaps.of(acts[rows, units].float(), lower[units])
            peak = peaks[rows, units].float().cpu()
            self._maps.setdefault(layer, []).append(
                (maps, images[first : first + step], units.cpu(), peak)
            )
            self.held += maps.nbytes
        self._added.update(images.unique().tolist())
        self._lower[layer] = lower.cpu()

    def end(self, batch: Batch) -> None:
        """Forget the masks this batch's kept pairs do not need; prune or spill if full."""
        for image in self._batch - self._needed(self._added):
            self.held -= self._concepts.pop(image)[0].nbytes
        if self.held > PENDING_BYTES:
            self._prune()
        if self.held > PENDING_BYTES // 2:
            self.spill()

    def _needed(self, images: set[int]) -> set[int]:
        """The images whose masks the pairs of ``images`` meet: with the null, their batches."""
        if not self.permutations:
            return images
        batches = {self._concepts[image][1] for image in images}
        return {image for image, (_, first) in self._concepts.items() if first in batches}

    def _prune(self) -> None:
        """Drop the pairs whose peak no longer exceeds their unit's lower bound."""
        packed = self._pack()
        self._clear()
        for layer, part in packed["layers"].items():
            maps, image, unit, peak = _unpack(part)
            keep = peak > self._lower[layer][unit]
            self._maps[layer] = [(maps.select(keep), image[keep], unit[keep], peak[keep])]
            self.held += self._maps[layer][0][0].nbytes
        self._restore_concepts(packed["concepts"])
        chunks = [chunk[1] for chunks in self._maps.values() for chunk in chunks]
        referenced = set(torch.cat([*chunks, torch.zeros(0).long()]).unique().tolist())
        for image in set(self._concepts) - self._needed(referenced):
            self.held -= self._concepts.pop(image)[0].nbytes

    def _restore_concepts(self, concepts: dict) -> None:
        for n, image in enumerate(concepts["index"].tolist()):
            regions = RegionConcepts(concepts["region"][n], concepts["hits"][n])
            self._concepts[image] = (regions, int(concepts["batch"][n]))
            self.held += regions.nbytes

    def _pack(self) -> dict:
        """What is held, as tensors (for a file or a checkpoint)."""
        layers = {}
        for layer, chunks in self._maps.items():
            maps, *columns = zip(*chunks, strict=True)
            image, unit, peak = (torch.cat(column) for column in columns)
            maps = KeptMaps.cat(list(maps)).state_dict()
            layers[layer] = {"maps": maps, "image": image, "unit": unit, "peak": peak}
        order = sorted(self._concepts)
        return {
            "layers": layers,
            "concepts": {
                "index": torch.tensor(order, dtype=torch.int64),
                "region": [self._concepts[i][0].region for i in order],
                "hits": [self._concepts[i][0].hits for i in order],
                "batch": torch.tensor([self._concepts[i][1] for i in order], dtype=torch.int64),
            },
        }

    def spill(self) -> None:
        """Write what is held to the next numbered file and hold nothing."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_torch(self.folder / f"part{self.parts:06d}.pt", self._pack())  # whole or absent
        self.parts += 1
        self._clear()

    def state_dict(self) -> dict:
        """Counters, the number of files written and what is held (for a checkpoint)."""
        return {
            "concept_area": self.concept_area.clone(),
            "images": self.images,
            "skipped": [[image, reason] for image, reason in self.skipped],
            "parts": self.parts,
            "held": self._pack(),
        }

    def merge(self, state: dict) -> None:
        """Never called (``per_rank``): each process counts its own pairs in :func:`label_run`."""
        raise NotImplementedError("PendingIoU states are counted per process by label_run")

    def load_state_dict(self, state: dict | None) -> None:
        """Resume from :meth:`state_dict` (None: from the start); drop files written after it."""
        state = state or {
            "concept_area": torch.zeros_like(self.concept_area),
            "images": 0,
            "skipped": [],
            "parts": 0,
            "held": None,
        }
        self.concept_area = state["concept_area"].double()
        self.images = int(state["images"])
        self.skipped = [(int(image), str(reason)) for image, reason in state["skipped"]]
        self.parts = int(state["parts"])
        if self.folder.is_dir():
            for path in self.folder.glob("part*.pt"):
                if int(path.stem.removeprefix("part")) >= self.parts:
                    path.unlink()
        self._clear()
        if state["held"] is not None:
            for layer, part in state["held"]["layers"].items():
                self._maps[layer] = [_unpack(part)]
                self.held += self._maps[layer][0][0].nbytes
            self._restore_concepts(state["held"]["concepts"])

    def remove(self, world_size: int = 1) -> None:
        """Delete this rank's files (rank 0: also those of ranks >= ``world_size``)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.rank == 0:
            for folder in self.folder.parent.glob("iou-rank*"):
                number = folder.name.removeprefix("iou-rank")
                if number.isdigit() and int(number) >= world_size:
                    shutil.rmtree(folder, ignore_errors=True)

    def tally(
        self,
        dissection: Dissection,
        thresholds: dict[str, np.ndarray],
        device: torch.device | str = "cpu",
    ) -> tuple[dict[str, IoUStats], dict[str, PermutationNull]]:
        """Count every kept pair against the thresholds T of the finished pass: the counters of
        every layer, and its permutation null (none without one)."""
        size = dissection.preprocess.size
        index, pairings = self.index, 1 + self.permutations
        counts = {
            layer: PairedCounts(
                len(thresholds[layer]), index.category_of, len(index.categories), pairings, device
            )
            for layer in dissection.layers
        }
        limits = {layer: torch.from_numpy(thresholds[layer]).to(device) for layer in counts}
        geometry = placements(dissection, list(counts), self.align)
        for number in range(self.parts):
            part = torch.load(self.folder / f"part{number:06d}.pt", weights_only=True)
            self._count(part, counts, limits, (geometry, size), device)
        self._count(self._pack(), counts, limits, (geometry, size), device)
        stats, nulls = {}, {}
        for layer, paired in counts.items():
            stats[layer], null = paired.results(self.concept_area, self.images, self.seed)
            if null is not None:
                nulls[layer] = null
        return stats, nulls

    def _count(self, part: dict, counts, thresholds, grid, device) -> None:
        """Count the pairs of one file (or of what is held) above T, a batch at a time."""
        (geometry, size), concepts = grid, part["concepts"]
        kept = {}
        for layer, columns in part["layers"].items():
            maps, image, unit, peak = _unpack(columns)
            above = peak > thresholds[layer].cpu()[unit]
            kept[layer] = (maps.select(above), image[above], unit[above])
        needed = torch.cat([image for _, image, _ in kept.values()] + [torch.zeros(0).long()])
        rows = torch.searchsorted(concepts["index"], needed.unique())
        for first in concepts["batch"][rows].unique().tolist():
            members = (concepts["batch"] == first).nonzero().squeeze(1).tolist()
            indices = concepts["index"][members]
            group = RegionGroup.stack(
                [RegionConcepts(concepts["region"][n], concepts["hits"][n]) for n in members],
                indices.tolist(),
                self.permutations,
                self.seed,
            ).to(device)
            for layer, (maps, image, unit) in kept.items():
                inside = torch.isin(image, indices)
                if inside.any():
                    count_maps(
                        counts[layer],
                        maps.select(inside).dense(device),
                        (
                            torch.searchsorted(indices, image[inside]).to(device),
                            unit[inside].to(device),
                        ),
                        thresholds[layer],
                        geometry[layer],
                        size,
                        group,
                    )


def _unpack(part: dict) -> tuple[KeptMaps, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(maps, image, unit, peak) of one layer's packed pairs (see ``PendingIoU._pack``)."""
    return KeptMaps.from_state_dict(part["maps"]), part["image"], part["unit"], part["peak"]


def null_config(permutations: int | None, config: RunConfig) -> tuple[int, int]:
    """(P, seed) of the permutation null of ``dissect run --iou``; a clear error where it cannot
    be counted.

    Parameters
    ----------
    permutations : int or None
        P (None: :class:`~dissect.config.IoUConfig`'s default, as ``dissect autolabel``; 0: no
        null).
    config : RunConfig
        The run's batch size (partners are drawn within a batch) and seed.
    """
    permutations = IoUConfig.permutations if permutations is None else int(permutations)
    if permutations < 0:
        raise DissectError(f"--permutations must be 0 or more, got {permutations}.")
    if permutations and config.batch_size < 2:
        raise DissectError(
            "the significance of labels pairs images within a batch, so it needs --batch-size "
            "of at least 2; raise --batch-size or pass --permutations 0 to skip p-values."
        )
    return permutations, int(config.seed)


def label_run(
    pending: PendingIoU,
    dissection: Dissection,
    thresholds: dict[str, np.ndarray],
    skipped: Sequence[tuple[int, str]],
    device: torch.device | str = "cpu",
) -> None:
    """Count every rank's kept pairs against the thresholds; rank 0 writes ``iou/``.

    Parameters
    ----------
    pending : PendingIoU
        This rank's state after the pass.
    dissection : Dissection
        The dissection directory, already written by rank 0.
    thresholds : dict of str to ndarray
        The threshold T of every unit of every layer, as the pass computed them (on every rank).
    skipped : sequence of (int, str)
        Images the pass could not read (rank 0: all ranks'); listed in ``iou/skipped.csv`` with
        those whose label maps could not be read.
    device : torch.device or str
        Where to count.
    """
    stats, nulls = pending.tally(dissection, thresholds, device)
    mine = {
        "layers": {layer: counts.state_dict() for layer, counts in stats.items()},
        "null": {layer: null.state_dict() for layer, null in nulls.items()},
        "skipped": [[image, reason] for image, reason in pending.skipped],
    }
    merged = distributed.gather_and_merge(mine, _merge)
    if merged is not None:
        counts = {
            layer: IoUStats.from_state_dict(state, device)
            for layer, state in merged["layers"].items()
        }
        nulls = {
            layer: PermutationNull.from_state_dict(state, device)
            for layer, state in merged["null"].items()
        }
        unlabelled = [(int(image), str(reason)) for image, reason in merged["skipped"]]
        skipped = sorted([*skipped, *unlabelled])
        write_outputs(
            dissection, counts, pending.index, DEFAULT_TAXONOMY, nulls, skipped, align=pending.align
        )
    distributed.barrier()  # rank 0 has written


def _merge(first: dict, second: dict) -> dict:
    return {
        "layers": {
            layer: IoUStats.from_state_dict(state)
            .merge(IoUStats.from_state_dict(second["layers"][layer]))
            .state_dict()
            for layer, state in first["layers"].items()
        },
        "null": {
            layer: PermutationNull.from_state_dict(state)
            .merge(PermutationNull.from_state_dict(second["null"][layer]))
            .state_dict()
            for layer, state in first["null"].items()
        },
        "skipped": first["skipped"] + second["skipped"],
    }
