"""Theoretical receptive field, stride (jump) and offset of every layer, probed from the network.

The geometry is measured on the network itself, so it holds for any architecture (branches,
dilation, ``ceil_mode`` pooling, upsampling, functional calls and the ATen operators of exported
programs), not only a list of layer types: :mod:`dissect.geometry.probe` runs the network once
with monotone surrogates of its operations and reads, for a few feature positions of each layer,
which input pixels they are connected to; :mod:`dissect.geometry.fit` turns that into numbers.

Conventions (per axis, input pixel coordinates):

- ``stride``: input pixels between neighbouring feature positions (the "jump"; fractional after
  upsampling);
- ``offset``: input coordinate of the centre of the receptive field of feature position 0, so
  position ``i`` is centred at ``offset + i * stride`` (may be negative: padding);
- ``rf``: side of the receptive field, counting pixels that fall in the padding (unclipped), as in
  the usual ``r_l = r_{l-1} + (k_l - 1) * jump_{l-1}`` recursion.

A layer after an operation that mixes all positions (normalisation over space, global pooling,
attention) is *global*: every position depends on the whole image. Its ``rf`` is the image and
``stride``/``offset`` say where its positions sit (through its local paths where it has any,
else as a plain resize would put them). A layer the probe cannot measure keeps the plain-resize
geometry and says why in ``problem``; the other layers are unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import pandas as pd
from torch import nn

from ..errors import DissectError
from ..hooks import resolve_layers
from .fit import AxisFit, fit_axis, plain_axis
from .probe import LayerProbe, probe_layers

#: Canvas multiples tried for receptive fields larger than the image.
_CANVASES = (2, 4)


@dataclass(frozen=True)
class LayerGeometry:
    """Where a layer's feature positions sit in the input image.

    Attributes
    ----------
    name : str
        Module name.
    kind : str
        Module class name.
    output_shape : tuple of int
        Output shape for one image: (C, H, W) for spatial layers, (C,) otherwise.
    rf : tuple of int
        Theoretical receptive field (height, width) in input pixels; the whole input for
        non-spatial layers.
    stride : tuple of float
        Input pixels between neighbouring feature positions (y, x); 0 for non-spatial layers.
    offset : tuple of float
        Input coordinate (y, x) of the receptive-field centre of feature position (0, 0).
    rf_clipped : bool
        True when the receptive field is larger than the largest probe canvas, so ``rf`` is a
        lower bound.
    is_global : bool
        Every position depends on the whole image (see the module docstring); ``rf`` is the
        image size.
    global_reason : str
        The operation that made it global.
    problem : str
        Why the geometry could not be measured (then ``stride`` and ``offset`` are those of a
        plain resize); empty when it was.
    resampled : bool
        The layer comes after a resampling (upsampling) of activations: supports alternate
        around ``offset + i * stride``, and ``rf`` holds them all.
    extra_tokens : int or None
        For a token layer (B, N, C) read as C units over its patch grid: the leading tokens
        (class, register) left out of the grid; None for other layers.
    channels_last : bool
        The layer returns (B, H, W, C) maps, read as C units over H x W (``output_shape`` is
        (C, H, W)); hooks must be told (:class:`dissect.hooks.LayerTrace`'s ``channels_last``).
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    rf: tuple[int, int]
    stride: tuple[float, float]
    offset: tuple[float, float]
    rf_clipped: bool = False
    is_global: bool = False
    global_reason: str = ""
    problem: str = ""
    resampled: bool = False
    extra_tokens: int | None = None
    channels_last: bool = False

    @property
    def is_local(self) -> bool:
        """Whether each position depends exactly on its receptive-field box, the same way for
        every position (what the fast occlusion methods need)."""
        return self.is_spatial and not (self.is_global or self.problem or self.resampled)

    @property
    def is_spatial(self) -> bool:
        """Whether the output has spatial positions (C, H, W)."""
        return len(self.output_shape) == 3

    def center(self, y: float, x: float) -> tuple[float, float]:
        """Input pixel (y, x) at the centre of feature position (y, x)."""
        return (self.offset[0] + y * self.stride[0], self.offset[1] + x * self.stride[1])

    def to_dict(self) -> dict:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict) -> LayerGeometry:
        tuples = ("output_shape", "rf", "stride", "offset")
        known = {field.name for field in fields(cls)}
        return cls(
            **{
                key: tuple(value) if key in tuples else value
                for key, value in values.items()
                if key in known
            }
        )


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
    size = image_pair(image_size)
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
    size = image_pair(image_size)
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


def image_pair(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``224`` -> ``(224, 224)``; ``(240, 320)`` stays (height, width)."""
    if isinstance(image_size, int):
        return (image_size, image_size)
    height, width = (int(v) for v in image_size)
    return (height, width)


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
    for factor in _CANVASES:
        if not pending:
            break
        canvas = (size[0] * factor, size[1] * factor)
        try:
            larger = probe_layers(module, canvas, pending)
        except DissectError:  # a network that only runs at its own input size
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
    return {
        name: _geometry(name, probe, size, axes[name], name in fixed)
        for name, probe in probes.items()
    }


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
    name: str, probe: LayerProbe, size: tuple[int, int], axes: list[AxisFit], fixed: bool = False
) -> LayerGeometry:
    """``fixed``: the layer comes after a resize to a fixed size, so no larger canvas could
    measure what the image size leaves unsure."""
    shape = probe.shape
    if not axes:
        # No positions (or one): the whole input, whatever its size.
        centre = ((size[0] - 1) / 2, (size[1] - 1) / 2)
        return LayerGeometry(
            name, probe.kind, shape, size, (0.0, 0.0), centre,
            channels_last=bool(probe.channels_last),
        )  # fmt: skip
    stride = (axes[0].stride, axes[1].stride)
    offset = (axes[0].offset, axes[1].offset)
    if probe.global_reason:
        return LayerGeometry(
            name, probe.kind, shape, size, stride, offset, False, True, probe.global_reason,
            "", probe.resampled, probe.extra_tokens, bool(probe.channels_last),
        )  # fmt: skip
    problem = next((a.problem for a in axes if a.problem), "")
    if problem:
        problem = (
            f"geometry not measured: {problem} in the probe (does its value ignore the image?); "
            "stride and offset are a plain resize's"
        )
    elif fixed:
        problem = (
            "after a resize to a fixed size (its map does not grow with the input): measured "
            "at this input size only; rf is a lower bound"
            + (", stride and offset a plain resize's" if any(a.guessed for a in axes) else "")
        )
    elif any(a.guessed for a in axes):
        problem = (
            f"receptive field larger than {_CANVASES[-1]}x the image: rf is a lower bound and "
            "the offset a plain resize's"
        )
    rf = (axes[0].rf, axes[1].rf)
    clipped = any(a.clipped for a in axes)
    return LayerGeometry(
        name, probe.kind, shape, rf, stride, offset, clipped, False, "", problem, probe.resampled,
        probe.extra_tokens, bool(probe.channels_last),
    )  # fmt: skip
