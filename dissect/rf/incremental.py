"""The incremental method: recompute, step by step, only the windows an occluder changes.

For networks that reach the measured layer through a plain chain of convolutions, max pooling and
point-wise modules (:func:`~dissect.rf.steps.chain_steps` checks), the unoccluded activations of
every step are kept and each occluded pass recomputes only a window per step
(:class:`Incremental`), gathered from and pasted into the kept activations in one indexing
operation (:func:`_gather_paste`), in a buffer reused from batch to batch (:class:`_Workspace`);
the last convolution computes the measured units alone where that is exact
(:func:`~dissect.rf.steps.sliced_step`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .steps import Step, changed_span, sliced_step

#: Window sizes and box extents are encoded in one batch kind as ``size * _KIND + extent``.
_KIND = 1 << 20


@dataclass(frozen=True)
class Windows:
    """The windows occluded passes compute for one box of the layer: per axis (y, x), per
    occluder corner along it (rows) and spatial step (columns)."""

    start: tuple[np.ndarray, np.ndarray]  # first output computed
    size: tuple[np.ndarray, np.ndarray]  # outputs computed
    kind: tuple[np.ndarray, np.ndarray]  # per corner, its batch kind (see Incremental.sizes)


class Incremental:
    """Occluded passes that recompute, layer by layer, only the positions that matter.

    The base activations of each image are computed once. An occluded pass then runs each
    convolution / pooling step only on a window of its outputs, reading the base around it with
    the step's own padding: the outputs that read an input the occluder changed (the *forward*
    span, exact for each occluder corner) and that the measured positions (a box of the layer)
    depend on (the *backward* span). Outside the forward span outputs equal the base; values
    outside the backward span may be stale but no measured position reads them. Passes whose
    windows have the same sizes at every step run in the same batches.
    """

    def __init__(
        self,
        steps: list[Step],
        image: torch.Tensor,
        occluder: int,
        corners: tuple[np.ndarray, ...],
        units: np.ndarray | None = None,
    ):
        self.steps = steps
        # The measured units alone at the last convolution, where that is exact.
        self.sliced = None if units is None else sliced_step(steps)
        self.channels = None
        if self.sliced is not None:
            self.channels = torch.as_tensor(np.unique(units), device=image.device)
        self.spatial = [index for index, step in enumerate(steps) if step.spatial]
        self.lengths: list[tuple[int, int] | None] = []  # output (height, width) per step
        self.inputs: list[tuple[int, int, int]] = []  # (channels, height, width) per step
        self.macs = np.zeros(len(self.spatial))  # multiply-adds per output position
        # Changed span [lo, hi] of every occluder corner, per axis, then per spatial step.
        lo = [np.asarray(axis, dtype=np.int64) for axis in corners]
        hi = [np.minimum(lo[a] + occluder, image.shape[1 + a]) - 1 for a in range(2)]
        forward: list[list] = [[], []]
        # Floats a whole-image forward holds at its largest step (input and output), the unit
        # in which batches are sized: a batch of B whole-image equivalents holds what B whole
        # images would.
        self.full = 0
        x = image[None]
        for index, step in enumerate(steps):
            self.inputs.append(tuple(x.shape[1:]))
            if not step.spatial:
                self.lengths.append(None)
                x = step.module.forward(x)
                continue
            floats_in, channels = x[0].numel(), x.shape[1]
            x = step.module.forward(x)
            self.full = max(self.full, floats_in + x[0].numel())
            lengths = tuple(int(n) for n in x.shape[2:])
            self.lengths.append(lengths)
            taps = step.kernel[0] * step.kernel[1]
            if isinstance(step.module, nn.Conv2d):
                conv = step.module
                out = conv.out_channels if index != self.sliced else len(self.channels)
                taps *= conv.in_channels * out // conv.groups
            else:
                taps *= channels
            self.macs[len(forward[0])] = taps
            for a in range(2):
                lo[a], hi[a] = changed_span(step, a, lo[a], hi[a], lengths[a])
                forward[a].append((lo[a], hi[a]))
        self.forward = [
            (np.stack([s[0] for s in spans], 1), np.stack([s[1] for s in spans], 1))
            for spans in forward
        ]
        # Passes are batched by the size of their window at the costliest step (of the largest
        # windows), each batch computing the largest windows of its kind at every step.
        widest = [(last - first).max(0) + 1 for first, last in self.forward]
        self.key = int(np.argmax(self.macs * widest[0] * widest[1]))
        self.largest: tuple[dict, dict] = ({}, {})  # kind -> largest sizes (steps,), per axis
        self._floats: dict[tuple[int, int], int] = {}
        self.work = _Workspace()

    def windows(self, box: tuple[int, int, int, int]) -> Windows:
        """The windows of every occluder corner for measured positions in ``box`` (y_lo, y_hi,
        x_lo, x_hi): the forward spans cut to the backward ones (where they miss each other,
        one output of the backward span: such a pass changes nothing measured)."""
        lo, hi = [box[0], box[2]], [box[1], box[3]]
        back = np.zeros((2, 2, len(self.spatial)), dtype=np.int64)  # axis, lo / hi, step
        for column in reversed(range(len(self.spatial))):
            index = self.spatial[column]
            step, length = self.steps[index], self.inputs[index][1:]
            back[:, 0, column], back[:, 1, column] = lo, hi
            lo = [max(0, lo[a] * step.stride[a] - step.padding[a]) for a in range(2)]
            hi = [
                min(length[a] - 1, hi[a] * step.stride[a] - step.padding[a] + step.reach(a))
                for a in range(2)
            ]
        starts, sizes, kinds = [], [], []
        for a in range(2):
            first, last = self.forward[a]
            start = np.maximum(first, back[a, 0])
            stop = np.minimum(last, back[a, 1])
            empty = stop < start
            start = np.where(empty, np.minimum(start, back[a, 1]), start)
            size = np.where(empty, 1, stop - start + 1)
            # Passes of one kind: the same window at the costliest step, for boxes of the same
            # extent (whose windows at the last steps are alike).
            kind = size[:, self.key] * _KIND + (back[a, 1, -1] - back[a, 0, -1] + 1)
            for value in np.unique(kind):
                rows = size[kind == value].max(0)
                self.largest[a][value] = np.maximum(self.largest[a].get(value, rows), rows)
            starts.append(start)
            sizes.append(size)
            kinds.append(kind)
        return Windows(tuple(starts), tuple(sizes), tuple(kinds))

    def sizes(self, kind: tuple[int, int]) -> np.ndarray:
        """Window sizes (spatial steps, 2) that the passes of ``kind`` (per axis, as in
        :class:`Windows`) run with: the largest of their kind at every step, once
        :meth:`windows` has seen every box."""
        return np.stack([self.largest[a][int(kind[a])] for a in range(2)], 1)

    def cost(self, windows: Windows, jobs: np.ndarray) -> float:
        """Multiply-adds of the passes ``jobs`` (J, 2: corner rows and columns) on ``windows``."""
        area = windows.size[0][jobs[:, 0]] * windows.size[1][jobs[:, 1]]
        return float((area @ self.macs).sum())

    def floats(self, kind: tuple[int, int]) -> int:
        """Floats one pass of ``kind`` holds at its largest step: its gathered input window twice
        (gathered, and a copy in the layout the convolution or pooling prefers), the previous
        step's window it pastes (twice: reshaped, then picked), its output window and, for a
        convolution, the unfolded input (one column of kernel taps per output) that small
        convolutions run on."""
        key = (int(kind[0]), int(kind[1]))
        if key not in self._floats:
            floats, previous = 0, 0
            for index, (height, width) in zip(self.spatial, self.sizes(key), strict=True):
                step, channels = self.steps[index], self.inputs[index][0]
                gathered = channels * math.prod(
                    (side - 1) * step.stride[a] + step.reach(a) + 1
                    for a, side in enumerate((height, width))
                )
                unfolded = 0
                if isinstance(step.module, nn.Conv2d):
                    conv = step.module
                    taps = conv.in_channels // conv.groups * step.kernel[0] * step.kernel[1]
                    unfolded, channels = taps * height * width, conv.out_channels
                out = height * width * channels
                floats = max(floats, 2 * gathered + 2 * previous + unfolded + out)
                previous = height * width * channels
            self._floats[key] = floats
        return self._floats[key]

    def base(self, image: torch.Tensor) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        """Padded inputs of the spatial steps, and the layer output, for one image."""
        padded: list[torch.Tensor | None] = []
        x = image[None]
        for step, lengths in zip(self.steps, self.lengths, strict=True):
            if lengths is None:
                padded.append(None)
            else:
                pads = []
                for a in (1, 0):  # F.pad takes the last axis first
                    extra = (lengths[a] - 1) * step.stride[a] + step.reach(a) + 1
                    right = max(0, extra - step.padding[a] - x.shape[2 + a])
                    pads += [step.padding[a], right]
                padded.append(F.pad(x[0], pads, value=step.fill))
            x = step.module.forward(x)
        return padded, x[0]

    def run(
        self,
        bases: list[torch.Tensor | None],
        images: np.ndarray,
        corners: np.ndarray,
        patch: torch.Tensor,
        starts: np.ndarray,
        sizes: np.ndarray,
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Layer output windows (B, C, h, w) of occluded images and their starts (B, 2); C is
        ``len(self.channels)`` (the measured units, in order) where those alone are computed.

        ``bases[s]`` holds the padded base inputs of spatial step ``s`` for every image of the
        chunk, channels last (I, H, W, C), see :meth:`stack`; ``images[b]`` is item ``b``'s image
        in that stack, ``corners[b]`` its occluder corner (y, x) in input pixels, ``starts[b]``
        (spatial steps, 2) the first output of its window at every spatial step and ``sizes``
        (spatial steps, 2) the window sizes, equal for all items. Each step gathers the windows
        of all items and pastes the recomputed windows into them in one indexing operation each.
        """
        count = len(corners)
        window = patch.unsqueeze(0).expand(count, -1, -1, -1)
        low = np.asarray(corners, dtype=np.int64)  # start of the window computed
        column = 0
        for index, step in enumerate(self.steps):
            if not step.spatial:
                window = step.module.forward(window)
                continue
            out = sizes[column]  # at least each item's own window: it still covers that
            start = np.minimum(starts[:, column], np.array(self.lengths[index]) - out)
            needed = [(out[a] - 1) * step.stride[a] + step.reach(a) + 1 for a in range(2)]
            need = start * np.array(step.stride)  # in padded coordinates
            offset = low + np.array(step.padding) - need  # computed window in gathered coords
            # Pasted values land only on real inputs, never on padding (a clipped occluder).
            inner = np.array(step.padding) - need
            bounds = (inner, inner + np.array(self.inputs[index][1:]))
            gathered = _gather_paste(
                bases[index], images, need, needed, window, offset, bounds, self.work
            )
            channels = self.channels if index == self.sliced else None
            window, low = step.apply(gathered, channels), start
            column += 1
        return window, low

    def stack(self, prepared: list[tuple]) -> list[torch.Tensor | None]:
        """Per spatial step, the padded base inputs of several images (:meth:`base`), stacked
        channels last as (I, H, W, C) for :func:`_gather_paste`; after the step that computes
        the measured units alone, those channels alone."""
        stacked = []
        for index, padded in enumerate(zip(*(base for base, _ in prepared), strict=True)):
            if padded[0] is None:
                stacked.append(None)
                continue
            inputs = torch.stack(padded)
            if self.sliced is not None and index > self.sliced:
                inputs = inputs[:, self.channels]
            stacked.append(inputs.permute(0, 2, 3, 1).contiguous())
        return stacked


class _Workspace:
    """One buffer reused from batch to batch for the large temporaries of every step (gathered
    and pasted windows), which then land in the same memory instead of in new holes of a
    fragmented heap."""

    def __init__(self):
        self.buffer: torch.Tensor | None = None

    def take(self, shapes: Sequence[Sequence[int]], like: torch.Tensor) -> list[torch.Tensor]:
        """Tensors of ``shapes`` (dtype and device of ``like``) laid one after the other from the
        start of the buffer; what earlier calls took there is overwritten."""
        sizes = [math.prod(shape) for shape in shapes]
        buffer = self.buffer
        if buffer is None or buffer.numel() < sum(sizes) or buffer.dtype != like.dtype:
            self.buffer = buffer = None  # free it first
            buffer = torch.empty(sum(sizes), dtype=like.dtype, device=like.device)
            self.buffer = buffer
        starts = np.cumsum([0] + sizes)
        return [
            buffer[start : start + size].view(*shape)
            for start, size, shape in zip(starts, sizes, shapes, strict=False)
        ]


def _gather_paste(
    base: torch.Tensor,
    images: np.ndarray,
    corner: np.ndarray,
    size: Sequence[int],
    window: torch.Tensor,
    offset: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    work: _Workspace,
) -> torch.Tensor:
    """Windows (B, C, h, w) of ``size`` cut at ``corner`` (B, 2) from ``base[images[b]]`` (I, H,
    W, C), with ``window[b]`` (C, h', w') pasted at ``offset[b]``; parts outside the window or
    outside ``bounds[0][b] <= (y, x) < bounds[1][b]`` (the real inputs, in window coordinates)
    are cut off.

    Works on rows of channels: one ``index_select`` gathers every item's window, one
    ``index_copy_`` pastes every item's recomputed values. The result lies in ``work``: it is
    overwritten by the next call.
    """
    device, channels = base.device, base.shape[3]
    count, (height, width), (inner_h, inner_w) = len(corner), size, window.shape[2:]
    rows = corner[:, :1] + np.arange(height)  # (B, h) rows of base
    cols = corner[:, 1:] + np.arange(width)
    images = np.asarray(images)[:, None, None]
    source = (images * base.shape[1] + rows[:, :, None]) * base.shape[2] + cols[:, None, :]
    gathered, values = work.take(
        [(source.size, channels), (count, inner_h, inner_w, channels)], base
    )
    torch.index_select(
        base.view(-1, channels), 0, torch.as_tensor(source.ravel(), device=device), out=gathered
    )
    # Window position (i, j) of item b lands at (i + offset_y, j + offset_x) of its window.
    to_y = offset[:, :1] + np.arange(inner_h)  # (B, h')
    to_x = offset[:, 1:] + np.arange(inner_w)
    low = np.maximum(bounds[0], 0)
    high = np.minimum(bounds[1], (height, width))
    inside_y = (to_y >= low[:, :1]) & (to_y < high[:, :1])
    inside_x = (to_x >= low[:, 1:]) & (to_x < high[:, 1:])
    keep = inside_y[:, :, None] & inside_x[:, None, :]
    item = np.arange(count)[:, None, None]
    target = (item * height + to_y[:, :, None]) * width + to_x[:, None, :]
    origin = (item * inner_h + np.arange(inner_h)[None, :, None]) * inner_w + np.arange(inner_w)
    values = values.copy_(window.permute(0, 2, 3, 1)).view(-1, channels)
    if not keep.all():
        values = values[torch.as_tensor(origin[keep], device=device)]
    gathered.index_copy_(0, torch.as_tensor(target[keep], device=device), values)
    return gathered.view(count, height, width, channels).permute(0, 3, 1, 2)
