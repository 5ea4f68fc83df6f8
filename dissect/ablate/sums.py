"""Mergeable sums of an ablation pass, the same bits however the batches are split.

:class:`TreeSum` adds per-batch vectors over a fixed binary tree keyed by the batch's number in
the whole run: a node is always its left child plus its right child, so one process, a torchrun
shard merged with others, or a resumed run gives bit-identical sums (float addition is not
associative; a fixed tree makes the order fixed). It keeps O(log batches) vectors.

:class:`AblationSums` holds one layer's sums for the pass's listener
(:class:`~dissect.ablate.listener.AblationListener`): per batch, the drops of each class's score
and correctness when each ablation set is applied, summed by the true class of the image (and
their squares, for standard errors over images). It has ``add``, ``merge``, ``state_dict``,
``load_state_dict`` and ``from_state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

#: Per-(set, class) sums, in the order they are stored.
SET_FIELDS = (
    "logit_drop",
    "logit_drop_sq",
    "prob_drop",
    "prob_drop_sq",
    "correct_drop",
    "correct_drop_sq",
)
#: Per-class sums over the unablated network.
CLASS_FIELDS = ("count", "base_correct", "base_logit", "base_prob")


class TreeSum:
    """Sum of one float64 vector per batch, over a binary tree keyed by batch number.

    Parameters
    ----------
    size : int
        The length of every vector.
    """

    def __init__(self, size: int):
        self.size = size
        self.nodes: dict[tuple[int, int], np.ndarray] = {}

    def add(self, batch: int, values: np.ndarray) -> None:
        """Add the vector of batch number ``batch`` (each batch once)."""
        self._insert((0, batch), np.asarray(values, dtype=np.float64).reshape(self.size).copy())

    def _insert(self, key: tuple[int, int], value: np.ndarray) -> None:
        if key in self.nodes:
            raise ValueError(f"batches {key} counted twice")
        level, index = key
        while (level, index ^ 1) in self.nodes:
            sibling = self.nodes.pop((level, index ^ 1))
            value = value + sibling if index % 2 == 0 else sibling + value
            level, index = level + 1, index // 2
        self.nodes[(level, index)] = value

    def merge(self, other: TreeSum) -> TreeSum:
        """Add every batch of ``other`` (disjoint batches); returns self."""
        for key, value in sorted(other.nodes.items()):
            self._insert(key, value.copy())
        return self

    def total(self) -> np.ndarray:
        """The sum over all batches, once every batch is in (a node whose sibling is missing
        covers the last batches: it rises unchanged)."""
        nodes = dict(self.nodes)
        while len(nodes) > 1:
            level = min(key[0] for key in nodes)
            for key in sorted(key for key in nodes if key[0] == level):
                if key not in nodes:
                    continue
                index = key[1]
                sibling = nodes.pop((level, index ^ 1), None)
                value = nodes.pop(key)
                if sibling is not None:
                    value = value + sibling if index % 2 == 0 else sibling + value
                nodes[(level + 1, index // 2)] = value
        return next(iter(nodes.values())).copy() if nodes else np.zeros(self.size)

    def state_dict(self) -> dict:
        keys = sorted(self.nodes)
        return {
            "size": self.size,
            "keys": torch.tensor(keys, dtype=torch.int64).reshape(-1, 2),
            "values": torch.from_numpy(np.stack([self.nodes[k] for k in keys]))
            if keys
            else torch.zeros(0, self.size, dtype=torch.float64),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> TreeSum:
        tree = cls(int(state["size"]))
        for (level, index), value in zip(
            state["keys"].tolist(), state["values"].numpy(), strict=True
        ):
            tree.nodes[(int(level), int(index))] = value.copy()
        return tree


@dataclass
class BatchScores:
    """One batch's outputs, the unablated and the ablated ones, with the images' classes.

    Attributes
    ----------
    base : Tensor
        (B, outputs) the network's scores (logits).
    ablated : Tensor
        (K, B, outputs) the scores with each of K ablation sets applied.
    classes : Tensor
        (B,) int64, the data class of each image (0 .. C-1).
    outputs : Tensor
        (C,) int64, the output index of each data class.
    """

    base: torch.Tensor
    ablated: torch.Tensor
    classes: torch.Tensor
    outputs: torch.Tensor


class AblationSums:
    """Sums over images of the drops caused by K ablation sets, for C classes.

    For image i of class c and set k: the drop of class c's logit, of its softmax probability,
    and of correctness (1 when the top-1 output is c), unablated minus ablated; summed over the
    images of each class, with their squares.

    Parameters
    ----------
    sets : int
        K, ablation sets.
    classes : int
        C, data classes.
    """

    def __init__(self, sets: int, classes: int):
        self.sets, self.classes = sets, classes
        self.tree = TreeSum(len(CLASS_FIELDS) * classes + len(SET_FIELDS) * sets * classes)

    def add(self, batch: int, scores: BatchScores) -> None:
        """Add batch number ``batch`` (its number in the whole run, each batch once)."""
        self.tree.add(batch, self.batch_vector(scores))

    def batch_vector(self, scores: BatchScores) -> np.ndarray:
        """The vector one batch adds: every field, float64."""
        base = scores.base.double().cpu()
        ablated = scores.ablated.double().cpu()
        target = scores.outputs.cpu()[scores.classes.cpu()]  # (B,) output index of the truth
        rows = torch.arange(len(target))
        one_hot = torch.nn.functional.one_hot(scores.classes.cpu(), self.classes).double()
        base_logit = base[rows, target]
        base_prob = base.softmax(-1)[rows, target]
        base_correct = (base.argmax(-1) == target).double()
        logit = ablated[:, rows, target]  # (K, B)
        prob = ablated.softmax(-1)[:, rows, target]
        correct = (ablated.argmax(-1) == target).double()
        drops = {
            "logit_drop": base_logit - logit,
            "prob_drop": base_prob - prob,
            "correct_drop": base_correct - correct,
        }
        per_class = [
            one_hot.sum(0),
            base_correct @ one_hot,
            base_logit @ one_hot,
            base_prob @ one_hot,
        ]
        per_set = []
        for name in SET_FIELDS:
            drop = drops[name.removesuffix("_sq")]
            per_set.append((drop * drop if name.endswith("_sq") else drop) @ one_hot)
        return torch.cat([part.reshape(-1) for part in per_class + per_set]).numpy()

    def tables(self) -> dict[str, np.ndarray]:
        """Every field of the total: (C,) class fields, (K, C) set fields."""
        total, c, k = self.tree.total(), self.classes, self.sets
        fields = {}
        for position, name in enumerate(CLASS_FIELDS):
            fields[name] = total[position * c : (position + 1) * c]
        offset = len(CLASS_FIELDS) * c
        for position, name in enumerate(SET_FIELDS):
            start = offset + position * k * c
            fields[name] = total[start : start + k * c].reshape(k, c)
        return fields

    def merge(self, other: AblationSums) -> AblationSums:
        self.tree.merge(other.tree)
        return self

    def state_dict(self) -> dict:
        return {"sets": self.sets, "classes": self.classes, "tree": self.tree.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Replace the sums by a saved state of the same shape (the pass driver's interface)."""
        if (int(state["sets"]), int(state["classes"])) != (self.sets, self.classes):
            raise ValueError("the saved sums have another number of sets or classes")
        self.tree = TreeSum.from_state_dict(state["tree"])

    @classmethod
    def from_state_dict(cls, state: dict) -> AblationSums:
        sums = cls(int(state["sets"]), int(state["classes"]))
        sums.load_state_dict(state)
        return sums
