"""The feature maps ``dissect run --iou`` keeps until the thresholds are known, stored sparsely.

A pair (image, unit) is kept because its peak exceeds the lower bound L <= T of the unit's
threshold. Its mask can only hold pixels of the cells (pixels between four feature centres)
with a corner above T (:func:`~dissect.iou.tally.count_maps`), and a pixel reads nothing but
its cell's four corners. So only the feature values above L (or not comparable: NaN) and their
eight neighbours are stored; every other value, at or below L, comes back as L. A cell with a
corner above T has all four corners stored, so it is counted with the very values it had; a cell
with none above T still has none (a value restored as L <= T does not exceed T). The counts are
those of the whole maps, with a fraction of the bytes: in early layers nearly every pair is kept,
but few of its values lie near the top.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KeptMaps:
    """n feature maps of (h, w) cells, each stored as the values that can reach a mask.

    Attributes
    ----------
    values : Tensor
        (S,) float32: the stored values, map after map, each map's in row-major order.
    cells : Tensor
        (S,) int32: the flat position (row * w + column) of each stored value in its map.
    counts : Tensor
        (n,) int64: values stored per map.
    fill : Tensor
        (n,) float32: the value of each map's other cells (its unit's L when it was kept).
    shape : (int, int)
        (h, w) of the maps.
    """

    values: torch.Tensor
    cells: torch.Tensor
    counts: torch.Tensor
    fill: torch.Tensor
    shape: tuple[int, int]

    @classmethod
    def of(cls, maps: torch.Tensor, lower: torch.Tensor) -> KeptMaps:
        """Store (n, h, w) float32 ``maps`` whose values at or below ``lower`` ((n,), each map's
        L) matter only through being at or below it. Runs where ``maps`` are; returns CPU
        tensors."""
        count, height, width = maps.shape
        near = ~(maps <= lower[:, None, None])  # above L, or NaN
        # Dilate by one cell in each direction (rows, then columns): the 3 x 3 neighbourhood.
        rows = near.clone()
        rows[:, 1:] |= near[:, :-1]
        rows[:, :-1] |= near[:, 1:]
        near = rows.clone()
        near[:, :, 1:] |= rows[:, :, :-1]
        near[:, :, :-1] |= rows[:, :, 1:]
        pair, cell = near.reshape(count, -1).nonzero(as_tuple=True)
        values = maps.reshape(count, -1)[pair, cell]
        counts = torch.bincount(pair, minlength=count)
        return cls(
            values.cpu(),
            cell.to(torch.int32).cpu(),
            counts.cpu(),
            lower.float().cpu(),
            (height, width),
        )

    def __len__(self) -> int:
        return len(self.counts)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(t.nbytes for t in (self.values, self.cells, self.counts, self.fill))

    def select(self, keep: torch.Tensor) -> KeptMaps:
        """The maps where the (n,) bool ``keep`` is True."""
        entries = keep.repeat_interleave(self.counts)
        return KeptMaps(
            self.values[entries],
            self.cells[entries],
            self.counts[keep],
            self.fill[keep],
            self.shape,
        )

    @classmethod
    def cat(cls, parts: list[KeptMaps]) -> KeptMaps:
        """The maps of ``parts`` (at least one, of one shape), one part after the other."""
        return cls(
            torch.cat([part.values for part in parts]),
            torch.cat([part.cells for part in parts]),
            torch.cat([part.counts for part in parts]),
            torch.cat([part.fill for part in parts]),
            parts[0].shape,
        )

    def dense(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(n, h, w) float32 on ``device``: the stored values in place, the fill elsewhere."""
        height, width = self.shape
        maps = self.fill.to(device)[:, None].repeat(1, height * width)
        rows = torch.arange(len(self), device=device).repeat_interleave(self.counts.to(device))
        maps[rows, self.cells.to(device).long()] = self.values.to(device)
        return maps.view(len(self), height, width)

    def state_dict(self) -> dict:
        """Tensors only (readable with ``torch.load(..., weights_only=True)``)."""
        return {
            "values": self.values,
            "cells": self.cells,
            "counts": self.counts,
            "fill": self.fill,
            "shape": torch.tensor(self.shape, dtype=torch.int64),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> KeptMaps:
        """Rebuild maps saved with :meth:`state_dict`."""
        height, width = state["shape"].tolist()
        return cls(state["values"], state["cells"], state["counts"], state["fill"], (height, width))
