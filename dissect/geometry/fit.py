"""Receptive field, stride and offset along one axis, from the probe's per-position connectivity.

Each probed feature position ``i`` comes with the gradient of its activation over the input rows
(or columns); its support is ``[lo, hi]``. Where the support lies inside the layer's coverage (the
canvas, or the pixels a strided layer reads), the gradient's centroid is the position's centre,
exactly for convolution, pooling and bilinear resampling; a least-squares line through the
centres gives ``stride`` (slope, fractional after upsampling) and ``offset`` (intercept). Border
positions, where resampling clamps, are left out when two interior ones are available. With
fewer than two such positions, the support edges that are not cut by the coverage are fitted
instead (``lo = a + stride * i``, ``hi = b + stride * i``, so ``rf = b - a + 1``). When neither
works the receptive field is larger than the canvas: the caller probes a larger one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AxisFit:
    """Geometry along one axis.

    ``clipped``: ``rf`` is only a lower bound; ``located``: stride and offset were measured (else
    they are a plain resize's); ``problem``: why nothing could be measured (else empty).
    """

    rf: int
    stride: float
    offset: float
    clipped: bool = False
    located: bool = True
    problem: str = ""


def plain_axis(length: int, count: int, problem: str = "") -> AxisFit:
    """A plain resize of ``count`` positions onto ``length`` pixels (rf: the whole axis)."""
    stride = length / max(count, 1)
    return AxisFit(length, stride, (stride - 1) / 2, True, False, problem)


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
            boxes.append((position, int(support[0]), int(support[-1]), weight))
            hole = max(hole, int(np.diff(support).max(initial=1)))
    if not boxes:
        return plain_axis(length, count, "no input pixel reaches it")
    # Where the layer's connections end (the canvas border, or pixels a strided layer never
    # reads): a support that reaches it, or comes closer than its widest hole (dilation), may be
    # cut there.
    first = min(lo for _, lo, _, _ in boxes) + hole - 1
    last = max(hi for _, _, hi, _ in boxes) - hole + 1
    inside = [
        (position, hi - lo + 1, float((weight * np.arange(length)).sum() / weight.sum()))
        for position, lo, hi, weight in boxes
        if first < lo and hi < last
    ]
    if count == 1:
        position, lo, hi, _ = boxes[0]
        centre = inside[0][2] if inside else (length - 1) / 2
        return AxisFit(hi - lo + 1, float(length), _snap(centre), not inside, bool(inside))
    chosen = _centres(inside, count)
    if len(chosen) >= 2:
        index, centre = np.array(chosen, dtype=np.float64).T
        stride, offset = np.polyfit(index, centre, 1)
        return AxisFit(max(entry[1] for entry in inside), _snap(stride), _snap(offset))
    return _fit_edges([box[:3] for box in boxes], first, last, length, count)


def _centres(inside: list, count: int) -> list[tuple[float, float]]:
    """Points (position, centre) to fit: neighbours ``(p, p + 1)`` averaged (a nearest
    upsampling repeats values in pairs), away from the border positions when possible."""
    centre = {position: value for position, _, value in inside}
    pairs = [(p + 0.5, (c + centre[p + 1]) / 2) for p, c in centre.items() if p + 1 in centre]
    for points in (
        [pt for pt in pairs if 0 < pt[0] - 0.5 < count - 2],
        pairs,
        [(p, c) for p, c in centre.items() if 0 < p < count - 1],
        list(centre.items()),
    ):
        if len(points) >= 2:
            return points
    return []


def _fit_edges(boxes: list, first: int, last: int, length: int, count: int) -> AxisFit:
    """Common-slope least squares through the uncut near edges and far edges."""
    rows, values = [], []
    for position, lo, hi in boxes:
        if lo > first:
            rows.append((position, 1.0, 0.0))
            values.append(lo)
        if hi < last:
            rows.append((position, 0.0, 1.0))
            values.append(hi)
    widest = max(hi - lo + 1 for _, lo, hi in boxes)
    design = np.array(rows, dtype=np.float64).reshape(-1, 3)
    has = design[:, 1:].any(0)
    groups = [design[design[:, 1 + g] > 0, 0] for g in range(2)]
    if not any(len(set(g)) >= 2 for g in groups):
        plain = plain_axis(length, count)
        return AxisFit(widest, plain.stride, plain.offset, True, False)
    columns = [0, *(1 + g for g in range(2) if has[g])]
    solution = np.linalg.lstsq(design[:, columns], np.array(values, np.float64), rcond=None)[0]
    stride = _snap(solution[0])
    if not has.all():
        plain = plain_axis(length, count)
        return AxisFit(widest, stride, plain.offset, True, False)
    near, far = solution[1], solution[2]
    return AxisFit(int(round(far - near + 1)), stride, _snap((near + far) / 2))


def _snap(value: float) -> float:
    """Round float noise away: to the nearest 1/16 when within 1e-3 of it."""
    snapped = round(value * 16) / 16
    return float(snapped if abs(snapped - value) < 1e-3 else round(value, 3))
