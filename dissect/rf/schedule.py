"""Scheduling of the fast methods' occluded passes, and reading the discrepancies back.

:func:`fast` shares one set of occluded passes per image among its measurements, stops the
forward at the layer, skips occluders that touch no measured position, picks crops or
incremental windows, streams the passes in batches in a fixed order (so a run can resume after
its last finished pass) and :func:`_record` writes each batch's discrepancies into the grids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DissectError
from ..hooks import LayerTrace
from .crop import CropGroup, CropSetting, crop_axes, crop_pass, groups_for_image
from .incremental import Incremental, Windows
from .occlusion import Cost, OcclusionJob, layout_of
from .steps import chain_steps

#: How many times the estimate of :meth:`~dissect.rf.incremental.Incremental.floats` an
#: incremental batch's temporaries take (measured on scene-cnn's conv2 and conv5 with glibc's
#: mmap threshold fixed, so that the peak is the memory in use: batches cut to the estimate
#: alone held 1.5x (conv2) and 1.2x (conv5) the naive loop's batch; a quarter of it, 0.94x and
#: 0.90x, at about the same speed on conv2 and 0.85x of it on conv5).
TEMPORARIES = 4


def fast(job: OcclusionJob) -> None:
    """Shared, stopped, skipped, cropped or incremental, batched passes (see :mod:`dissect.rf`);
    fills ``job.grids`` from pass ``job.done`` on."""
    plan = _plan(job)
    total = sum(len(group.jobs) for groups in plan.per_image for group in groups)
    name = "crop" if plan.incremental is None else "incremental"
    positions = len(job.corners[0]) * len(job.corners[1])
    cost = Cost(total, job.done, job.measurements, positions, name, job.progress)
    bar = tqdm(total=total, initial=job.done, unit="pass", disable=not job.progress)
    chunk_images = max(1, job.config.batch_size // (1 if plan.incremental is None else 8))
    position = 0
    channels_last = layout_of(job.geometry)
    # oneDNN compiles and caches a kernel per input shape, and incremental passes come in
    # hundreds of window shapes: its cache then holds more than the passes themselves (1.6x the
    # naive loop's peak memory with 32 measurements per image, 0.8x without it, for 1.2x the CPU).
    onednn = torch.backends.mkldnn.flags(torch.backends.mkldnn.enabled and plan.incremental is None)
    trace = LayerTrace(job.module, [job.layer], stop=True, channels_last=channels_last)
    with onednn, trace:
        for chunk_start in range(0, len(plan.images), chunk_images):
            chunk = plan.per_image[chunk_start : chunk_start + chunk_images]
            groups = [group for image_groups in chunk for group in image_groups]
            count = sum(len(group.jobs) for group in groups)
            if position + count > job.done:
                _run_chunk(job, plan, groups, trace, position, (bar, cost))
            position += count
    bar.close()


@dataclass
class _Plan:
    """How a layer's measurements are occluded: the distinct images, each one's crop groups,
    and the incremental method's set-up (None for crops) with the windows of each box."""

    images: np.ndarray
    per_image: list[list[CropGroup]]
    axes: tuple
    peak: bool
    incremental: Incremental | None
    windows: dict


def _plan(job: OcclusionJob) -> _Plan:
    """Group every image's measurements, and choose crops or incremental passes."""
    module, layer, measurements, patch = job.module, job.layer, job.measurements, job.patch
    image_size, corners = job.image_size, job.corners
    # A .pt2 program of static height and width (``static_size``) runs whole images only.
    axes = crop_axes(job.geometry, whole=getattr(module, "static_size", None) is not None)
    order = np.argsort(measurements.image, kind="stable")
    images, first_of = np.unique(measurements.image[order], return_index=True)
    bounds = np.append(first_of, len(order))
    peak = job.config.discrepancy == "peak"
    first = job.load_image(int(images[0])).to(job.device)
    steps = chain_steps(module, layer, first) if job.method != "crop" else None
    if job.method == "incremental" and steps is None:
        raise DissectError(
            f"layer {layer!r} is not reached through a plain chain of convolution, pooling and "
            "point-wise modules; use the fast or crop method."
        )
    setting = CropSetting(axes, corners, patch.shape[-1], image_size, measurements, peak)

    def plan(cost: Callable[[CropGroup], float]) -> list[list[CropGroup]]:
        return [
            groups_for_image(i, order[bounds[i] : bounds[i + 1]], setting, cost)
            for i in range(len(images))
        ]

    per_image = plan(CropGroup.cost)
    if steps is not None and job.method == "fast":
        # Crops are cheaper while they stay small; past a quarter of the image, go incremental.
        pixels = sum(group.cost() for groups in per_image for group in groups)
        passes = sum(len(group.jobs) for groups in per_image for group in groups)
        if pixels <= 0.25 * passes * image_size[0] * image_size[1]:
            steps = None
    incremental, windows = None, {}
    if steps is not None:
        incremental = Incremental(steps, first, patch.shape[-1], corners, measurements.unit)

        def windows_of(group: CropGroup) -> Windows:
            if group.box not in windows:
                windows[group.box] = incremental.windows(group.box)
            return windows[group.box]

        per_image = plan(lambda g: incremental.cost(windows_of(g), g.jobs))
        for group in (group for groups in per_image for group in groups):
            windows_of(group)
    return _Plan(images, per_image, axes, peak, incremental, windows)


def _sorted_jobs(plan: _Plan, groups: list[CropGroup]):
    """The passes of a chunk as (group, row, column), sorted by crop (or window) shape; their
    shapes and, for the incremental method, their window starts (else None)."""
    jobs = np.concatenate(
        [np.column_stack([np.full(len(g.jobs), k), g.jobs]) for k, g in enumerate(groups)]
    )
    begins = None
    if plan.incremental is None:
        shapes = np.array(
            [(groups[k].plan_y.size()[r], groups[k].plan_x.size()[c]) for k, r, c in jobs]
        ).reshape(-1, 2)
    else:  # passes with the same window sizes, and their window starts
        boxes = [plan.windows[g.box] for g in groups]
        shapes = np.concatenate(
            [
                np.column_stack([w.kind[0][g.jobs[:, 0]], w.kind[1][g.jobs[:, 1]]])
                for w, g in zip(boxes, groups, strict=True)
            ]
        )
        begins = np.concatenate(
            [
                np.stack([w.start[0][g.jobs[:, 0]], w.start[1][g.jobs[:, 1]]], -1)
                for w, g in zip(boxes, groups, strict=True)
            ]
        )
    ranking = np.lexsort((jobs[:, 2], jobs[:, 1], jobs[:, 0], shapes[:, 1], shapes[:, 0]))
    return jobs[ranking], shapes[ranking], None if begins is None else begins[ranking]


def _batch_end(job: OcclusionJob, plan: _Plan, shapes: np.ndarray, index: int) -> int:
    """Where the batch of passes that starts at ``index`` ends: passes of one shape, as many as
    hold what ``batch_size`` whole-image forwards would."""
    if plan.incremental is None:
        pixels = job.image_size[0] * job.image_size[1]
        limit = job.config.batch_size * pixels // int(np.prod(shapes[index]))
    else:
        floats = plan.incremental.floats(shapes[index])
        limit = job.config.batch_size * plan.incremental.full // (max(floats, 1) * TEMPORARIES)
    end = index + 1
    while end < len(shapes) and end - index < limit:
        if (shapes[end] != shapes[index]).any():
            break
        end += 1
    return end


def _run_chunk(job: OcclusionJob, plan: _Plan, groups, trace, position: int, meters) -> None:
    """The passes of a chunk of groups not done yet (``position``: passes before the chunk),
    batch by batch, recorded into ``job.grids``; ``meters``: the bar and the cost estimate."""
    bar, cost = meters
    incremental, corners, layer = plan.incremental, job.corners, job.layer
    jobs, shapes, begins = _sorted_jobs(plan, groups)
    slots = {g.image: None for g in groups}  # chunk images, in order of first use
    tensors = [job.load_image(int(plan.images[i])).to(job.device) for i in slots]
    slots = {image: slot for slot, image in enumerate(slots)}
    if incremental is None:
        outputs = trace(torch.stack(tensors))[layer]
    else:
        prepared = [incremental.base(tensor) for tensor in tensors]
        bases = incremental.stack(prepared)
        outputs = torch.stack([output for _, output in prepared])
    channels = None if incremental is None else incremental.channels
    if channels is not None:  # the passes compute the measured units alone
        outputs = outputs[:, channels]
    targets = _Targets(
        groups, [slots[g.image] for g in groups], job.measurements, outputs, plan.peak, channels
    )
    index = max(job.done - position, 0)
    while index < len(jobs):
        end = _batch_end(job, plan, shapes, index)
        k, r, c = jobs[index:end].T
        if incremental is None:
            batch = [(groups[g], row, col) for g, row, col in jobs[index:end]]
            crops = [tensors[slots[g.image]] for g, _, _ in batch]
            maps, starts = crop_pass(batch, crops, job.patch, corners, plan.axes, trace, layer)
        else:
            maps, starts = incremental.run(
                bases,
                targets.slot[k],
                np.column_stack([corners[0][r], corners[1][c]]),
                job.patch,
                begins[index:end],
                incremental.sizes(shapes[index]),
            )
        _record(job.grids, maps, starts, targets, k, r, c)
        bar.update(len(k))
        index = end
        cost.update(position + index)
        if job.checkpoint is not None:
            job.checkpoint(position + index)


class _Targets:
    """What the occluded passes of a chunk of groups are read for, as arrays over its groups.

    Parameters
    ----------
    groups : list of CropGroup
        The groups of the chunk.
    slots : list of int
        Per group, its image's position in ``outputs``.
    measurements : Measurements
        All measurements.
    outputs : Tensor, shape (I, C, H, W)
        Unoccluded layer output of each image of the chunk (at ``channels`` only, if given).
    peak : bool
        ``peak`` discrepancy (else ``map``).
    channels : Tensor, optional
        The sorted units that ``outputs`` and the passes' maps hold, if not all of them.
    """

    def __init__(self, groups, slots, measurements, outputs, peak, channels=None):
        self.slot = np.asarray(slots, dtype=np.int64)
        self.first_y = np.stack([g.plan_y.first for g in groups])  # (G, corners)
        self.last_y = np.stack([g.plan_y.last for g in groups])
        self.first_x = np.stack([g.plan_x.first for g in groups])
        self.last_x = np.stack([g.plan_x.last for g in groups])
        self.counts = np.array([len(g.members) for g in groups])
        self.offsets = np.cumsum(self.counts) - self.counts  # of each group in ``members``
        self.members = np.concatenate([g.members for g in groups])
        self.unit = measurements.unit[self.members]  # its channel in ``outputs`` and maps
        if channels is not None:
            self.unit = np.searchsorted(channels.cpu().numpy(), self.unit)
        self.y, self.x = measurements.y[self.members], measurements.x[self.members]
        self.outputs, self.peak = outputs, peak
        if peak:  # unoccluded activation of each member at its peak
            images = np.repeat(self.slot, self.counts)
            self.reference = outputs[images, self.unit, self.y, self.x]

    def pairs(self, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every (item, member) pair of the items of groups ``k``: item and member indices."""
        counts = self.counts[k]
        item = np.repeat(np.arange(len(k)), counts)
        within = np.arange(len(item)) - np.repeat(np.cumsum(counts) - counts, counts)
        return item, np.repeat(self.offsets[k], counts) + within


def _record(grids, maps, starts, targets, k, r, c) -> None:
    """Write the discrepancies read from a batch of occluded passes into ``grids``.

    Item ``b`` is occluder (``r[b]``, ``c[b]``) on group ``k[b]`` of ``targets``; ``maps[b]``
    (C, h, w) holds its layer positions from ``starts[b]`` (y, x) on.
    """
    device = maps.device
    item, member = targets.pairs(k)
    kk, rr, cc = k[item], r[item], c[item]
    if targets.peak:
        ys, xs = targets.y[member], targets.x[member]
        hit = (ys >= targets.first_y[kk, rr]) & (ys <= targets.last_y[kk, rr])
        hit &= (xs >= targets.first_x[kk, cc]) & (xs <= targets.last_x[kk, cc])
        item, member, rr, cc = item[hit], member[hit], rr[hit], cc[hit]
        # Positions outside an item's computed window did not change: discrepancy 0.
        at = [v[hit] - starts[item, a] for a, v in enumerate((ys, xs))]
        inside = (at[0] >= 0) & (at[0] < maps.shape[2]) & (at[1] >= 0) & (at[1] < maps.shape[3])
        at = [np.clip(at[a], 0, maps.shape[2 + a] - 1) for a in range(2)]
        index = [torch.as_tensor(v, device=device) for v in (item, targets.unit[member], *at)]
        diff = (
            maps[tuple(index)] - targets.reference[torch.as_tensor(member, device=device)]
        ).abs()
        diff = torch.where(torch.as_tensor(inside, device=device), diff, 0.0)
    else:
        height, width = targets.outputs.shape[2:]
        spans = [
            np.minimum(starts[:, a : a + 1] + np.arange(maps.shape[2 + a]), length - 1)
            for a, length in enumerate((height, width))
        ]
        inside_y = (spans[0] >= targets.first_y[k, r][:, None]) & (
            spans[0] <= targets.last_y[k, r][:, None]
        )
        inside_x = (spans[1] >= targets.first_x[k, c][:, None]) & (
            spans[1] <= targets.last_x[k, c][:, None]
        )
        rows, cols, images = (
            torch.as_tensor(v, device=device) for v in (spans[0], spans[1], targets.slot[k])
        )
        base = targets.outputs.permute(0, 2, 3, 1)[
            images[:, None, None], rows[:, :, None], cols[:, None, :]
        ].permute(0, 3, 1, 2)
        mask = torch.as_tensor(inside_y[:, :, None] & inside_x[:, None, :], device=device)
        sums = torch.where(mask[:, None], (maps - base).abs(), 0.0).sum((2, 3))  # (B, C)
        units = torch.as_tensor(targets.unit[member], device=device)
        diff = sums[torch.as_tensor(item, device=device), units]
    grids[targets.members[member], rr, cc] = diff.float().cpu().numpy()
