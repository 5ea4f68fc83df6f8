"""Scheduling of the fast methods' occluded passes, and reading the discrepancies back.

:func:`fast` shares one set of occluded passes per image among its measurements, stops the
forward at the layer, skips occluders that touch no measured position, picks crops or
incremental windows, streams the passes in batches in a fixed order (so a run can resume after
its last finished pass) and :func:`_record` writes each batch's discrepancies into the grids.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DissectError
from ..hooks import LayerTrace
from .crop import CropGroup, CropSetting, crop_axes, crop_pass, groups_for_image
from .incremental import Incremental, Windows, chain_steps
from .occlusion import Cost, OcclusionJob, layout_of


def fast(job: OcclusionJob) -> None:
    """Shared, stopped, skipped, cropped or incremental, batched passes (see :mod:`dissect.rf`);
    fills ``job.grids`` from pass ``job.done`` on."""
    module, layer, geometry, measurements = job.module, job.layer, job.geometry, job.measurements
    patch, config, corners, image_size = job.patch, job.config, job.corners, job.image_size
    device, method, load_image, progress = job.device, job.method, job.load_image, job.progress
    grids, done, checkpoint = job.grids, job.done, job.checkpoint
    # A .pt2 program of static height and width (``static_size``) runs whole images only.
    axes = crop_axes(geometry, whole=getattr(module, "static_size", None) is not None)
    order = np.argsort(measurements.image, kind="stable")
    images, first_of = np.unique(measurements.image[order], return_index=True)
    bounds = np.append(first_of, len(order))
    peak = config.discrepancy == "peak"
    first = load_image(int(images[0])).to(device)
    steps = chain_steps(module, layer, first) if method != "crop" else None
    if method == "incremental" and steps is None:
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
    if steps is not None and method == "fast":
        # Crops are cheaper while they stay small; past a quarter of the image, go incremental.
        pixels = sum(group.cost() for groups in per_image for group in groups)
        passes = sum(len(group.jobs) for groups in per_image for group in groups)
        if pixels <= 0.25 * passes * image_size[0] * image_size[1]:
            steps = None
    incremental, windows = None, {}
    if steps is not None:
        incremental = Incremental(steps, first, patch.shape[-1], corners)

        def windows_of(group: CropGroup) -> Windows:
            if group.box not in windows:
                windows[group.box] = incremental.windows(group.box)
            return windows[group.box]

        per_image = plan(lambda g: incremental.cost(windows_of(g), g.jobs))
        for group in (group for groups in per_image for group in groups):
            windows_of(group)
    total = sum(len(group.jobs) for groups in per_image for group in groups)
    name = "crop" if incremental is None else "incremental"
    cost = Cost(total, done, measurements, len(corners[0]) * len(corners[1]), name, progress)
    bar = tqdm(total=total, initial=done, unit="pass", disable=not progress)
    chunk_images = max(1, config.batch_size // (1 if incremental is None else 8))
    position = 0
    with LayerTrace(module, [layer], stop=True, channels_last=layout_of(geometry)) as trace:
        for chunk_start in range(0, len(images), chunk_images):
            chunk = per_image[chunk_start : chunk_start + chunk_images]
            groups = [group for image_groups in chunk for group in image_groups]
            count = sum(len(group.jobs) for group in groups)
            if position + count <= done:
                position += count
                continue
            # Jobs of the chunk as (group, row, column), sorted by crop shape.
            jobs = np.concatenate(
                [np.column_stack([np.full(len(g.jobs), k), g.jobs]) for k, g in enumerate(groups)]
            )
            if incremental is None:
                shapes = np.array(
                    [(groups[k].plan_y.size()[r], groups[k].plan_x.size()[c]) for k, r, c in jobs]
                ).reshape(-1, 2)
            else:  # passes with the same window sizes, and their window starts
                boxes = [windows[g.box] for g in groups]
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
            jobs, shapes = jobs[ranking], shapes[ranking]
            if incremental is not None:
                begins = begins[ranking]
            slots = {g.image: None for g in groups}  # chunk images, in order of first use
            tensors = [load_image(int(images[i])).to(device) for i in slots]
            slots = {image: slot for slot, image in enumerate(slots)}
            if incremental is None:
                outputs = trace(torch.stack(tensors))[layer]
            else:
                prepared = [incremental.base(tensor) for tensor in tensors]
                bases = incremental.stack(prepared)
                outputs = torch.stack([output for _, output in prepared])
            targets = _Targets(
                groups, [slots[g.image] for g in groups], measurements, outputs, peak
            )
            index = max(done - position, 0)
            while index < len(jobs):
                if incremental is None:
                    pixels = image_size[0] * image_size[1]
                    limit = config.batch_size * pixels // int(np.prod(shapes[index]))
                else:
                    floats = incremental.floats(shapes[index])
                    limit = config.batch_size * incremental.full // max(floats, 1)
                end = index + 1
                while end < len(jobs) and end - index < limit:
                    if (shapes[end] != shapes[index]).any():
                        break
                    end += 1
                k, r, c = jobs[index:end].T
                if incremental is None:
                    batch = [(groups[g], row, col) for g, row, col in jobs[index:end]]
                    crops = [tensors[slots[g.image]] for g, _, _ in batch]
                    maps, starts = crop_pass(batch, crops, patch, corners, axes, trace, layer)
                else:
                    maps, starts = incremental.run(
                        bases,
                        targets.slot[k],
                        np.column_stack([corners[0][r], corners[1][c]]),
                        patch,
                        begins[index:end],
                        incremental.sizes(shapes[index]),
                    )
                _record(grids, maps, starts, targets, k, r, c)
                bar.update(len(k))
                index = end
                cost.update(position + index)
                if checkpoint is not None:
                    checkpoint(position + index)
            position += len(jobs)
    bar.close()


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
        Unoccluded layer output of each image of the chunk.
    peak : bool
        ``peak`` discrepancy (else ``map``).
    """

    def __init__(self, groups, slots, measurements, outputs, peak):
        self.slot = np.asarray(slots, dtype=np.int64)
        self.first_y = np.stack([g.plan_y.first for g in groups])  # (G, corners)
        self.last_y = np.stack([g.plan_y.last for g in groups])
        self.first_x = np.stack([g.plan_x.first for g in groups])
        self.last_x = np.stack([g.plan_x.last for g in groups])
        self.counts = np.array([len(g.members) for g in groups])
        self.offsets = np.cumsum(self.counts) - self.counts  # of each group in ``members``
        self.members = np.concatenate([g.members for g in groups])
        self.unit = measurements.unit[self.members]
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
