"""How sure is an IoU label? A permutation null of every unit's best IoU.

A unit's automatic label is its best concept, and its score the best IoU over all concepts. Even a
unit with no relation to any concept scores above zero: its masks overlap frequent, large concepts
by chance, and the best of C concepts is larger still. The baseline here keeps both marginals and
breaks only the pairing of unit masks with concept masks:

    for permutation p = 1..P, pair the unit masks of image i with the concept masks of image
    pi_p(i), count intersection and union exactly as for the real pairing, and take the unit's
    best IoU over all concepts, null_p(k).

Every unit mask and every concept mask is still counted once (so unit areas, concept areas and the
number of images stay the same); only which mask meets which changes. The p-value of unit k is the
share of permutations whose best IoU reaches the real one, counting the real pairing itself::

    p_value(k) = (1 + #{p : null_p(k) >= best(k)}) / (P + 1)

so the smallest reportable p-value is ``1 / (P + 1)`` (0.05 for the default P = 19). The z-score
``(best - mean(null)) / std(null)`` ranks units beyond that floor.

Partners are drawn inside each batch of the IoU pass: the batch's readable images are ordered by a
hash of (seed, p, global image index) and each is paired with the next one in that order (the last
with the first), so no image is its own partner when a batch holds two or more images. Batches
cover the same global images in one process and under torchrun (shards are cut between batches),
and the hash does not depend on how the run was split or resumed: the counts, and so the p-values,
are identical. They do depend on ``--batch-size`` (which images can be partners); a batch of one
image pairs it with itself, which is why the null needs ``--batch-size`` of at least 2.

Cost: one extra set of counters per permutation (units x concepts float64, plus units x
categories) and, per batch, one extra pass of the intersection counting over the pixels inside the
unit masks; reading images, the forward pass, upsampling and thresholding are shared with the real
count. P = 19 makes the counting 20 times as much work as without the null.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .concepts import ConceptBatch
from .tally import IoUStats

#: Permutations by default: the smallest reportable p-value is 1 / (P + 1) = 0.05.
DEFAULT_PERMUTATIONS = 19


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread uint64 hash of uint64 values."""
    with np.errstate(over="ignore"):
        values = values.astype(np.uint64)
        values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


def partners(indices: Sequence[int], seed: int, permutation: int) -> np.ndarray:
    """The null pairing of one batch: row ``i`` is paired with row ``partners(...)[i]``.

    Parameters
    ----------
    indices : sequence of int
        Global image indices of the batch's readable images (its rows), in order.
    seed : int
        Seed of the null.
    permutation : int
        Which permutation (0..P-1).

    Returns
    -------
    ndarray of int64
        A single-cycle permutation of the rows (the identity for one row) that depends only on
        ``seed``, ``permutation`` and the global indices, not on the order of ``indices``.
    """
    index = np.asarray(indices, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(int(seed) % 2**64) * np.uint64(0x9E3779B97F4A7C15))
        key = _mix(key + np.uint64(permutation))
        order = np.argsort(_mix(index ^ key), kind="stable")
    result = np.empty(len(index), dtype=np.int64)
    result[order] = np.roll(order, -1)
    return result


class PermutationNull:
    """Counters of the same IoU under P random re-pairings of unit masks with concept masks.

    Used alongside :class:`~dissect.iou.tally.IoUStats`: call :meth:`add_concepts` once per batch
    (with the batch's global image indices) and :meth:`add_masks` with the same arguments as the
    real counters' ``add_masks``.

    Parameters
    ----------
    units : int
        Units of the layer.
    category_of : array of int
        (C,) the category column of every concept column.
    categories : int
        Number of categories.
    permutations : int
        P, the number of re-pairings.
    seed : int
        Seed of the re-pairings.
    device : str or torch.device
        Where the counters live.
    """

    def __init__(
        self,
        units: int,
        category_of: np.ndarray | torch.Tensor,
        categories: int,
        permutations: int = DEFAULT_PERMUTATIONS,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        if permutations < 1:
            raise ValueError(f"a permutation null needs at least one permutation: {permutations}")
        self.seed = int(seed)
        self.counts = [
            IoUStats(units, category_of, categories, device) for _ in range(permutations)
        ]
        self._partners: list[torch.Tensor] = []

    @property
    def permutations(self) -> int:
        """P."""
        return len(self.counts)

    def add_concepts(self, concepts: ConceptBatch, indices: Sequence[int]) -> None:
        """Count a batch's concept areas and draw its pairings.

        Parameters
        ----------
        concepts : ConceptBatch
            The concept masks of the batch's readable images.
        indices : sequence of int
            Their global image indices, one per row of ``concepts``.
        """
        if len(indices) != len(concepts.whole):
            raise ValueError("one global image index is needed per row of the concept batch")
        device = self.counts[0].intersection.device
        self._partners = []
        for permutation, counts in enumerate(self.counts):
            counts.add_concepts(concepts)
            rows = partners(indices, self.seed, permutation)
            self._partners.append(torch.from_numpy(rows).to(device))

    def add_masks(
        self,
        masks: torch.Tensor,
        images: torch.Tensor,
        units: torch.Tensor,
        concepts: ConceptBatch,
    ) -> None:
        """Count masks of (image, unit) pairs against the concepts of each image's partners."""
        images = images.to(self.counts[0].intersection.device)
        for rows, counts in zip(self._partners, self.counts, strict=True):
            counts.add_masks(masks, rows[images], units, concepts)

    def add_pixels(
        self,
        pair: torch.Tensor,
        position: torch.Tensor,
        images: torch.Tensor,
        units: torch.Tensor,
        concepts: ConceptBatch,
    ) -> None:
        """The sparse form of :meth:`add_masks` (see ``IoUStats.add_pixels``)."""
        images = images.to(self.counts[0].intersection.device)
        for rows, counts in zip(self._partners, self.counts, strict=True):
            counts.add_pixels(pair, position, rows[images], units, concepts)

    def merge(self, other: PermutationNull) -> PermutationNull:
        """Add another shard's counts (over different images); return self."""
        if self.permutations != other.permutations or self.seed != other.seed:
            raise ValueError("cannot merge permutation nulls with other permutations or seeds")
        for mine, theirs in zip(self.counts, other.counts, strict=True):
            mine.merge(theirs)
        return self

    def best(self) -> np.ndarray:
        """(P, U) every unit's best IoU over all concepts under each permutation."""
        return np.stack([counts.iou().max(1, initial=0.0) for counts in self.counts])

    def state_dict(self) -> dict:
        """Tensors and numbers only (readable with ``torch.load(..., weights_only=True)``)."""
        return {"seed": self.seed, "counts": [counts.state_dict() for counts in self.counts]}

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str = "cpu") -> PermutationNull:
        """Rebuild a null saved with :meth:`state_dict`."""
        null = cls.__new__(cls)
        null.seed = int(state["seed"])
        null.counts = [IoUStats.from_state_dict(value, device) for value in state["counts"]]
        null._partners = []
        return null


def significance(best: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p-values and z-scores of every unit's best IoU against its permutation null.

    Parameters
    ----------
    best : ndarray
        (U,) every unit's best IoU with the real pairing.
    null : ndarray
        (P, U) its best IoU under each of P permutations (:meth:`PermutationNull.best`).

    Returns
    -------
    (ndarray, ndarray)
        ``p_value`` = (1 + #{p: null >= best}) / (P + 1), at least 1 / (P + 1); and
        ``z_score`` = (best - mean(null)) / std(null), NaN where the null does not vary.
    """
    best = np.asarray(best, dtype=np.float64)
    null = np.asarray(null, dtype=np.float64)
    p_value = (1 + (null >= best[None, :]).sum(0)) / (len(null) + 1)
    spread = null.std(0, ddof=1) if len(null) > 1 else np.zeros_like(best)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_score = np.where(spread > 0, (best - null.mean(0)) / spread, np.nan)
    return p_value, z_score
