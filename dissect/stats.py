"""Streaming, mergeable per-unit statistics: top-K images, mean, max and the threshold T.

Every statistic has ``add`` (one batch), ``merge`` (another shard's statistic, exactly),
``state_dict`` and ``from_state_dict`` (tensors and numbers only, so ``torch.load(...,
weights_only=True)`` reads them back). Memory is bounded by units x (K + sketch size), never by the
number of images.

The threshold T of a unit is the value exceeded by the top ``quantile`` fraction of all its
activation values (every position of every image). :class:`TailQuantile` computes it exactly while
the tail fits in its buffer (``quantile * values <= size / 4``) and approximately after that, from
a uniform random sample of the values whose rate halves as data grows; the sample always holds
between ``size / 8`` and ``size / 4`` values above T, so the fraction of values above T is within
about ``1 / sqrt(size / 8)`` (relative standard error; 3% at the default size) of the quantile.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Sketch buffer size per unit (values kept of each unit's upper tail).
DEFAULT_SKETCH_SIZE = 8192


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
        # Empty slots (index -1, score -inf) sort last; two stable sorts give (-score, index).
        rank_index = torch.where(index < 0, torch.iinfo(torch.int64).max, index)
        order = torch.argsort(rank_index, dim=1, stable=True)
        by_score = torch.argsort(score.gather(1, order), dim=1, descending=True, stable=True)
        order = order.gather(1, by_score)[:, : self.k]
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


class TailQuantile:
    """Per-unit upper-tail quantile sketch (see the module docstring for its error).

    Parameters
    ----------
    units : int
        Number of units.
    quantile : float
        The top fraction whose lower bound is wanted (0.005: the 99.5th percentile).
    size : int
        Values kept per unit.
    seed : int
        Seeds the sampling, so a run is repeatable.
    """

    def __init__(
        self,
        units: int,
        quantile: float,
        size: int = DEFAULT_SKETCH_SIZE,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.quantile = quantile
        self.size = size
        self.level = 0  # values are sampled at rate 2 ** -level
        self.count = 0  # values seen per unit
        self.values = torch.full((units, size), -math.inf, device=device)
        self.generator = torch.Generator(device=device).manual_seed(seed)

    @property
    def rate(self) -> float:
        return 2.0**-self.level

    def add(self, values: torch.Tensor) -> None:
        """Add a batch of values of shape (units, n)."""
        self.count += values.shape[1]
        if self.level:
            keep = torch.rand(values.shape[1], generator=self.generator, device=values.device)
            values = values[:, keep < self.rate]
        # Only values above a full buffer's smallest can enter it: select those first (cheap).
        floor = self.values.amin(1, keepdim=True)
        candidates = int((values > floor).sum(1).max()) if values.numel() else 0
        if candidates < values.shape[1]:
            values = values.topk(candidates, dim=1, sorted=False).values
        self._keep(torch.cat([self.values, values.float()], 1))
        while self.quantile * self.count * self.rate > self.size / 4:
            self._halve()

    def _keep(self, values: torch.Tensor) -> None:
        self.values = values.topk(self.size, dim=1, sorted=False).values

    def _halve(self) -> None:
        drop = torch.rand(self.values.shape, generator=self.generator, device=self.values.device)
        self._keep(torch.where(drop < 0.5, self.values, -math.inf))
        self.level += 1

    def merge(self, other: TailQuantile) -> None:
        """Fold in another shard's sketch (same quantile and size)."""
        mine, theirs = self.values, other.values
        for _ in range(other.level - self.level):
            drop = torch.rand(mine.shape, generator=self.generator, device=mine.device)
            mine = torch.where(drop < 0.5, mine, -math.inf)
        for _ in range(self.level - other.level):
            drop = torch.rand(theirs.shape, generator=self.generator, device=theirs.device)
            theirs = torch.where(drop < 0.5, theirs, -math.inf)
        self.level = max(self.level, other.level)
        self.count += other.count
        self._keep(torch.cat([mine, theirs.to(mine.device)], 1))
        while self.quantile * self.count * self.rate > self.size / 4:
            self._halve()

    def threshold(self) -> np.ndarray:
        """T per unit: the value with a ``quantile`` fraction of all values above it."""
        rank = min(int(self.quantile * self.count * self.rate), self.size - 1)
        ordered = self.values.sort(dim=1, descending=True).values
        return ordered[:, rank].cpu().numpy()

    def state_dict(self) -> dict:
        return {
            "quantile": self.quantile,
            "size": self.size,
            "level": self.level,
            "count": self.count,
            "values": self.values,
            "generator": self.generator.get_state(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> TailQuantile:
        values = state["values"]
        sketch = cls(values.shape[0], state["quantile"], state["size"], device=values.device)
        sketch.level, sketch.count, sketch.values = state["level"], state["count"], values
        sketch.generator.set_state(state["generator"])
        return sketch


class UnitStats:
    """Everything the dissection pass keeps about the units of one layer.

    Parameters
    ----------
    units : int
        Number of units (channels).
    k : int
        Top images kept per unit.
    quantile : float
        Top fraction of activation values above the threshold T.
    seed : int
        Seeds the threshold sketch.
    sketch_size : int
        Values the threshold sketch keeps per unit.
    """

    def __init__(
        self,
        units: int,
        k: int,
        quantile: float = 0.005,
        seed: int = 0,
        sketch_size: int = DEFAULT_SKETCH_SIZE,
        device: torch.device | str = "cpu",
    ):
        self.units = units
        self.topk_images = TopK(units, k, device)
        self.tail = TailQuantile(units, quantile, sketch_size, seed, device)
        self.images = 0
        self.sum = torch.zeros(units, dtype=torch.float64, device=device)
        self.peak = torch.full((units,), -math.inf, device=device)

    def add(self, acts: torch.Tensor, indices: torch.Tensor) -> None:
        """Add a batch of activations.

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
        score, where = flat.max(2).values, flat.argmax(2)  # argmax: first maximal position
        self.topk_images.add(
            score.T, indices.to(score.device), (where // width).T, (where % width).T
        )
        self.peak = torch.maximum(self.peak, score.amax(0))
        self.sum += flat.sum(2).double().sum(0)
        self.images += batch
        self.tail.add(flat.transpose(0, 1).reshape(units, -1))

    def merge(self, other: UnitStats) -> None:
        """Fold in the statistics of another shard (disjoint images)."""
        self.topk_images.merge(other.topk_images)
        self.tail.merge(other.tail)
        self.peak = torch.maximum(self.peak, other.peak.to(self.peak.device))
        self.sum += other.sum.to(self.sum.device)
        self.images += other.images

    def topk(self) -> dict[str, np.ndarray]:
        """``index``, ``score``, ``y``, ``x`` of shape (units, K), best first."""
        return self.topk_images.arrays()

    def max(self) -> np.ndarray:
        """Largest activation of each unit over all positions and images."""
        return self.peak.cpu().numpy()

    def mean(self) -> np.ndarray:
        """Mean activation of each unit over all positions and images."""
        return (self.sum / max(self.tail.count, 1)).cpu().numpy()

    def threshold(self) -> np.ndarray:
        """The activation threshold T of each unit (see :class:`TailQuantile`)."""
        return self.tail.threshold()

    def state_dict(self) -> dict:
        return {
            "units": self.units,
            "images": self.images,
            "sum": self.sum,
            "peak": self.peak,
            "topk": self.topk_images.state_dict(),
            "tail": self.tail.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> UnitStats:
        stats = cls.__new__(cls)
        stats.units, stats.images = state["units"], state["images"]
        stats.sum, stats.peak = state["sum"], state["peak"]
        stats.topk_images = TopK.from_state_dict(state["topk"])
        stats.tail = TailQuantile.from_state_dict(state["tail"])
        return stats
