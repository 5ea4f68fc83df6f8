"""Receptive field, stride and offset along one axis, from the probe's per-position connectivity.

Each probed feature position ``i`` comes with the gradient of its activation over the input rows
(or columns); its support is ``[lo, hi]``, its centre ``(lo + hi) / 2``. Where supports are whole
(inside the layer's coverage -- the canvas, or the pixels a strided layer reads -- and as wide as
the widest one, since padding anywhere in the network cuts them too), a least-squares line
through the centres gives ``stride`` (slope, fractional after upsampling) and ``offset``
(intercept). Neighbours ``(p, p + 1)`` are averaged first: resampling by 2 alternates between
two supports, and their mean sits on the line exactly. Border positions, where resampling
clamps, are left out when possible. Otherwise the support edges that the coverage does not cut
are fitted (``lo = a + stride * i``, ``hi = b + stride * i``, so ``rf = b - a + 1``). A fit that
is not exact this way is *not located*: the caller probes a larger canvas, where more positions
lie inside.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisFit:
    """Geometry along one axis.

    ``clipped``: ``rf`` is only a lower bound; ``located``: stride and offset are an exact fit;
    ``guessed``: they are a plain resize's (nothing measured them); ``problem``: why nothing at all
    could be measured (else empty).
    """

    rf: int
    stride: float
    offset: float
    clipped: bool = False
    located: bool = True
    guessed: bool = False
    problem: str = ""


def plain_axis(length: int, count: int, problem: str = "", rf: int | None = None) -> AxisFit:
    """A plain resize of ``count`` positions onto ``length`` pixels (rf: the whole axis)."""
    stride = length / max(count, 1)
    return AxisFit(rf or length, stride, (stride - 1) / 2, True, False, True, problem)


def fit_axis(positions: list[int], weights: list[np.ndarray], count: int) -> AxisFit:
    """Fit one axis from the probe (see the module docstring).

    Parameters
    ----------
    positions : list of int
        Probed feature positions along the axis.
    weights : list of ndarray
        For each, the gradient magnitude over the input pixels of the axis (one canvas side).
    count : int
        Feature positions along the axis.

    Returns
    -------
    AxisFit
    """
    length = len(weights[0]) if weights else 0
    boxes, hole = [], 1
    for position, weight in zip(positions, weights, strict=True):
        support = np.flatnonzero(weight > 0)
        if len(support) and position not in {box[0] for box in boxes}:
            boxes.append((position, int(support[0]), int(support[-1])))
            hole = max(hole, int(np.diff(support).max(initial=1)))
    if not boxes:
        return plain_axis(length, count, "no input pixel reaches it")
    # Where the layer's connections end (the canvas border, or pixels a strided layer never
    # reads): a support that reaches it, or comes closer than its widest hole (dilation), may be
    # cut there.
    first = min(lo for _, lo, _ in boxes) + hole - 1
    last = max(hi for _, _, hi in boxes) - hole + 1
    # A support cut by padding anywhere in the network is also narrower than a whole one.
    widest = max(hi - lo + 1 for _, lo, hi in boxes)
    inside = [
        (p, lo, hi) for p, lo, hi in boxes if first < lo and hi < last and hi - lo + 1 == widest
    ]
    if count == 1:
        if inside:
            _, lo, hi = inside[0]
            return AxisFit(hi - lo + 1, float(length), _snap((lo + hi) / 2))
        return AxisFit(widest, float(length), (length - 1) / 2, True, False, True)
    points, paired = _centres(inside, count)
    estimate = None
    if len(points) >= 2:
        index, centre = np.array(points, dtype=np.float64).T
        stride, offset = np.polyfit(index, centre, 1)
        exact = (paired or len(points) >= 3) and stride > 0
        exact = exact and np.abs(centre - offset - stride * index).max() < 0.26
        stride, offset = _snap(stride), _snap(offset)
        # The field around the fitted centre that holds every whole support (after resampling,
        # supports alternate around the line).
        rf = max(
            2 * max(hi - offset - stride * p, offset + stride * p - lo) + 1 for p, lo, hi in inside
        )
        estimate = AxisFit(int(round(rf)), stride, offset, located=bool(exact))
        if exact:
            return estimate
    edges = _fit_edges(boxes, first, last, length, count, widest)
    return edges if edges.located or estimate is None or estimate.stride <= 0 else estimate


def _centres(inside: list, count: int) -> tuple[list[tuple[float, float]], bool]:
    """Points (position, centre) to fit, and whether they are means over whole runs of four
    (or two) neighbours, which sit on the line exactly after stacked x2 resampling."""
    centre = {p: (lo + hi) / 2 for p, lo, hi in inside}
    for run in (4, 2):
        means = [
            (p + (run - 1) / 2, sum(centre[p + d] for d in range(run)) / run)
            for p in centre
            if p % run == 0 and all(p + d in centre for d in range(run))
        ]
        middle = [pt for pt in means if 0 < pt[0] - (run - 1) / 2 < count - run]
        for points in (middle, means):
            if len(points) >= 2:
                return points, True
    singles = [(p, c) for p, c in centre.items() if 0 < p < count - 1]
    return (singles if len(singles) >= 2 else list(centre.items())), False


def _fit_edges(boxes: list, first: int, last: int, length: int, count: int, widest: int) -> AxisFit:
    """Common-slope least squares through the uncut near edges and far edges."""
    rows, values = [], []
    for position, lo, hi in boxes:
        if lo > first:
            rows.append((position, 1.0, 0.0))
            values.append(lo)
        if hi < last:
            rows.append((position, 0.0, 1.0))
            values.append(hi)
    design = np.array(rows, dtype=np.float64).reshape(-1, 3)
    has = design[:, 1:].any(0)
    groups = [design[design[:, 1 + g] > 0, 0] for g in range(2)]
    if not any(len(set(g)) >= 2 for g in groups):
        return plain_axis(length, count, rf=widest)
    columns = [0, *(1 + g for g in range(2) if has[g])]
    values = np.array(values, np.float64)
    solution = np.linalg.lstsq(design[:, columns], values, rcond=None)[0]
    stride = _snap(solution[0])
    if not has.all():
        plain = plain_axis(length, count)
        return AxisFit(widest, stride, plain.offset, True, False, True)
    exact = len(values) > len(columns) and solution[0] > 0
    exact = exact and np.abs(design[:, columns] @ solution - values).max() < 0.26
    near, far = solution[1], solution[2]
    return AxisFit(int(round(far - near + 1)), stride, _snap((near + far) / 2), located=bool(exact))


def _snap(value: float) -> float:
    """Round float noise away: to the nearest 1/16 when within 1e-3 of it."""
    snapped = round(value * 16) / 16
    return float(snapped if abs(snapped - value) < 1e-3 else round(value, 3))
