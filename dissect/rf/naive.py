"""The naive reference method: one full forward per occluder position, per measurement.

Slow but obviously right; the fast methods (:mod:`dissect.rf.crop`, :mod:`dissect.rf.incremental`)
are tested against it.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..hooks import LayerTrace
from .occlusion import _Cost, _layout, _occlude


def _naive(
    module, layer, geometry, load_image, measurements, patch, config, corners, device, progress,
    grids,
) -> None:  # fmt: skip
    """One full forward per occluder position, per measurement."""
    positions = [(int(y), int(x)) for y in corners[0] for x in corners[1]]
    total = len(measurements) * len(positions)
    cost = _Cost(total, 0, measurements, len(positions), "naive", progress)
    bar = tqdm(total=total, unit="pass", disable=not progress)
    with LayerTrace(module, [layer], channels_last=_layout(geometry)) as trace:
        for m in range(len(measurements)):
            image = load_image(int(measurements.image[m])).to(device)
            unit, y, x = int(measurements.unit[m]), int(measurements.y[m]), int(measurements.x[m])
            base = trace(image[None])[layer][0, unit]
            values = []
            for start in range(0, len(positions), config.batch_size):
                chunk = positions[start : start + config.batch_size]
                batch = torch.stack([_occlude(image, patch, py, px) for py, px in chunk])
                maps = trace(batch)[layer][:, unit]
                if config.discrepancy == "peak":
                    values.append((maps[:, y, x] - base[y, x]).abs())
                else:
                    values.append((maps - base).abs().sum((1, 2)))
                bar.update(len(chunk))
                cost.update(bar.n)
            grid = torch.cat(values).reshape(len(corners[0]), len(corners[1]))
            grids[m] = grid.float().cpu().numpy()
    bar.close()
