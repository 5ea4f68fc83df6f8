"""How sure is an IoU label? A permutation null of every unit's best IoU.

A unit's automatic label is its best concept, and its score the best IoU over all concepts. Even a
unit with no relation to any concept scores above zero: its masks overlap frequent, large concepts
by chance, and the best of C concepts is larger still. The baseline here keeps both marginals and
breaks only the pairing of unit masks with concept masks:

    for permutation p = 1..P, pair the unit masks of image i with the concept masks of image
    pi_p(i), count intersection and union exactly as for the real pairing, and take the unit's
    best IoU over all concepts, null_p(k).

Every unit mask and every concept mask is still counted once (so unit areas, concept areas and the
number of images stay the same); only which mask meets which changes. Because ``null_p(k)`` is the
maximum over all concepts, exactly as the label is, the test accounts for the label's selection
among ~100 concepts.

The permutation p-value ``(1 + #{p : null_p(k) >= best(k)}) / (P + 1)`` cannot go below
``1 / (P + 1)`` (0.05 for P = 19): every real detector gets that floor, and nothing separates
them. The reported ``p_value`` is therefore *asymptotic*: a maximum of many nearly normal IoUs
(each a ratio of counts over hundreds of images) is Gumbel distributed in the limit. The Gumbel
laws are a location-scale family, so the studentized distance of the real best IoU from the
null's P values, ``t = (best - mean(null)) / std(null)`` (the z-score), has one distribution
whatever the unit's location and scale, which accounts for both being estimated from only P
values (plugging the estimates into the Gumbel's tail instead is too liberal: 14 times at
``t = 9.2`` for P = 19). Its upper tail is::

    p_value(k) = E[ 1 - exp(-exp(-(m + t(k) s))) ]

over the mean ``m`` and standard deviation ``s`` of P standard Gumbel draws: the chance that one
more draw lies ``t`` standard deviations above the mean of P others. The expectation is averaged
over :data:`NULL_SAMPLES` fixed-seed samples (smooth, so it reaches far into the tail; the same
numbers on every run). Where the null does not vary, the permutation p-value is reported. Across
the units of a layer, :func:`benjamini_hochberg` turns the p-values into q-values: calling every
unit with ``q <= Q`` significant keeps the expected share of false discoveries at most Q
(``--fdr``). data/README ("Significance of labels") measures the calibration with concept masks
paired with the wrong images.

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
from functools import lru_cache

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


#: Samples of P standard Gumbel draws averaged over for the studentized tail (fixed seed).
NULL_SAMPLES = 20000


def significance(best: np.ndarray, null: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Asymptotic p-values and z-scores of every unit's best IoU against its permutation null.

    Parameters
    ----------
    best : ndarray
        (U,) every unit's best IoU with the real pairing.
    null : ndarray
        (P, U) its best IoU under each of P permutations (:meth:`PermutationNull.best`).

    Returns
    -------
    (ndarray, ndarray)
        ``p_value``: the studentized Gumbel tail at the z-score (see the module docstring);
        where the null does not vary (or P = 1), the permutation p-value ``(1 + #{p: null >=
        best}) / (P + 1)``. ``z_score`` = (best - mean(null)) / std(null), NaN where the null
        does not vary.

    Examples
    --------
    >>> null = np.array([[0.10], [0.11], [0.12], [0.09], [0.10]])
    >>> p, z = significance(np.array([0.2]), null)
    >>> bool(p[0] < 1e-3)
    True
    """
    best = np.asarray(best, dtype=np.float64)
    null = np.asarray(null, dtype=np.float64)
    p_value = permutation_p_values(best, null)
    spread = null.std(0, ddof=1) if len(null) > 1 else np.zeros_like(best)
    mean = null.mean(0)
    varies = spread > 1e-12 * np.maximum(np.abs(mean), 1.0)
    z_score = np.full(best.shape, np.nan)
    z_score[varies] = (best[varies] - mean[varies]) / spread[varies]
    if varies.any():
        p_value[varies] = studentized_gumbel_tail(z_score[varies], len(null))
    return p_value, z_score


def studentized_gumbel_tail(t: np.ndarray, permutations: int) -> np.ndarray:
    """Chance that one more Gumbel draw lies at least ``t`` standard deviations above the mean of
    ``permutations`` others (their mean and standard deviation estimated from them).

    Parameters
    ----------
    t : ndarray
        Studentized distances (z-scores).
    permutations : int
        P >= 2, the draws the mean and deviation come from.

    Returns
    -------
    ndarray
        Tail probabilities, the same shape as ``t``.
    """
    means, deviations = _gumbel_sample_moments(permutations)
    t = np.asarray(t, dtype=np.float64)
    flat = t.reshape(-1)
    tails = np.empty(len(flat))
    for start in range(0, len(flat), 64):  # 64 x NULL_SAMPLES doubles at a time
        levels = means[None, :] + flat[start : start + 64, None] * deviations[None, :]
        with np.errstate(over="ignore"):
            tails[start : start + 64] = -np.expm1(-np.exp(-levels)).mean(1)
    return tails.reshape(t.shape)


@lru_cache(maxsize=4)
def _gumbel_sample_moments(permutations: int) -> tuple[np.ndarray, np.ndarray]:
    draws = np.random.default_rng(0).gumbel(size=(NULL_SAMPLES, permutations))
    return draws.mean(1), draws.std(1, ddof=1)


def permutation_p_values(best: np.ndarray, null: np.ndarray) -> np.ndarray:
    """``(1 + #{p: null_p >= best}) / (P + 1)`` per unit: exact, but at least 1 / (P + 1)."""
    best = np.asarray(best, dtype=np.float64)
    null = np.asarray(null, dtype=np.float64)
    return (1 + (null >= best[None, :]).sum(0)) / (len(null) + 1)


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of one family of tests (a layer's units).

    Parameters
    ----------
    p_values : array-like
        (U,) p-values; NaN (untested units) are left out of the family and stay NaN.

    Returns
    -------
    ndarray
        ``q[i] = min over j with p_j >= p_i of (m p_j / rank_j)``, at most 1: calling the units
        with ``q <= Q`` significant controls the false discovery rate at Q for independent or
        positively dependent tests.

    Examples
    --------
    >>> benjamini_hochberg(np.array([0.01, 0.03, 0.02, 0.5]))
    array([0.04, 0.04, 0.04, 0.5 ])
    """
    p_values = np.asarray(p_values, dtype=np.float64)
    q_values = np.full(p_values.shape, np.nan)
    tested = np.flatnonzero(np.isfinite(p_values))
    if not len(tested):
        return q_values
    order = tested[np.argsort(p_values[tested], kind="stable")]
    ranked = p_values[order] * len(order) / np.arange(1, len(order) + 1)
    q_values[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q_values
