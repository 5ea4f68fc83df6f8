"""Sentinel images: quality control of crowd answers, as in Zhou et al. (ICLR 2015).

The paper mixed a few negative images, taken from other units, into each HIT of a unit's top
images, and asked workers who kept one (did not mark it as not showing the concept) to revise
their answer. ``dissect export`` does the same in every format: each task shows the unit's own
top images, in rank order, with ``count`` sentinels put at random places among them. A sentinel
is a segmented top image of another unit of the same layer (its region highlighted as every
other picture is), never one of the unit's own top-K images. Its file is named like every other
image of the task (``u<task>_<n>.png``); only ``private/tasks.csv`` says which are sentinels.

Draws are deterministic: they depend only on ``seed``, the layer name and the unit, so an export
made again with the same arguments shows the same images in the same places.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import DissectError

#: One sentinel per this many of a unit's own images (at least one): 5 in a HIT of 60.
IMAGES_PER_SENTINEL = 12


def default_count(n_own: int) -> int:
    """Sentinels per task by default: one per :data:`IMAGES_PER_SENTINEL` own images, at least 1."""
    return max(1, round(n_own / IMAGES_PER_SENTINEL))


@dataclass(frozen=True)
class Plan:
    """Where a task's own images and sentinels go.

    Attributes
    ----------
    positions : list of int
        1-based place of each sentinel in the task.
    sources : list of (int, int)
        ``(unit, image_index)`` of each sentinel: the other unit and its top image shown.
    """

    positions: list[int]
    sources: list[tuple[int, int]]


def _rng(seed: int, layer: str, unit: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(layer.encode("utf-8")), unit])


def plan_sentinels(
    index: np.ndarray, layer: str, unit: int, n_own: int, count: int, top: int, seed: int = 0
) -> Plan:
    """Choose ``count`` sentinels for one unit and their places among its ``n_own`` images.

    Parameters
    ----------
    index : ndarray
        (units, K) dataset indices of every unit's top images (``-1``: empty slot).
    layer, unit : str, int
        The unit the task is about.
    n_own : int
        How many of its own top images the task shows.
    count : int
        Sentinels to add.
    top : int
        Sentinels come from the first ``top`` top images of the other units (those an export
        segments).
    seed : int
        Seed of the draw, with layer and unit.

    Returns
    -------
    Plan
        The sentinels' places and sources.

    Raises
    ------
    DissectError
        When the layer has too few other units, or top images not shared with this unit, to
        draw from.
    """
    if count < 0:
        raise DissectError(f"--sentinels must be 0 or more, got {count}.")
    if count == 0:
        return Plan([], [])
    rng = _rng(seed, layer, unit)
    shown = np.array(index[:, :top], dtype=np.int64)
    width = shown.shape[1]
    shown[unit] = -1
    flat = shown.ravel()
    slots = np.flatnonzero((flat >= 0) & ~np.isin(flat, index[unit]))
    # One candidate per image (the first unit that has it), so no image is shown twice.
    images, first = np.unique(flat[slots], return_index=True)
    candidates = list(zip((slots[first] // width).tolist(), images.tolist(), strict=True))
    if len(candidates) < count:
        raise DissectError(
            f"layer {layer!r} unit {unit}: only {len(candidates)} top images of other units "
            f"to use as sentinels, {count} wanted; export with fewer --sentinels (0 for none)."
        )
    chosen = rng.choice(len(candidates), size=count, replace=False)
    places = np.sort(rng.choice(n_own + count, size=count, replace=False)) + 1
    return Plan([int(p) for p in places], [candidates[int(i)] for i in chosen])
