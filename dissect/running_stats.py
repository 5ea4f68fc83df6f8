"""Streaming, mergeable per-unit statistics: top-K images, mean, max and the threshold T.

Every statistic has ``add`` (one batch), ``merge`` (another shard's statistic, exactly),
``state_dict`` and ``from_state_dict`` (tensors and numbers only, so ``torch.load(...,
weights_only=True)`` reads them back). Memory is bounded by units x (K + 2 x sketch size), never by
the number of images.

The threshold T of a unit is the value exceeded by the top ``quantile`` fraction of all its
activation values (every position of every image). :class:`TailQuantile` is told an upper bound on
the number of values (images x positions), which fixes how much of the tail it must keep. It is
exact while ``quantile * values <= size`` (it keeps exactly the top ``quantile * values + 1``
values). Beyond that it keeps the same top of a uniform random sample of the values, taken at the
largest rate ``2 ** -level`` that leaves at most ``size`` values in the sample's tail; the sample's
tail then holds between ``size / 2`` and ``size`` values, so the fraction of values above T is
within about ``1 / sqrt(size / 2)`` (relative standard error; 1.6-2.2% at the default size) of
the quantile. Whether a value is in the sample is a hash of (seed, global image index, position)
alone, shared by all units, so the sample -- and T -- do not depend on batching, on how the images
are sharded over processes, or on where a run was interrupted and resumed.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Most values the threshold sketch keeps of each unit's upper tail.
DEFAULT_SKETCH_SIZE = 4096

_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # < 2**27: products of 32-bit values stay inside int64


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mix of int64 values in [0, 2**32) (no overflow, the same on any device)."""
    x = (((x >> 16) ^ x) * _MIX) & _MASK32
    x = (((x >> 16) ^ x) * _MIX) & _MASK32
    return (x >> 16) ^ x


def sample_mask(seed: int, images: torch.Tensor, positions: int, level: int) -> torch.Tensor:
    """Which (image, position) values a sketch at rate ``2 ** -level`` samples.

    Parameters
    ----------
    seed : int
        The run's seed.
    images : Tensor
        (B,) int64 global image indices.
    positions : int
        Values per image and unit (the positions of a map).
    level : int
        Sampling level, 0 to 32: a value is kept with probability ``2 ** -level``.

    Returns
    -------
    Tensor
        (B, positions) bool, a function of (seed, image index, position) only.
    """
    device = images.device
    seed_key = _hash32(torch.tensor(seed & _MASK32, dtype=torch.int64, device=device))
    image_key = _hash32((images.long() & _MASK32) ^ seed_key)
    position_key = _hash32(torch.arange(positions, dtype=torch.int64, device=device) + 0x9E3779B9)
    mixed = _hash32(image_key[:, None] ^ position_key[None, :])
    return (mixed >> (32 - level)) == 0


class TopK:
    """The K highest-scoring images of every unit, with the peak location of each.

    Order is by score descending, ties broken by lower image index, so results do not depend on
    batching or on the order shards are merged.

    Parameters
    ----------
    units : int
        Number of units.
    k : int
        Images kept per unit.
    """

    def __init__(self, units: int, k: int, device: torch.device | str = "cpu"):
        self.k = k
        self.score = torch.full((units, k), -math.inf, device=device)
        self.index = torch.full((units, k), -1, dtype=torch.int64, device=device)
        self.y = torch.zeros((units, k), dtype=torch.int64, device=device)
        self.x = torch.zeros((units, k), dtype=torch.int64, device=device)

    def add(self, score: torch.Tensor, index: torch.Tensor, y: torch.Tensor, x: torch.Tensor):
        """Offer candidates: arrays of shape (units, n), ``index`` may be (n,) for all units."""
        units = self.score.shape[0]
        index = index.expand(units, -1) if index.dim() == 1 else index
        self._keep(
            torch.cat([self.score, score.float()], 1),
            torch.cat([self.index, index], 1),
            torch.cat([self.y, y], 1),
            torch.cat([self.x, x], 1),
        )

    def _keep(self, score, index, y, x) -> None:
        order = _order_key(score, index).topk(self.k, dim=1).indices
        self.score, self.index = score.gather(1, order), index.gather(1, order)
        self.y, self.x = y.gather(1, order), x.gather(1, order)

    def merge(self, other: TopK) -> None:
        """Fold in another shard's top-K (of disjoint images)."""
        self.add(other.score, other.index, other.y, other.x)

    def arrays(self) -> dict[str, np.ndarray]:
        """``index``, ``score``, ``y``, ``x`` as numpy arrays of shape (units, K)."""
        return {
            "index": self.index.cpu().numpy(),
            "score": self.score.cpu().numpy(),
            "y": self.y.cpu().numpy(),
            "x": self.x.cpu().numpy(),
        }

    def state_dict(self) -> dict:
        return {"k": self.k, "score": self.score, "index": self.index, "y": self.y, "x": self.x}

    @classmethod
    def from_state_dict(cls, state: dict) -> TopK:
        topk = cls(state["score"].shape[0], state["k"], state["score"].device)
        topk.score, topk.index, topk.y, topk.x = (
            state["score"],
            state["index"],
            state["y"],
            state["x"],
        )
        return topk


def _order_key(score: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered like (score, -index), empty slots (index -1) below all others.

    The float32 score's bits, turned into an int32 of the same order, fill the high half; the
    low half holds 2**32 - 1 - index, so of equal scores the lower image index is larger.
    """
    bits = (score.float() + 0.0).view(torch.int32)  # + 0.0 makes -0.0 equal to 0.0
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: reverse their order
    rank_index = torch.where(index < 0, 2**32 - 1, index)
    return bits.long() * 2**32 + (2**32 - 1 - rank_index)


class TailQuantile:
    """Per-unit upper-tail quantile of a stream of at most ``max_values`` values per unit.

    Parameters
    ----------
    units : int
        Number of units.
    quantile : float
        The top fraction whose lower bound is wanted (0.005: the 99.5th percentile).
    max_values : int
        Upper bound on the values each unit will receive (images x positions of the whole run,
        all shards together). It fixes the sampling rate and the buffer, so shards merge exactly.
    size : int
        Most values kept per unit.
    seed : int
        Keys the sampling (with the image index and position), so a run is repeatable.
    """

    def __init__(
        self,
        units: int,
        quantile: float,
        max_values: int,
        size: int = DEFAULT_SKETCH_SIZE,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be between 0 and 1, got {quantile}")
        self.quantile = quantile
        self.max_values = max_values
        self.size = size
        self.seed = seed
        self.level = 0  # values are sampled at rate 2 ** -level
        while quantile * max_values * self.rate > size and self.level < 32:
            self.level += 1
        self.count = 0  # values seen per unit
        self.capacity = int(quantile * max_values * self.rate) + 1  # the tail T needs, at most
        # The unit's top ``capacity`` values, plus up to as many more (compacted when full),
        # and the smallest of that top at the last compaction: nothing below it can enter.
        self.values = torch.full((units, self.capacity), -math.inf, device=device)
        self.floor = torch.full((units,), -math.inf, device=device)
        self.next_image = 0  # the image index ``add`` assumes when it is given none

    @property
    def rate(self) -> float:
        return 2.0**-self.level

    def add(self, values: torch.Tensor, images: torch.Tensor | None = None) -> None:
        """Add values of shape (units, n) (one image), or (batch, units, ...) such as maps.

        Parameters
        ----------
        values : Tensor
            (units, n) or (batch, units, ...) values.
        images : Tensor, optional
            (batch,) global image indices, which key the sampling; default: the images after
            the last one added. Pass them whenever shards or resumed runs must agree.
        """
        values = values[None] if values.dim() == 2 else values
        values = values.reshape(*values.shape[:2], -1)  # (batch, units, n)
        batch, units, n = values.shape
        if images is None:
            images = torch.arange(self.next_image, self.next_image + batch)
        self._count(batch * n)
        self.next_image = int(images.max()) + 1 if len(images) else self.next_image
        enters = values > self.floor[:, None]
        if self.level:
            enters &= sample_mask(self.seed, images.to(enters.device), n, self.level)[:, None]
        if torch.isinf(self.floor).any():  # the top is not full yet: take every (sampled) value
            dense = torch.where(enters, values.float(), -math.inf)
            self._keep(dense.transpose(0, 1).reshape(units, -1))
            return
        # Only the few values above the floor can enter the top: pick them out.
        unit, image, position = enters.transpose(0, 1).nonzero(as_tuple=True)  # unit by unit
        if len(unit):
            self._keep(_rows(values[image, unit, position], unit, units))

    def _count(self, added: int) -> None:
        if self.count + added > self.max_values:
            raise ValueError(
                f"the sketch was made for at most {self.max_values} values per unit and "
                f"would get {self.count + added}; make it with the true bound"
            )
        self.count += added

    def _keep(self, values: torch.Tensor) -> None:
        self.values = torch.cat([self.values, values], 1)
        if self.values.shape[1] > 2 * self.capacity:
            self._compact()

    def _compact(self) -> None:
        self.values = self.values.topk(self.capacity, 1, sorted=False).values
        self.floor = self.values.amin(1)

    def merge(self, other: TailQuantile) -> None:
        """Fold in another shard's sketch, made with the same quantile, bound, size and seed."""
        # The seed matters only when the sketch samples.
        mine = (self.quantile, self.max_values, self.size, self.seed if self.level else None)
        theirs = (other.quantile, other.max_values, other.size, other.seed if other.level else None)
        if mine != theirs:
            raise ValueError(f"cannot merge sketches made for {theirs} into {mine}")
        self._count(other.count)
        self.next_image = max(self.next_image, other.next_image)
        self._keep(other.values.to(self.values.device))

    def lower_bound(self) -> torch.Tensor:
        """(units,) a value at or below the final threshold T of every unit, at any time.

        The ``capacity``-th largest value sampled so far: T is the value of rank at most
        ``capacity`` among the final sample, which holds these values and more (this shard's
        sample is part of the whole run's). -inf while fewer values have been kept.
        """
        if self.values.shape[1] < self.capacity:
            return torch.full_like(self.floor, -math.inf)
        return self.values.topk(self.capacity, 1, sorted=False).values.amin(1)

    def threshold(self, left_out: torch.Tensor | None = None) -> np.ndarray:
        """T per unit: the value with a ``quantile`` fraction of all values above it.

        ``left_out`` (units,) counts values of each unit that were added as -inf to keep them out
        (non-finite activations): they do not count among "all values".
        """
        if left_out is None:
            rank = int(self.quantile * self.count * self.rate)
            return self.values.topk(rank + 1, 1).values[:, rank].cpu().numpy()
        counts = (self.count - left_out.to(self.values.device)).double()
        ranks = (self.quantile * counts * self.rate).long().clamp(min=0)
        top = self.values.topk(int(ranks.max()) + 1, 1).values
        return top.gather(1, ranks[:, None])[:, 0].cpu().numpy()

    def state_dict(self) -> dict:
        return {
            "quantile": self.quantile,
            "max_values": self.max_values,
            "size": self.size,
            "count": self.count,
            "values": self.values,
            "seed": self.seed,
            "next_image": self.next_image,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> TailQuantile:
        values = state["values"]
        units = values.shape[0]
        sketch = cls(
            units,
            state["quantile"],
            state["max_values"],
            state["size"],
            int(state["seed"]),
            device=values.device,
        )
        sketch.count, sketch.values = state["count"], values
        sketch.next_image = int(state["next_image"])
        sketch._compact()
        return sketch


def _rows(values: torch.Tensor, row: torch.Tensor, rows: int) -> torch.Tensor:
    """Values with ascending row numbers as a (rows, most per row) table padded with -inf."""
    counts = torch.bincount(row, minlength=rows)
    column = torch.arange(len(row), device=row.device) - (counts.cumsum(0) - counts)[row]
    table = torch.full((rows, int(counts.max())), -math.inf, device=values.device)
    table[row, column] = values.float()
    return table


class UnitStats:
    """Everything the dissection pass keeps about the units of one layer.

    Parameters
    ----------
    units : int
        Number of units (channels).
    k : int
        Top images kept per unit.
    max_values : int
        Upper bound on the activation values each unit will see (images x positions of the whole
        run, all shards together); see :class:`TailQuantile`.
    quantile : float
        Top fraction of activation values above the threshold T.
    seed : int
        Keys the threshold sketch's sampling (see :func:`sample_mask`).
    sketch_size : int
        Values the threshold sketch keeps per unit.
    """

    def __init__(
        self,
        units: int,
        k: int,
        max_values: int,
        quantile: float = 0.005,
        seed: int = 0,
        sketch_size: int = DEFAULT_SKETCH_SIZE,
        device: torch.device | str = "cpu",
    ):
        self.units = units
        self.topk_images = TopK(units, k, device)
        self.tail = TailQuantile(units, quantile, max_values, sketch_size, seed, device)
        self.images = 0
        self.sum = torch.zeros(units, dtype=torch.float64, device=device)
        self.peak = torch.full((units,), -math.inf, device=device)
        #: (units,) NaN or infinite values seen, kept out of every statistic.
        self.nonfinite = torch.zeros(units, dtype=torch.int64, device=device)

    def add(self, acts: torch.Tensor, indices: torch.Tensor) -> int:
        """Add a batch of activations; return how many of its values were NaN or infinite.

        NaN and infinite values are counted in :attr:`nonfinite` and kept out of every statistic:
        they are never a peak, an image whose map holds no finite value never enters the top-K,
        and the mean and the threshold count only the finite values.

        Parameters
        ----------
        acts : Tensor
            Shape (B, units, H, W), or (B, units) for non-spatial layers.
        indices : Tensor
            Image indices of the batch, shape (B,).
        """
        if acts.dim() == 2:
            acts = acts[:, :, None, None]
        if acts.dim() != 4 or acts.shape[1] != self.units:
            raise ValueError(f"expected (B, {self.units}, H, W) activations, got {acts.shape}")
        batch, units, _, width = acts.shape
        flat = acts.float().reshape(batch, units, -1)
        finite = torch.isfinite(flat)
        bad = None if bool(finite.all()) else ~finite
        found = 0
        if bad is not None:
            per_unit = bad.sum((0, 2))
            found = int(per_unit.sum())
            self.nonfinite += per_unit.to(self.nonfinite.device)
            flat = flat.masked_fill(bad, -math.inf)
            acts = flat.reshape(acts.shape)
        score = flat.amax(2)
        # Peak locations only where an image can enter the unit's top-K: its score reaches the
        # current K-th (every image while the top-K is filling).
        image, unit = (score >= self.topk_images.score[:, -1]).nonzero(as_tuple=True)
        peak = torch.zeros_like(score, dtype=torch.int64)
        peak[image, unit] = flat[image, unit].argmax(1)  # the first maximal position
        indices = indices.to(score.device)
        if bad is not None:  # an image with no finite value is no candidate
            indices = torch.where(score.T > -math.inf, indices[None, :], -1)
            flat = flat.masked_fill(bad, 0.0)  # for the sum
        self.topk_images.add(score.T, indices, (peak // width).T, (peak % width).T)
        self.peak = torch.maximum(self.peak, score.amax(0))
        self.sum += flat.sum(2).double().sum(0)
        self.images += batch
        self.tail.add(acts, indices)
        return found

    def merge(self, other: UnitStats) -> None:
        """Fold in the statistics of another shard (disjoint images)."""
        self.topk_images.merge(other.topk_images)
        self.tail.merge(other.tail)
        self.peak = torch.maximum(self.peak, other.peak.to(self.peak.device))
        self.sum += other.sum.to(self.sum.device)
        self.nonfinite += other.nonfinite.to(self.nonfinite.device)
        self.images += other.images

    def topk(self) -> dict[str, np.ndarray]:
        """``index``, ``score``, ``y``, ``x`` of shape (units, K), best first."""
        return self.topk_images.arrays()

    def max(self) -> np.ndarray:
        """Largest activation of each unit over all positions and images."""
        return self.peak.cpu().numpy()

    def mean(self) -> np.ndarray:
        """Mean activation of each unit over all its finite values (NaN when it has none)."""
        finite = (self.tail.count - self.nonfinite).to(self.sum.device)
        mean = self.sum / finite.clamp(min=1)
        return torch.where(finite > 0, mean, torch.full_like(mean, torch.nan)).cpu().numpy()

    def threshold(self) -> np.ndarray:
        """The activation threshold T of each unit (see :class:`TailQuantile`)."""
        return self.tail.threshold(self.nonfinite if bool(self.nonfinite.any()) else None)

    def state_dict(self) -> dict:
        return {
            "units": self.units,
            "images": self.images,
            "sum": self.sum,
            "peak": self.peak,
            "nonfinite": self.nonfinite,
            "topk": self.topk_images.state_dict(),
            "tail": self.tail.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> UnitStats:
        stats = cls.__new__(cls)
        stats.units, stats.images = state["units"], state["images"]
        stats.sum, stats.peak = state["sum"], state["peak"]
        stats.nonfinite = state.get(
            "nonfinite", torch.zeros(stats.units, dtype=torch.int64, device=stats.sum.device)
        )
        stats.topk_images = TopK.from_state_dict(state["topk"])
        stats.tail = TailQuantile.from_state_dict(state["tail"])
        return stats
