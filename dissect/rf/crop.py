"""The stride-aligned crop method: which occluders touch which measured positions, and on what.

Per image, the measurements are grouped (one group around all peaks, or one per peak, whichever
is cheaper); per group and occluder corner, an axis plan gives the measured feature positions the
occluder can touch (occluders that touch none are skipped, by both fast methods) and the crop of
the image an occluded pass runs on: its corner a multiple of the layer stride, flush with the
image border where a receptive field reaches past it. :func:`crop_pass` runs a batch of such
crops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DissectError
from ..geometry import LayerGeometry
from .occlusion import Measurements, occlude


@dataclass(frozen=True)
class _AxisPlan:
    """Per occluder corner along one axis: touched feature positions and the crop to run."""

    first: np.ndarray  # first feature position of interest whose receptive field it touches
    last: np.ndarray  # last such position (first > last: none)
    start: np.ndarray  # crop start in input pixels (a multiple of the layer stride)
    stop: np.ndarray  # crop end (exclusive)

    def size(self) -> np.ndarray:
        return self.stop - self.start


@dataclass(frozen=True)
class _Axis:
    """Receptive-field geometry of the layer along one axis, in whole input pixels."""

    rf: int
    jump: int
    near: int  # input coordinate where the receptive field of feature position 0 starts
    positions: int  # feature positions along the axis
    whole: bool = False  # the network takes whole images only (a static-size program): no crops

    def plan(
        self, corners: np.ndarray, occluder: int, image_size: int, lo: int, hi: int
    ) -> _AxisPlan:
        """Crops for every occluder corner, reading feature positions ``lo..hi`` only.

        The crop covers the receptive fields of the positions of interest that the occluder
        touches, clipped to the image; it starts at a multiple of ``jump`` (so crop position
        ``j`` is image position ``j + start / jump``); every crop has one of two widths
        (interior, or flush with the far border of the image).
        """
        first = np.ceil((corners - self.rf + 1 - self.near) / self.jump).astype(np.int64)
        last = np.floor((corners + occluder - 1 - self.near) / self.jump).astype(np.int64)
        first, last = np.maximum(first, lo), np.minimum(last, hi)
        low = np.maximum(self.near + first * self.jump, 0)
        high = np.minimum(self.near + last * self.jump + self.rf, image_size)
        start = low // self.jump * self.jump
        touched = first <= last
        width = int((high - start)[touched].max()) if touched.any() else image_size
        if width >= image_size or self.whole:
            start, stop = np.zeros_like(start), np.full_like(start, image_size)
        else:
            stop = start + width
            far = stop > image_size
            start[far] = (image_size - width) // self.jump * self.jump
            stop[far] = image_size
        return _AxisPlan(first, last, start, stop)


def crop_axes(geometry: LayerGeometry, whole: bool = False) -> tuple[_Axis, _Axis]:
    """The layer's geometry per axis; ``whole``: crops are the whole image."""
    axes = []
    for axis in range(2):
        jump = geometry.stride[axis]
        if jump < 1 or not float(jump).is_integer():
            raise DissectError(
                f"layer {geometry.name!r} has a stride of {jump} px, not a whole number; "
                "occlusion needs a convolution or pooling layer with an integer stride."
            )
        rf = int(geometry.rf[axis])
        near = int(round(geometry.offset[axis] - (rf - 1) / 2))
        axes.append(_Axis(rf, int(jump), near, geometry.output_shape[1 + axis], whole))
    return axes[0], axes[1]


@dataclass(frozen=True)
class CropGroup:
    """Measurements of one image read from the same crops, and the occluders to run on them."""

    image: int  # position in the list of distinct images
    members: np.ndarray  # measurement indices
    plan_y: _AxisPlan
    plan_x: _AxisPlan
    jobs: np.ndarray  # (J, 2) occluder (row, column) indices
    box: tuple[int, int, int, int]  # feature positions read: y_lo, y_hi, x_lo, x_hi

    def cost(self) -> int:
        """Input pixels of all its occluded crops."""
        rows, cols = self.jobs[:, 0], self.jobs[:, 1]
        return int((self.plan_y.size()[rows] * self.plan_x.size()[cols]).sum())


@dataclass(frozen=True)
class CropSetting:
    """What every crop group of a layer is planned with (``corners`` and ``image_size`` per
    axis: y, x; ``peak``: the ``peak`` discrepancy, read at the peak positions only)."""

    axes: tuple[_Axis, _Axis]
    corners: tuple[np.ndarray, np.ndarray]
    occluder: int
    image_size: tuple[int, int]
    measurements: Measurements
    peak: bool


def _group(image: int, members: np.ndarray, box, setting: CropSetting) -> CropGroup:
    """The group reading feature positions in ``box`` (y_lo, y_hi, x_lo, x_hi) of one image."""
    axes, corners, occluder, size = (
        setting.axes,
        setting.corners,
        setting.occluder,
        setting.image_size,
    )
    plan_y = axes[0].plan(corners[0], occluder, size[0], box[0], box[1])
    plan_x = axes[1].plan(corners[1], occluder, size[1], box[2], box[3])
    if setting.peak:
        ys, xs = setting.measurements.y[members], setting.measurements.x[members]
        hit_y = (ys[None] >= plan_y.first[:, None]) & (ys[None] <= plan_y.last[:, None])
        hit_x = (xs[None] >= plan_x.first[:, None]) & (xs[None] <= plan_x.last[:, None])
        hit = (hit_y.astype(np.float32) @ hit_x.T.astype(np.float32)) > 0
    else:
        hit = (plan_y.first <= plan_y.last)[:, None] & (plan_x.first <= plan_x.last)[None]
    box = tuple(int(value) for value in box)
    return CropGroup(image, members, plan_y, plan_x, np.argwhere(hit), box)


def groups_for_image(
    image: int, members: np.ndarray, setting: CropSetting, cost: Callable[[CropGroup], float]
) -> list[CropGroup]:
    """How to occlude one image: the cheaper (by ``cost(group)``) of one group for the bounding
    box of all its peaks (the whole map for ``map``) and one group per distinct peak position."""
    axes = setting.axes
    if not setting.peak:
        box = (0, axes[0].positions - 1, 0, axes[1].positions - 1)
        return [_group(image, members, box, setting)]
    ys, xs = setting.measurements.y[members], setting.measurements.x[members]
    together = [_group(image, members, (ys.min(), ys.max(), xs.min(), xs.max()), setting)]
    peaks, which = np.unique(np.column_stack([ys, xs]), axis=0, return_inverse=True)
    if len(peaks) == 1:
        return together
    apart = [
        _group(image, members[which.ravel() == p], (y, y, x, x), setting)
        for p, (y, x) in enumerate(peaks)
    ]
    apart_cost = sum(cost(group) for group in apart)
    return apart if apart_cost < sum(cost(group) for group in together) else together


def crop_pass(batch, images, patch, corners, axes, trace, layer):
    """Layer output of each occluded crop of ``batch`` (``images[b]``: item ``b``'s image), and
    its start in layer positions."""
    crops, starts = [], []
    for (group, r, c), image in zip(batch, images, strict=True):
        y0, x0 = int(group.plan_y.start[r]), int(group.plan_x.start[c])
        window = image[:, y0 : group.plan_y.stop[r], x0 : group.plan_x.stop[c]]
        crops.append(occlude(window, patch, int(corners[0][r]) - y0, int(corners[1][c]) - x0))
        starts.append((y0 // axes[0].jump, x0 // axes[1].jump))
    return trace(torch.stack(crops))[layer], np.array(starts)
