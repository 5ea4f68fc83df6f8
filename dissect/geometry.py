"""Theoretical receptive field, stride (jump) and offset of every layer, probed from the network.

The geometry is measured on the network itself, so it holds for any architecture (branches,
dilation, ``ceil_mode`` pooling, functional calls in ``forward``), not only a list of layer types.
The probe runs the network under a :class:`~torch.overrides.TorchFunctionMode` that makes every
connection count: convolutions and linear maps get positive averaging weights and no bias, max
pooling becomes average pooling over the same windows, normalisations become the identity. On an
all-ones input every activation is then positive, so the gradient of one feature position with
respect to the input is non-zero exactly on the pixels it is connected to: its theoretical
receptive field.

Conventions (per axis, input pixel coordinates):

- ``stride``: input pixels between neighbouring feature positions (the "jump");
- ``offset``: input coordinate of the centre of the receptive field of feature position 0, so
  position ``i`` is centred at ``offset + i * stride`` (may be negative: padding);
- ``rf``: side of the receptive field, counting pixels that fall in the padding (unclipped), as in
  the usual ``r_l = r_{l-1} + (k_l - 1) * jump_{l-1}`` recursion.

The probe reads the far edge of the first feature positions and the near edge of the last ones,
which stay inside the image for receptive fields up to about twice the image; larger ones are
probed on a larger canvas (up to 4x), and flagged ``rf_clipped`` if still larger.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import DissectError
from .hooks import LayerTrace, resolve_layers

#: Layers probed together in one forward/backward (4 probe images each).
_PROBE_CHUNK = 8
#: Largest canvas tried, as a multiple of the image size.
_MAX_CANVAS = 4


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
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    rf: tuple[int, int]
    stride: tuple[float, float]
    offset: tuple[float, float]
    rf_clipped: bool = False

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
        return cls(
            **{key: tuple(value) if key in tuples else value for key, value in values.items()}
        )


def layer_geometry(
    module: nn.Module, layers: Sequence[str], image_size: int
) -> dict[str, LayerGeometry]:
    """Probe the geometry of ``layers`` for square inputs of side ``image_size``.

    Parameters
    ----------
    module : nn.Module
        The network, in eval mode (it is not modified).
    layers : sequence of str
        Names from ``module.named_modules()``.
    image_size : int
        Side of the square input, in pixels.

    Returns
    -------
    dict of str to LayerGeometry
        In the order of ``layers``.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3))
    >>> layer_geometry(net, ["2"], 32)["2"].rf
    (8, 8)
    """
    layers = resolve_layers(module, layers)
    shapes, kinds = _output_shapes(module, image_size)
    unreached = [name for name in layers if name not in shapes]
    if unreached:
        raise DissectError(
            f"layer(s) {', '.join(unreached)} were never reached by the forward pass "
            "(defined but unused in forward?); pick layers the network runs."
        )
    # A 1x1 map (global pooling) sees the whole input whatever its size: nothing to probe.
    spatial = [name for name in layers if len(shapes[name]) == 3 and shapes[name][1:] != (1, 1)]
    probed = _probe(module, spatial, image_size)
    result = {}
    for name in layers:
        if name in probed:
            rf, stride, offset, clipped = probed[name]
        else:
            rf, stride, offset = (image_size,) * 2, (0.0, 0.0), ((image_size - 1) / 2,) * 2
            clipped = False
        result[name] = LayerGeometry(name, kinds[name], shapes[name], rf, stride, offset, clipped)
    return result


def geometry_table(module: nn.Module, image_size: int = 224) -> pd.DataFrame:
    """Every addressable layer with its output shape and receptive-field geometry.

    Parameters
    ----------
    module : nn.Module
        The network.
    image_size : int
        Side of the square input, in pixels.

    Returns
    -------
    DataFrame
        Columns ``layer, type, output_shape, rf, stride, offset`` in forward order; layers the
        forward never reaches (or that return no tensor) come last with empty geometry.
    """
    shapes, kinds = _output_shapes(module, image_size)
    reached = [name for name in shapes if len(shapes[name]) in (1, 3)]
    geometry = layer_geometry(module, reached, image_size) if reached else {}
    rows = []
    for name in reached:
        g = geometry[name]
        rows.append(
            {
                "layer": name,
                "type": g.kind,
                "output_shape": "x".join(map(str, g.output_shape)),
                "rf": _pair(g.rf) + ("+" if g.rf_clipped else ""),
                "stride": _pair(g.stride) if g.is_spatial else "-",
                "offset": _pair(g.offset) if g.is_spatial else "-",
            }
        )
    for name, child in module.named_modules():
        if name and name not in reached:
            kind = type(child).__name__
            rows.append(
                {
                    "layer": name,
                    "type": kind,
                    "output_shape": shapes.get(name, "not run"),
                    "rf": "",
                    "stride": "",
                    "offset": "",
                }
            )
    return pd.DataFrame(rows, columns=["layer", "type", "output_shape", "rf", "stride", "offset"])


def _pair(values: Sequence[float]) -> str:
    text = [f"{value:g}" for value in values]
    return text[0] if text[0] == text[1] else f"{text[0]}x{text[1]}"


def _output_shapes(module: nn.Module, image_size: int) -> tuple[dict, dict]:
    """Per-image output shape and class name of every module the forward reaches, in order."""
    shapes: dict[str, tuple[int, ...] | str] = {}
    kinds = {name: type(child).__name__ for name, child in module.named_modules() if name}
    handles = []

    def record(name: str):
        def hook(_module, _inputs, output):
            if name not in shapes:
                shapes[name] = (
                    tuple(output.shape[1:])
                    if isinstance(output, torch.Tensor)
                    else type(output).__name__
                )

        return hook

    for name, child in module.named_modules():
        if name:
            handles.append(child.register_forward_hook(record(name)))
    device = _device_of(module)
    try:
        with torch.inference_mode():
            module(torch.zeros(1, 3, image_size, image_size, device=device))
    except Exception as error:  # noqa: BLE001 - any failure of the user's forward
        raise DissectError(
            f"the network fails on a 1x3x{image_size}x{image_size} input ({error}); "
            "check --image-size."
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    return shapes, kinds


def _device_of(module: nn.Module) -> torch.device:
    for tensor in [*module.parameters(), *module.buffers()]:
        return tensor.device
    return torch.device("cpu")


def _probe(module: nn.Module, layers: list[str], image_size: int) -> dict[str, tuple]:
    """Geometry of spatial ``layers``, probed in chunks, enlarging the canvas where needed."""
    results: dict[str, tuple] = {}
    canvas = image_size
    pending = list(layers)
    while pending:
        clipped = []
        for start in range(0, len(pending), _PROBE_CHUNK):
            chunk = pending[start : start + _PROBE_CHUNK]
            for name, (edges, shape) in _probe_edges(module, chunk, canvas).items():
                geometry = _from_edges(edges, shape, canvas)
                results[name] = geometry
                if geometry[3]:
                    clipped.append(name)
        if canvas * 2 > _MAX_CANVAS * image_size:
            break
        pending, canvas = clipped, canvas * 2
    return results


def _probe_edges(module: nn.Module, layers: list[str], canvas: int) -> dict[str, tuple]:
    """For each layer: receptive-field edges of four probe positions, and the map shape."""
    device = _device_of(module)
    count = 4 * len(layers)
    image = torch.ones(count, 3, canvas, canvas, device=device, requires_grad=True)
    shapes = {}
    with torch.enable_grad(), _ConnectivityMode():
        with LayerTrace(module, layers, stop=True, clone=False, detach=False) as trace:
            outputs = trace(image)
        total = image.new_zeros(())
        for j, name in enumerate(layers):
            out = outputs[name]
            height, width = out.shape[2:]
            shapes[name] = (height, width)
            for k, (y, x) in enumerate(_probe_positions(height, width)):
                total = total + out[4 * j + k, :, y, x].sum()
        (grad,) = torch.autograd.grad(total, image)
    connected = grad.abs().sum(1) > 0  # (count, canvas, canvas)
    rows, cols = connected.any(2), connected.any(1)
    edges = {}
    for j, name in enumerate(layers):
        per_probe = []
        for k in range(4):
            ys = torch.nonzero(rows[4 * j + k]).flatten()
            xs = torch.nonzero(cols[4 * j + k]).flatten()
            if len(ys) == 0:
                raise DissectError(
                    f"layer {name!r}: no input pixel reaches it in the probe; its geometry "
                    "cannot be measured (does its forward ignore the image?)."
                )
            per_probe.append(((int(ys[0]), int(ys[-1])), (int(xs[0]), int(xs[-1]))))
        edges[name] = per_probe
    return {name: (edges[name], shapes[name]) for name in layers}


def _probe_positions(height: int, width: int) -> list[tuple[int, int]]:
    """First two and last two positions along the diagonal (clamped for small maps)."""
    ys = [0, min(1, height - 1), max(height - 2, 0), height - 1]
    xs = [0, min(1, width - 1), max(width - 2, 0), width - 1]
    return list(zip(ys, xs, strict=True))


def _from_edges(edges: list, shape: tuple[int, int], canvas: int) -> tuple:
    """Receptive field, stride and offset from the probe edges, per axis."""
    rf, stride, offset, clipped = [], [], [], False
    for axis in range(2):
        positions = _probe_positions(*shape)
        pos = [p[axis] for p in positions]
        lo = [e[axis][0] for e in edges]
        hi = [e[axis][1] for e in edges]
        last = canvas - 1
        # Far edges of the first positions and near edges of the last ones are unclipped
        # as long as they stay strictly inside the canvas.
        axis_clipped = hi[0] >= last or lo[3] <= 0
        if pos[1] > pos[0] and hi[1] < last:
            jump = (hi[1] - hi[0]) / (pos[1] - pos[0])
        elif pos[3] > pos[2] and lo[2] > 0:
            jump = (lo[3] - lo[2]) / (pos[3] - pos[2])
        else:  # no two unclipped edges: measure again on a larger canvas
            jump, axis_clipped = float(canvas), True
        size = hi[0] - lo[3] + (pos[3] - pos[0]) * jump + 1
        if axis_clipped:
            size = max(size, hi[0] - lo[0] + 1, hi[3] - lo[3] + 1)
        rf.append(int(round(size)))
        stride.append(float(jump))
        offset.append(float(hi[0] - pos[0] * jump - (size - 1) / 2))
        clipped = clipped or axis_clipped
    return tuple(rf), tuple(stride), tuple(offset), clipped


class _ConnectivityMode(TorchFunctionMode):
    """Make every connection of the network carry a positive signal (see module docstring)."""

    _identity = {
        "batch_norm",
        "group_norm",
        "layer_norm",
        "instance_norm",
        "local_response_norm",
        "dropout",
        "dropout2d",
        "alpha_dropout",
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        if name in self._identity:
            return args[0] if args else kwargs["input"]
        if name in ("conv1d", "conv2d", "conv3d", "linear") or name.startswith("conv_transpose"):
            args, kwargs = _positive_weights(args, kwargs, transposed="transpose" in name)
        elif name in ("max_pool2d", "max_pool2d_with_indices", "_max_pool2d"):
            return _dense_max_pool(func, args, kwargs)
        elif name in ("adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"):
            pooled = func(*args, **kwargs)
            dense = F.adaptive_avg_pool2d(args[0], _first(pooled).shape[-2:])
            return (dense, pooled[1]) if isinstance(pooled, tuple) else dense
        return func(*args, **kwargs)


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _positive_weights(args: tuple, kwargs: dict, transposed: bool) -> tuple[tuple, dict]:
    """Replace weight by a positive average over its fan-in, and drop the bias."""
    args = list(args)
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    fan_in = weight.shape[0 if transposed else 1] * math.prod(weight.shape[2:])
    ones = torch.full_like(weight, 1.0 / max(fan_in, 1))
    if len(args) > 1:
        args[1] = ones
    else:
        kwargs["weight"] = ones
    if len(args) > 2:
        args[2] = None
    kwargs.pop("bias", None)
    return tuple(args), kwargs


def _max_pool_params(
    input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False
):
    return kernel_size, stride, padding, dilation


def _dense_max_pool(func, args: tuple, kwargs: dict):
    """Average over exactly the windows a max pool would use (same output shape)."""
    pooled = func(*args, **kwargs)
    real = _first(pooled)
    x = args[0] if args else kwargs["input"]
    kernel, stride, padding, dilation = (
        _as_pair(value) for value in _max_pool_params(*args, **kwargs)
    )
    stride = stride if stride != (None, None) and stride != () else kernel
    channels = x.shape[1]
    weight = x.new_full((channels, 1, *kernel), 1.0 / math.prod(kernel))
    padded = F.pad(x, (padding[1], padding[1] + stride[1], padding[0], padding[0] + stride[0]))
    dense = F.conv2d(padded, weight, stride=stride, dilation=dilation, groups=channels)
    dense = dense[..., : real.shape[-2], : real.shape[-1]]
    return (dense, pooled[1]) if isinstance(pooled, tuple) else dense


def _as_pair(value) -> tuple:
    if value is None:
        return (None, None)
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    return value * 2 if len(value) == 1 else value
