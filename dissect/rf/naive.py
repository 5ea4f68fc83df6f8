"""The naive reference method: one full forward per occluder position, per measurement.

Slow but obviously right; the fast methods (:mod:`dissect.rf.crop`, :mod:`dissect.rf.incremental`)
are tested against it.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..hooks import LayerTrace
from .occlusion import Cost, OcclusionJob, layout_of, occlude


def naive(job: OcclusionJob) -> None:
    """One full forward per occluder position, per measurement (fills ``job.grids``)."""
    layer, measurements, corners, config = job.layer, job.measurements, job.corners, job.config
    device, patch, progress = job.device, job.patch, job.progress
    positions = [(int(y), int(x)) for y in corners[0] for x in corners[1]]
    total = len(measurements) * len(positions)
    cost = Cost(total, 0, measurements, len(positions), "naive", progress)
    bar = tqdm(total=total, unit="pass", disable=not progress)
    with LayerTrace(job.module, [layer], channels_last=layout_of(job.geometry)) as trace:
        for m in range(len(measurements)):
            image = job.load_image(int(measurements.image[m])).to(device)
            unit, y, x = int(measurements.unit[m]), int(measurements.y[m]), int(measurements.x[m])
            base = trace(image[None])[layer][0, unit]
            values = []
            for start in range(0, len(positions), config.batch_size):
                chunk = positions[start : start + config.batch_size]
                batch = torch.stack([occlude(image, patch, py, px) for py, px in chunk])
                maps = trace(batch)[layer][:, unit]
                if config.discrepancy == "peak":
                    values.append((maps[:, y, x] - base[y, x]).abs())
                else:
                    values.append((maps - base).abs().sum((1, 2)))
                bar.update(len(chunk))
                cost.update(bar.n)
            grid = torch.cat(values).reshape(len(corners[0]), len(corners[1]))
            job.grids[m] = grid.float().cpu().numpy()
            if job.checkpoint is not None:
                job.checkpoint(0)  # nothing to resume from, but a stop is honoured here
    bar.close()
