"""Geometry of a network's layers from the connectivity probe (see :mod:`dissect.geometry`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace

import numpy as np
import pandas as pd
from torch import nn

from ..config import image_hw
from ..errors import DissectError
from ..hooks import resolve_layers
from .centroid import centroid_profiles, periodic_line
from .fit import AxisFit, fit_axis, plain_axis
from .layer import LayerGeometry
from .probe import LayerProbe, probe_layers

#: Canvas multiples tried for receptive fields larger than the image.
CANVASES = (2, 4)


def layer_geometry(
    module: nn.Module, layers: Sequence[str], image_size: int | tuple[int, int]
) -> dict[str, LayerGeometry]:
    """Probe the geometry of ``layers`` for inputs of ``image_size``.

    Parameters
    ----------
    module : nn.Module
        The network, in eval mode (it is not modified).
    layers : sequence of str
        Names from ``module.named_modules()``.
    image_size : int or (int, int)
        Input side, or (height, width), in pixels.

    Returns
    -------
    dict of str to LayerGeometry
        In the order of ``layers``. A layer whose geometry cannot be measured is returned with
        ``problem`` set, not raised.

    Raises
    ------
    DissectError
        If a layer is not in the network, the forward fails, or a layer is never reached.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3))
    >>> layer_geometry(net, ["2"], 32)["2"].rf
    (8, 8)
    """
    size = image_hw(image_size)
    layers = resolve_layers(module, layers)
    probes = probe_layers(module, size, layers)
    unreached = [name for name in layers if name not in probes]
    if unreached:
        raise DissectError(
            f"layer(s) {', '.join(unreached)} were never reached by the forward pass "
            "(defined but unused in forward?); pick layers the network runs."
        )
    return _geometries(module, {name: probes[name] for name in layers}, size)


def _one_global_position(g: LayerGeometry, size: tuple[int, int]) -> bool:
    """A 1x1 map whose one position sees the whole image (global pooling, a dense layer)."""
    if not g.is_spatial or g.is_global or g.channels_last or len(g.output_shape) != 3:
        return False
    covers = g.rf[0] >= size[0] and g.rf[1] >= size[1]
    return tuple(g.output_shape[1:]) == (1, 1) and covers


def geometry_table(module: nn.Module, image_size: int | tuple[int, int] = 224) -> pd.DataFrame:
    """Every addressable layer with its output shape and receptive-field geometry.

    Parameters
    ----------
    module : nn.Module
        The network.
    image_size : int or (int, int)
        Input side, or (height, width), in pixels.

    Returns
    -------
    DataFrame
        Columns ``layer, type, output_shape, rf, stride, offset, note`` in forward order; ``rf``
        reads ``global`` for layers that depend on the whole image, ``note`` says why, or why a
        layer could not be measured. Layers the forward never reaches (or that return no tensor)
        come last with empty geometry.
    """
    size = image_hw(image_size)
    probes = probe_layers(module, size, None)
    reached = {
        name: probe
        for name, probe in probes.items()
        if isinstance(probe.shape, tuple) and len(probe.shape) in (1, 3)
    }
    geometry = _geometries(module, reached, size)
    rows = []
    for name, g in geometry.items():
        note = g.problem or (f"global: {g.global_reason}" if g.is_global else "")
        if g.extra_tokens is not None:
            grid = "x".join(map(str, g.output_shape[1:]))
            tokens = f"tokens: {grid} grid + {g.extra_tokens} extra (not mapped)"
            note = f"{tokens}; {note}" if note else tokens
        if g.channels_last:
            layout = "channels-last (B, H, W, C): read as C units over H x W"
            note = f"{layout}; {note}" if note else layout
        rf = "global" if g.is_global else _pair(g.rf) + ("+" if g.rf_clipped else "")
        stride = _pair(g.stride) if g.is_spatial else "-"
        if _one_global_position(g, size):
            rf, stride = "global", "-"
            note = note or "global: one position, which sees the whole image"
        rows.append(
            {
                "layer": name,
                "type": g.kind,
                "output_shape": "x".join(map(str, g.output_shape)),
                "rf": rf if g.is_spatial else _pair(g.rf),
                "stride": stride,
                "offset": _pair(g.offset) if g.is_spatial else "-",
                "note": note,
            }
        )
    for name, child in module.named_modules():
        if name and name not in geometry:
            shape = probes[name].shape if name in probes else "not run"
            if isinstance(shape, tuple):
                shape = "x".join(map(str, shape))
            rows.append({"layer": name, "type": type(child).__name__, "output_shape": shape})
    columns = ["layer", "type", "output_shape", "rf", "stride", "offset", "note"]
    return pd.DataFrame(rows, columns=columns).fillna("")


def _pair(values: Sequence[float]) -> str:
    text = [f"{value:g}" for value in values]
    return text[0] if text[0] == text[1] else f"{text[0]}x{text[1]}"


def _geometries(
    module: nn.Module, probes: dict[str, LayerProbe], size: tuple[int, int]
) -> dict[str, LayerGeometry]:
    """LayerGeometry of each probed layer; receptive fields larger than the image are probed
    again on larger canvases (stride and offset taken there when the image was too small)."""
    axes = {name: _axes(probe, size) for name, probe in probes.items()}

    def unsure(name: str) -> bool:
        fits = axes[name]
        return any((f.clipped or not f.located) and not f.problem for f in fits)

    pending = [name for name in axes if not probes[name].global_reason and unsure(name)]
    fixed = set()  # layers after a resize to a fixed size: a larger canvas is another network
    for factor in CANVASES:
        if not pending:
            break
        canvas = (size[0] * factor, size[1] * factor)
        try:
            larger = probe_layers(module, canvas, pending)
        except DissectError:  # a network that only runs at its own input size
            fixed.update(pending)
            break
        for name in pending:
            here, there = probes[name].shape[1:], larger[name].shape[1:]
            if not all(b > a for a, b in zip(here, there, strict=True)):
                fixed.add(name)
                continue
            axes[name] = [
                _better(old, new)
                for old, new in zip(axes[name], _axes(larger[name], canvas), strict=True)
            ]
        pending = [name for name in pending if unsure(name) and name not in fixed]
    bent = _resampled_lines(module, probes, size, axes)
    return {
        name: _geometry(name, probe, size, axes[name], name in fixed, name in bent)
        for name, probe in probes.items()
    }


def _resampled_lines(
    module: nn.Module, probes: dict[str, LayerProbe], size: tuple[int, int], axes: dict
) -> set[str]:
    """Stride and offset of the layers after a resampling from their centroids (see
    :mod:`dissect.geometry.centroid`), on the image's canvas, else on larger ones; replaces them
    in ``axes``. Returns the layers where no canvas had enough positions clear of the borders."""
    pending = {
        name
        for name, probe in probes.items()
        if probe.resampled and not probe.global_reason and axes[name]
    }
    for factor in (1, *CANVASES):
        if not pending:
            break
        canvas = (size[0] * factor, size[1] * factor)
        try:
            profiles = centroid_profiles(module, canvas, {name: probes[name] for name in pending})
        except Exception:  # noqa: BLE001 - a network that only runs at its own input size
            break
        for name in sorted(pending):
            shape = tuple(len(centroids) for centroids, _ in profiles.get(name, ()))
            grown = all(b > a for a, b in zip(probes[name].shape[1:], shape, strict=True))
            if factor > 1 and not grown:
                pending.discard(name)  # after a resize to a fixed size: nothing to gain
                continue
            lines = [periodic_line(*profile) for profile in profiles.get(name, ())]
            if len(lines) == 2 and all(lines):
                axes[name] = [
                    replace(
                        fit,
                        rf=max(fit.rf, _field_around(probes[name], axis, *line)),
                        stride=line[0],
                        offset=line[1],
                        located=True,
                        guessed=False,
                    )
                    for axis, (fit, line) in enumerate(zip(axes[name], lines, strict=True))
                ]
                pending.discard(name)
    return pending


def _field_around(probe: LayerProbe, axis: int, stride: float, offset: float) -> int:
    """The field around each probed position's centre on the line that holds its support."""
    field = 0.0
    supports = (probe.rows if axis == 0 else probe.cols) or []
    for position, weights in zip(probe.positions or [], supports, strict=True):
        support = np.flatnonzero(weights > 0)
        if len(support):
            centre = offset + stride * position[axis]
            field = max(field, 2 * max(support[-1] - centre, centre - support[0]) + 1)
    return int(round(field))


def _better(old: AxisFit, new: AxisFit) -> AxisFit:
    """Combine a fit at the image size with one on a larger canvas: the larger receptive field,
    and the better-founded stride and offset (located, else measured, else the image's)."""
    if new.problem:
        return old
    if old.located or (new.guessed and not old.guessed) or (not new.located and not old.guessed):
        stride, offset, located, guessed = old.stride, old.offset, old.located, old.guessed
    else:
        stride, offset, located, guessed = new.stride, new.offset, new.located, new.guessed
    clipped = new.clipped if new.rf >= old.rf else old.clipped
    return AxisFit(max(new.rf, old.rf), stride, offset, clipped, located, guessed)


def _axes(probe: LayerProbe, size: tuple[int, int]) -> list[AxisFit]:
    """Per-axis fits of a spatial layer's probe (empty for other layers)."""
    shape = probe.shape
    if len(shape) != 3 or shape[1:] == (1, 1):
        return []
    fits = []
    for axis, weights in enumerate((probe.rows, probe.cols)):
        positions = [p[axis] for p in probe.positions or []]
        if weights:
            fits.append(fit_axis(positions, weights, shape[1 + axis]))
        else:
            fits.append(plain_axis(size[axis], shape[1 + axis], "no input pixel reaches it"))
    return fits


def _replace(g: LayerGeometry, **changes) -> LayerGeometry:
    return LayerGeometry(**{**{f.name: getattr(g, f.name) for f in fields(g)}, **changes})


def _geometry(
    name: str,
    probe: LayerProbe,
    size: tuple[int, int],
    axes: list[AxisFit],
    fixed: bool = False,
    bent: bool = False,
) -> LayerGeometry:
    """``fixed``: no larger canvas could measure what the image size leaves unsure (the layer
    comes after a resize to a fixed size, or the network runs at one input size only).
    ``bent``: a layer after a resampling whose centroids could not be fitted (too few positions
    clear of the borders)."""
    common = {"name": name, "kind": probe.kind, "output_shape": probe.shape}
    layout = {"channels_last": bool(probe.channels_last)}
    if not axes:
        # No positions (or one): the whole input, whatever its size.
        centre = ((size[0] - 1) / 2, (size[1] - 1) / 2)
        return LayerGeometry(**common, rf=size, stride=(0.0, 0.0), offset=centre, **layout)
    layout.update(resampled=probe.resampled, extra_tokens=probe.extra_tokens)
    stride = (axes[0].stride, axes[1].stride)
    offset = (axes[0].offset, axes[1].offset)
    if probe.global_reason:
        return LayerGeometry(
            **common,
            rf=size,
            stride=stride,
            offset=offset,
            is_global=True,
            global_reason=probe.global_reason,
            **layout,
        )
    return LayerGeometry(
        **common,
        rf=(axes[0].rf, axes[1].rf),
        stride=stride,
        offset=offset,
        rf_clipped=any(a.clipped for a in axes),
        problem=_problem(axes, fixed, bent),
        **layout,
    )


def _problem(axes: list[AxisFit], fixed: bool, bent: bool) -> str:
    """What is unsure about a fitted geometry ('' when nothing is); see :func:`_geometry`."""
    problem = next((a.problem for a in axes if a.problem), "")
    if problem:
        return (
            f"geometry not measured: {problem} in the probe (does its value ignore the image?); "
            "stride and offset are a plain resize's"
        )
    if fixed:
        return (
            "measured at this input size only (after a resize to a fixed size, or in a network "
            "that runs at one input size only): rf is a lower bound"
            + (
                ", stride and offset a plain resize's (the receptive field is cut on every side)"
                if any(a.guessed for a in axes)
                else ""
            )
        )
    if any(a.guessed for a in axes):
        return (
            f"receptive field larger than {CANVASES[-1]}x the image: rf is a lower bound and "
            "the offset a plain resize's"
        )
    if bent:
        return (
            "after a resampling, too few positions clear of the borders for an exact fit: "
            "stride and offset approximate (from the supports)"
        )
    return ""
