"""Stride and offset after resampling, from the centroids of every feature position at once.

Under :class:`~dissect.geometry.surrogates.ConnectivityMode` a network is (apart from global
operations, which are cut) a linear map with non-negative weights ``w[i, p]`` from input pixels
``p`` to feature positions ``i``. One forward of three images -- all ones, the row coordinate,
the column coordinate -- gives, summed over channels, each position's mass ``sum_p w[i, p]`` and
first moments, so its centroid ``sum_p p w[i, p] / sum_p w[i, p]`` along each axis.

After a resampling the centroids are not on a line: nearest upsampling by ``k`` repeats a centre
``k`` times, a transposed convolution alternates between supports, branches of different
strides summed (or concatenated) mix a fine line with a coarse staircase. They are on a line
*plus a periodic pattern*: ``c[i + P] = c[i] + P * stride`` for some period ``P``. The fit finds
the smallest such ``P`` over a run of positions around the middle of the map (positions near a
border, where padding or clamping bends the pattern, break the recurrence and are left out) and
places the line so that the pattern averages to zero over a period: ``offset = mean(c[i] -
stride * i)`` over one period. For nearest upsampling by 2 of a stride-4 map this is stride 2,
offset ``1.5 - 1``; for a stride-4 branch plus an 8x upsampled stride-32 branch, the stride-4
branch's line. On plain convolutional layers it is the centre of the receptive field.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..hooks import as_maps
from .probe import LayerProbe
from .surrogates import DERIVED, ConnectivityMode

#: Largest disagreement (px) of two centroid differences that are the same up to rounding.
TOLERANCE = 0.01


class _Stop(Exception):
    """Every wanted layer has run."""


def centroid_profiles(
    module: nn.Module, size: tuple[int, int], probes: dict[str, LayerProbe]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Centroids of every position of each layer along the middle column and the middle row.

    Parameters
    ----------
    module : nn.Module
        The network (not modified).
    size : (int, int)
        Input height and width.
    probes : dict of str to LayerProbe
        The layers (4-d maps, as :func:`~dissect.geometry.probe.probe_layers` read them).

    Returns
    -------
    dict of str to ((ndarray, ndarray), (ndarray, ndarray))
        Per layer and axis, the centroids (input pixels, NaN where no pixel reaches) and masses
        of the positions along the middle of the other axis: the row centroids of the middle
        column, the column centroids of the middle row.
    """
    parameter = next(iter([*module.parameters(), *module.buffers()]), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    floating = parameter is not None and parameter.is_floating_point()
    outputs: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module, _inputs, output):
            if name in outputs or not isinstance(output, torch.Tensor):
                return
            if probes[name].channels_last or output.dim() == 3:
                output = as_maps(output, size, True)
            outputs[name] = output.detach().double().sum(1)  # (B, H, W)
            if outputs.keys() >= probes.keys():
                raise _Stop

        return record

    handles = [
        child.register_forward_hook(hook(name))
        for name, child in module.named_modules()
        if name in probes
    ]
    # Double precision where the network allows it (the moments sum many coordinates).
    dtypes = [torch.float64, parameter.dtype if floating else torch.float32]
    try:
        for dtype in dtypes:
            images = _coordinate_images(size, device, dtype)
            try:
                _forward(module, images, outputs)
                if all(len(out) == len(images) for out in outputs.values()):
                    break
                # A wrapper that feeds the network one image at a time (a static-batch .pt2).
                _forward_one_by_one(module, images, outputs)
                break
            except Exception:  # noqa: BLE001 - another dtype, or one image at a time (.pt2)
                if dtype == dtypes[-1]:
                    _forward_one_by_one(module, images, outputs)
    finally:
        for handle in handles:
            handle.remove()
    centre = ((size[0] - 1) / 2, (size[1] - 1) / 2)
    profiles = {}
    for name, (mass, first_y, first_x) in outputs.items():
        height, width = mass.shape
        column, row = mass[:, width // 2], mass[height // 2]
        with np.errstate(invalid="ignore", divide="ignore"):
            ys = (first_y[:, width // 2] / column).cpu().numpy() + centre[0]
            xs = (first_x[height // 2] / row).cpu().numpy() + centre[1]
        profiles[name] = ((ys, column.cpu().numpy()), (xs, row.cpu().numpy()))
    return profiles


def _coordinate_images(size: tuple[int, int], device, dtype) -> torch.Tensor:
    """(3, 3, H, W): all ones, the row coordinate, the column coordinate (from the centre)."""
    rows = torch.arange(size[0], device=device, dtype=dtype) - (size[0] - 1) / 2
    cols = torch.arange(size[1], device=device, dtype=dtype) - (size[1] - 1) / 2
    planes = [torch.ones(size, device=device, dtype=dtype), rows[:, None].expand(size)]
    planes.append(cols[None, :].expand(size))
    return torch.stack(planes)[:, None].expand(3, 3, *size).contiguous()


def _forward(module: nn.Module, images: torch.Tensor, outputs: dict) -> None:
    outputs.clear()
    with torch.inference_mode(False), torch.no_grad():
        setattr(images, DERIVED, True)
        try:
            with ConnectivityMode():
                module(images)
        except _Stop:
            pass


def _forward_one_by_one(module: nn.Module, images: torch.Tensor, outputs: dict) -> None:
    """The three images one forward each, for networks that take one image at a time."""
    maps: dict[str, list] = {}
    for k in range(len(images)):
        _forward(module, images[k : k + 1].contiguous(), outputs)
        for name, out in outputs.items():
            maps.setdefault(name, []).append(out)
    outputs.clear()
    outputs.update({name: torch.cat(parts) for name, parts in maps.items()})


def periodic_line(
    centroids: np.ndarray, masses: np.ndarray | None = None, tolerance: float = TOLERANCE
) -> tuple[float, float] | None:
    """Stride and offset of centroids that follow a line plus a periodic pattern.

    Parameters
    ----------
    centroids : ndarray
        Centroid (input pixels) of each position along one axis; NaN where unknown.
    masses : ndarray, optional
        Each position's mass; where given, it must repeat with the same period (padding lowers
        it near the borders, which keeps bent positions out even where their centroids happen
        to repeat).
    tolerance : float
        Largest disagreement of differences (px) counted as equal; masses agree within
        ``tolerance`` relative.

    Returns
    -------
    (float, float) or None
        ``(stride, offset)``, or None when no period repeats around the middle of the axis
        twice in a row, or over the whole axis (too few positions clear of the borders: probe a
        larger canvas).

    Examples
    --------
    >>> periodic_line(np.array([1.5, 1.5, 5.5, 5.5, 9.5, 9.5]))
    (2.0, 0.5)
    """
    centroids = np.asarray(centroids, dtype=np.float64)
    count = len(centroids)
    for period in range(1, count // 2 + 1):
        agree = _repeats(centroids, period, tolerance)
        if masses is not None:
            scale = np.nanmax(np.abs(masses)) if np.isfinite(masses).any() else 1.0
            agree &= _repeats(np.asarray(masses, np.float64) / scale, period, tolerance, False)
        middle = (count - period) // 2
        if not agree[middle]:
            continue
        start = middle
        while start > 0 and agree[start - 1]:
            start -= 1
        stop = middle
        while stop + 1 < len(agree) and agree[stop + 1]:
            stop += 1
        run = stop - start + 1
        # Two whole periods of repeats (a shorter run can be a piece of a longer period), or
        # one over the whole axis (no border bends it) of at least three positions.
        if run < max(2 * period, 2) and not (run == len(agree) and count >= 3):
            continue
        stride = (centroids[middle + period] - centroids[middle]) / period
        index = np.arange(start, start + period)
        offset = float(np.mean(centroids[index] - stride * index))
        return _snap(stride), _snap(offset)
    return None


def _repeats(values: np.ndarray, period: int, tolerance: float, rising: bool = True) -> np.ndarray:
    """Whether ``values[i + period] - values[i]`` equals its value at the middle of the axis (and
    is positive, if ``rising``), for each ``i``."""
    differences = values[period:] - values[:-period]
    step = differences[(len(values) - period) // 2]
    if not np.isfinite(step) or (rising and step <= 0):
        return np.zeros(len(differences), dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.abs(differences - step) < tolerance


def _snap(value: float) -> float:
    """Round float noise away: to the nearest 1/48 when within 1e-4 of it, else to 1e-4."""
    snapped = round(value * 48) / 48
    return float(snapped if abs(snapped - value) < 1e-4 else round(value, 4))
