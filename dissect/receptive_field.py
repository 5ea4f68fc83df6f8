"""Empirical receptive fields by occlusion (Zhou et al., ICLR 2015, section 3.2).

For a unit and each of its top images, a patch of random pixel noise (the *occluder*, ``occluder``
px square) is pasted at every position of a grid with step ``stride`` px (top-left corners
``0, stride, 2 * stride, ...`` as long as the patch fits in the image). For each position the
*discrepancy* is measured:

- ``peak`` (default): ``|a_occluded - a_original|`` of the unit at its peak feature position
  (the ``y, x`` stored with the top image);
- ``map``: ``sum |a_occluded - a_original|`` over every position of the unit's feature map.

That gives a discrepancy map per image on the grid of occluder centres. Each map is re-centred on
the input pixel of the unit's peak (:meth:`LayerGeometry.center`): it is sampled at integer pixel
offsets ``-R..R`` from that pixel by bilinear interpolation between occluder centres (zero beyond
the outermost centres). The re-centred maps are averaged over the unit's top images: that average
is the unit's empirical receptive field. Its size, ``rf_empirical``, is the side of the square with
the same area as the region where the map is at least ``fraction`` (0.5) of its maximum, counted in
input pixels. It includes the blur of the occluder itself (a unit that sees one pixel responds to
every occluder covering it). ``rf_theoretical`` is the side of the square with the area of the
theoretical receptive field (``rf`` of the layer geometry, padding pixels counted).

Speed. The naive method (:func:`discrepancy_maps` with ``method="naive"``) runs one full forward
per occluder position, per image, per unit. The fast method computes the same numbers with

- one set of occluded passes per *image*, shared by every unit whose top images include it;
- the forward stopped at the measured layer;
- occluders that cannot touch the theoretical receptive field of any measured position of the
  image skipped (their discrepancy is exactly 0 for a convolution/pooling stack);
- each occluded pass restricted to what the occluder can change, in one of two ways:

  - ``crop`` (any network): the pass runs on a crop of the image, the union of the receptive
    fields of the measured positions the occluder touches (for each image, one crop around all
    its peaks or one per peak, whichever covers fewer pixels). The crop's corner is a multiple
    of the layer stride so its feature grid coincides with the image's, and it is flush with the
    image border wherever such a receptive field reaches past it, so zero padding is the same as
    on the whole image; only positions whose whole receptive field lies in the crop are read;
  - ``incremental`` (networks that reach the layer through a plain chain of convolutions, max
    pooling and point-wise modules, checked on the first image): the unoccluded activations of
    every step are kept, and each step recomputes only a window of outputs, reading the kept
    activations around it with the step's own padding: the outputs whose inputs the occluder
    changed, or, when smaller, the outputs the measured peak positions depend on (for each
    image, one window around all its peaks or one per peak, whichever costs fewer
    multiply-adds). Window sides are fixed per step (the widest changed span over the occluder
    corners in use), so each step handles all passes of a batch at once: one gather of the kept
    activations, one paste of the recomputed window, one convolution or pooling;

  ``fast`` picks ``incremental`` when it applies and the crops would cover more than a quarter
  of the image on average, else ``crop``;
- occluded passes streamed in batches of ``batch_size`` whole-image equivalents (more passes per
  batch when they are smaller), never built all at once.

All methods use the same seeded noise patch, so their maps agree to float32 round-off.

Resume. Results are written per layer, atomically (``receptive_fields/<layer>.npz``). While a layer
runs, its occluded passes follow a fixed order; every ``checkpoint_seconds`` and on interruption
the finished passes are saved to ``receptive_fields/<layer>.partial.npz``. A rerun with the same
parameters skips finished layers and restarts a partial one after its last saved pass, so an
interruption (Ctrl-C) loses at most the batch in flight.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .data import Preprocess
from .dissection import Dissection, layer_file_name, pick_device
from .errors import DissectError
from .geometry import LayerGeometry
from .hooks import LayerTrace
from .io import read_npz, write_csv, write_npz
from .models import LoadedModel

#: Ways to compute discrepancy maps: fast (incremental where possible, else crop), or naive.
METHODS = ("fast", "incremental", "crop", "naive")
#: Discrepancy measures, see the module docstring.
DISCREPANCIES = ("peak", "map")
#: Folder (inside the dissection directory) of the per-layer map files.
MAPS_FOLDER = "receptive_fields"
#: Per-unit table and per-layer summary written by :func:`receptive_fields`.
UNITS_CSV = "receptive_fields.csv"
LAYERS_CSV = "receptive_fields_layers.csv"


@dataclass(frozen=True)
class OcclusionConfig:
    """Parameters of the occlusion measurement.

    Attributes
    ----------
    top : int
        Top images used per unit (at most the K kept by ``dissect run``).
    occluder : int
        Side of the square noise occluder, in input pixels.
    stride : int
        Step of the occluder grid, in input pixels.
    discrepancy : str
        ``peak`` or ``map`` (see the module docstring).
    fraction : float
        The empirical size counts pixels where the averaged map is at least this fraction of its
        maximum.
    batch_size : int
        Occluded whole images per forward (crops are batched by the same memory).
    seed : int
        Seed of the noise patch.
    """

    top: int = 20
    occluder: int = 11
    stride: int = 3
    discrepancy: str = "peak"
    fraction: float = 0.5
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top < 1:
            raise DissectError(f"--top must be at least 1, got {self.top}.")
        if self.occluder < 1:
            raise DissectError(f"--occluder must be at least 1 pixel, got {self.occluder}.")
        if self.stride < 1:
            raise DissectError(f"--stride must be at least 1 pixel, got {self.stride}.")
        if self.discrepancy not in DISCREPANCIES:
            raise DissectError(
                f"--discrepancy must be one of {', '.join(DISCREPANCIES)}, "
                f"got {self.discrepancy!r}."
            )
        if not 0 < self.fraction < 1:
            raise DissectError(
                f"--fraction must lie strictly between 0 and 1, got {self.fraction}."
            )
        if self.batch_size < 1:
            raise DissectError(f"--batch-size must be at least 1, got {self.batch_size}.")

    def check_image(self, image_size: int) -> None:
        """Refuse an occluder that does not fit in the network input."""
        if self.occluder > image_size:
            raise DissectError(
                f"--occluder {self.occluder} px is larger than the {image_size} px network "
                f"input; use at most {image_size}."
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Measurements:
    """The (image, unit, peak) triples to occlude, one per unit and top image.

    Attributes
    ----------
    image : ndarray of int, shape (M,)
        Image index in the data source.
    unit : ndarray of int, shape (M,)
        Unit (channel) of the layer.
    y, x : ndarray of int, shape (M,)
        Peak feature position of the unit on that image.
    """

    image: np.ndarray
    unit: np.ndarray
    y: np.ndarray
    x: np.ndarray

    def __len__(self) -> int:
        return len(self.image)

    @classmethod
    def from_topk(cls, topk: dict[str, np.ndarray], units: Sequence[int], top: int):
        """The first ``top`` images of each of ``units`` (empty slots, index -1, left out)."""
        stored = topk["index"].shape[1]
        if top > stored:
            raise DissectError(
                f"--top {top} exceeds the {stored} top images kept per unit; use --top {stored} "
                f"or less, or run dissect run again with --topk {top}."
            )
        rows = np.repeat(np.asarray(units, dtype=np.int64), top)
        cols = np.tile(np.arange(top), len(units))
        keep = topk["index"][rows, cols] >= 0
        rows, cols = rows[keep], cols[keep]
        return cls(
            topk["index"][rows, cols].astype(np.int64),
            rows,
            topk["y"][rows, cols].astype(np.int64),
            topk["x"][rows, cols].astype(np.int64),
        )


def occluder_corners(image_size: int, occluder: int, stride: int) -> np.ndarray:
    """Top-left coordinates of the occluder along one axis: ``0, stride, ...`` while it fits."""
    return np.arange(0, image_size - occluder + 1, stride, dtype=np.int64)


def noise_patch(preprocess: Preprocess, occluder: int, seed: int) -> torch.Tensor:
    """The (3, occluder, occluder) noise occluder: uniform random pixels, normalised."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(3, occluder, occluder, generator=generator)
    mean = torch.tensor(preprocess.mean).view(3, 1, 1)
    std = torch.tensor(preprocess.std).view(3, 1, 1)
    return (pixels - mean) / std


def discrepancy_maps(
    module: nn.Module,
    layer: str,
    geometry: LayerGeometry,
    load_image: Callable[[int], torch.Tensor],
    measurements: Measurements,
    patch: torch.Tensor,
    config: OcclusionConfig,
    *,
    method: str = "fast",
    device: torch.device | str = "cpu",
    progress: bool = True,
    grids: np.ndarray | None = None,
    done: int = 0,
    checkpoint: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Discrepancy of every measurement for every occluder position.

    Parameters
    ----------
    module : nn.Module
        The network, in eval mode.
    layer : str
        The measured layer (a name of ``module.named_modules()``).
    geometry : LayerGeometry
        Geometry of ``layer`` at the input size of the images.
    load_image : callable
        ``load_image(index)`` returns the preprocessed (3, S, S) tensor of image ``index``.
    measurements : Measurements
        Images, units and peak positions to measure.
    patch : Tensor
        The (3, o, o) occluder, see :func:`noise_patch`.
    config : OcclusionConfig
        Occluder size and stride, discrepancy measure, batch size.
    method : str
        ``fast`` (default): ``incremental`` where the network up to ``layer`` is a plain chain of
        convolutions, max pooling and point-wise modules, else ``crop`` (see the module
        docstring); ``naive``: one full forward per occluder position, per measurement, batched
        by ``config.batch_size``. All give the same maps up to float32 round-off.
    device : torch.device or str
        Where the forward passes run.
    progress : bool
        Show a tqdm bar of occluded passes.
    grids : ndarray, optional
        Fast method only: results of an interrupted run, shape (M, ny, nx), filled in place.
    done : int
        Fast method only: occluded passes of ``grids`` already finished, in pass order.
    checkpoint : callable, optional
        Fast method only: ``checkpoint(done)`` is called after every batch.

    Returns
    -------
    ndarray, shape (M, ny, nx)
        Float32 discrepancy per measurement and occluder position (rows: occluder corner
        ``y = 0, stride, ...``; columns likewise for ``x``).
    """
    if not geometry.is_spatial or len(geometry.output_shape) != 3:
        raise DissectError(
            f"layer {layer!r} has no spatial feature map; occlusion receptive fields need a "
            "convolution or pooling layer."
        )
    size = patch.shape[-1]
    image_size = _image_size(load_image, measurements)
    config.check_image(image_size)
    corners = occluder_corners(image_size, size, config.stride)
    shape = (len(measurements), len(corners), len(corners))
    if grids is None:
        grids = np.zeros(shape, dtype=np.float32)
    elif grids.shape != shape:
        raise ValueError(f"grids has shape {grids.shape}, expected {shape}")
    device = torch.device(device)
    module.to(device)
    patch = patch.to(device)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    args = (module, layer, geometry, load_image, measurements, patch, config, corners)
    with torch.inference_mode():
        if method == "naive":
            _naive(*args, device, progress, grids)
        else:
            _fast(*args, image_size, device, progress, grids, done, checkpoint, method)
    return grids


def _image_size(load_image, measurements) -> int:
    if len(measurements) == 0:
        raise DissectError("no top image to occlude: the selected units have no top images.")
    return int(load_image(int(measurements.image[0])).shape[-1])


def _occlude(image: torch.Tensor, patch: torch.Tensor, y: int, x: int) -> torch.Tensor:
    """A copy of ``image`` with ``patch`` pasted at corner (y, x); parts outside are cut off."""
    occluded = image.clone()
    height, width = image.shape[1:]
    size_y, size_x = patch.shape[1:]
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + size_y, height), min(x + size_x, width)
    if top < bottom and left < right:
        occluded[:, top:bottom, left:right] = patch[:, top - y : bottom - y, left - x : right - x]
    return occluded


def _naive(
    module, layer, geometry, load_image, measurements, patch, config, corners, device, progress,
    grids,
) -> None:  # fmt: skip
    """One full forward per occluder position, per measurement."""
    positions = [(int(y), int(x)) for y in corners for x in corners]
    bar = tqdm(total=len(measurements) * len(positions), unit="pass", disable=not progress)
    with LayerTrace(module, [layer]) as trace:
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
            grids[m] = torch.cat(values).reshape(len(corners), len(corners)).float().cpu().numpy()
    bar.close()


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
        if width >= image_size:
            start, stop = np.zeros_like(start), np.full_like(start, image_size)
        else:
            stop = start + width
            far = stop > image_size
            start[far] = (image_size - width) // self.jump * self.jump
            stop[far] = image_size
        return _AxisPlan(first, last, start, stop)


def _axes(geometry: LayerGeometry) -> tuple[_Axis, _Axis]:
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
        axes.append(_Axis(rf, int(jump), near, geometry.output_shape[1 + axis]))
    return axes[0], axes[1]


@dataclass(frozen=True)
class _Group:
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


def _group(image, members, box, axes, corners, occluder, image_size, measurements, peak):
    """The group reading feature positions in ``box`` (y_lo, y_hi, x_lo, x_hi) of one image."""
    plan_y = axes[0].plan(corners, occluder, image_size, box[0], box[1])
    plan_x = axes[1].plan(corners, occluder, image_size, box[2], box[3])
    if peak:
        ys, xs = measurements.y[members], measurements.x[members]
        hit_y = (ys[None] >= plan_y.first[:, None]) & (ys[None] <= plan_y.last[:, None])
        hit_x = (xs[None] >= plan_x.first[:, None]) & (xs[None] <= plan_x.last[:, None])
        hit = (hit_y.astype(np.float32) @ hit_x.T.astype(np.float32)) > 0
    else:
        hit = (plan_y.first <= plan_y.last)[:, None] & (plan_x.first <= plan_x.last)[None]
    box = tuple(int(value) for value in box)
    return _Group(image, members, plan_y, plan_x, np.argwhere(hit), box)


def _groups_for_image(
    image, members, axes, corners, occluder, image_size, measurements, peak, cost
):
    """How to occlude one image: the cheaper (by ``cost(group)``) of one group for the bounding
    box of all its peaks (the whole map for ``map``) and one group per distinct peak position."""
    args = (axes, corners, occluder, image_size, measurements, peak)
    if not peak:
        box = (0, axes[0].positions - 1, 0, axes[1].positions - 1)
        return [_group(image, members, box, *args)]
    ys, xs = measurements.y[members], measurements.x[members]
    together = [_group(image, members, (ys.min(), ys.max(), xs.min(), xs.max()), *args)]
    peaks, which = np.unique(np.column_stack([ys, xs]), axis=0, return_inverse=True)
    if len(peaks) == 1:
        return together
    apart = [
        _group(image, members[which.ravel() == p], (y, y, x, x), *args)
        for p, (y, x) in enumerate(peaks)
    ]
    apart_cost = sum(cost(group) for group in apart)
    return apart if apart_cost < sum(cost(group) for group in together) else together


#: Modules that act on every position separately (in eval mode): windows pass through them.
_POINTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
    nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity,
)  # fmt: skip


@dataclass(frozen=True)
class _Step:
    """One module of a plain chain, with its window arithmetic (per axis) if it is spatial."""

    module: nn.Module
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    fill: float = 0.0  # value of its padding: 0 for convolutions, -inf for max pooling

    @property
    def spatial(self) -> bool:
        return not isinstance(self.module, _POINTWISE)

    def reach(self, axis: int) -> int:
        return self.dilation[axis] * (self.kernel[axis] - 1)

    def apply(self, window: torch.Tensor) -> torch.Tensor:
        """The module on a window that already holds its padding.

        Convolutions run on contiguous (NCHW) windows, as a whole-image forward does, so their
        round-off matches it; max pooling (exact in any layout) runs channels last, where it is
        many times faster on CPU.
        """
        if isinstance(self.module, nn.Conv2d):
            conv = self.module
            return F.conv2d(
                window.contiguous(), conv.weight, conv.bias, self.stride, 0, self.dilation,
                conv.groups,
            )  # fmt: skip
        if isinstance(self.module, nn.MaxPool2d):
            window = window.contiguous(memory_format=torch.channels_last)
            return F.max_pool2d(window, self.kernel, self.stride, 0, self.dilation)
        return self.module.forward(window)


def _two(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _as_step(module: nn.Module) -> _Step | None:
    """The step of a supported module, else None."""
    if isinstance(module, _POINTWISE):
        return _Step(module)
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        if module.padding == "same":
            return None
        padding = (0, 0) if module.padding == "valid" else _two(module.padding)
        return _Step(
            module, _two(module.kernel_size), _two(module.stride), padding, _two(module.dilation)
        )
    if isinstance(module, nn.MaxPool2d) and not module.return_indices:
        return _Step(
            module, _two(module.kernel_size), _two(module.stride or module.kernel_size),
            _two(module.padding), _two(module.dilation), -math.inf,
        )  # fmt: skip
    return None


def _chain(module: nn.Module, layer: str, image: torch.Tensor) -> list[_Step] | None:
    """The modules from the input to ``layer``, if they form a plain chain of supported modules.

    Each module must take exactly the previous one's output (checked by identity during a
    forward) and recomputing ``layer`` module by module on ``image`` must give the traced value;
    otherwise (branches, functional calls in ``forward``, unsupported modules) None.
    """
    target = dict(module.named_modules())[layer]
    watched = {id(c): c for _, c in module.named_modules() if not list(c.children())}
    watched[id(target)] = target
    calls = []
    handles = [
        child.register_forward_hook(lambda c, i, o: calls.append((c, i, o)))
        for child in watched.values()
    ]
    start = image[None]
    try:
        with LayerTrace(module, [layer], stop=True) as trace:
            expected = trace(start)[layer]
    finally:
        for handle in handles:
            handle.remove()
    steps, previous = [], start
    for child, inputs, output in calls:
        if child is target and list(child.children()):
            if output is not previous:
                return None
            break
        step = _as_step(child)
        if step is None or len(inputs) != 1 or inputs[0] is not previous:
            return None
        steps.append(step)
        previous = output
        if child is target:
            break
    else:
        return None
    result = start
    for step in steps:
        result = step.module.forward(result)
    same = result.shape == expected.shape and torch.allclose(result, expected, 1e-4, 1e-5)
    return steps if same else None


@dataclass(frozen=True)
class _StepWindows:
    """Fixed window sizes of one spatial step for a given occluder size, per axis."""

    out: tuple[int, int]  # side of the output window computed
    needed: tuple[int, int]  # side of the input window read (padding included)
    length: tuple[int, int]  # output length of the step


class _Incremental:
    """Occluded passes that recompute, layer by layer, only the positions that matter.

    The base activations of each image are computed once. An occluded pass then runs each
    convolution / pooling step only on a window of its outputs, reading the base around it with
    the step's own padding: the window of outputs whose inputs the occluder changed (*forward*),
    or, when smaller, the window of outputs that the measured positions (a box of the layer)
    depend on (*backward*). Outside the forward window outputs equal the base; values outside
    the backward window may be stale but no measured position reads them.
    """

    def __init__(self, steps: list[_Step], image: torch.Tensor, occluder: int, corners: np.ndarray):
        self.steps = steps
        self.windows: list[_StepWindows | None] = []
        self.inputs: list[tuple[int, int, int]] = []  # (channels, height, width) per step
        # Changed span [lo, hi] of every occluder corner, per axis (the image is square).
        lo = [np.asarray(corners, dtype=np.int64)] * 2
        hi = [np.minimum(lo[0] + occluder, image.shape[-1]) - 1] * 2
        self.full = 0  # input positions read by a whole-image pass (all steps)
        x = image[None]
        for step in steps:
            self.inputs.append(tuple(x.shape[1:]))
            if not step.spatial:
                self.windows.append(None)
                x = step.module.forward(x)
                continue
            self.full += x.shape[2] * x.shape[3]
            x = step.module.forward(x)
            lengths = x.shape[2:]
            spans = [_changed_span(step, a, lo[a], hi[a], lengths[a]) for a in range(2)]
            lo, hi = [span[0] for span in spans], [span[1] for span in spans]
            # The forward window: wide enough for the widest span of the corners in use.
            out = tuple(max(int((hi[a] - lo[a]).max()) + 1, 1) for a in range(2))
            needed = tuple((out[a] - 1) * step.stride[a] + step.reach(a) + 1 for a in range(2))
            self.windows.append(_StepWindows(out, needed, tuple(lengths)))

    def plan(self, box: tuple[int, int, int, int]) -> tuple:
        """Per step (None if point-wise), per axis: (backward start or -1 for forward, size)."""
        lo, hi = [box[0], box[2]], [box[1], box[3]]
        plans: list = [None] * len(self.steps)
        for index in reversed(range(len(self.steps))):
            step, sizes = self.steps[index], self.windows[index]
            if sizes is None:
                continue
            axes = []
            for a in range(2):
                back = hi[a] - lo[a] + 1
                axes.append((lo[a], back) if back < sizes.out[a] else (-1, sizes.out[a]))
            plans[index] = tuple(axes)
            length = self.inputs[index][1:]
            lo = [max(0, lo[a] * step.stride[a] - step.padding[a]) for a in range(2)]
            hi = [
                min(length[a] - 1, hi[a] * step.stride[a] - step.padding[a] + step.reach(a))
                for a in range(2)
            ]
        return tuple(plans)

    def cost(self, plan: tuple) -> tuple[float, int]:
        """Multiply-adds of one pass with ``plan``, and input positions it reads."""
        macs, positions = 0.0, 0
        for step, axes, shape in zip(self.steps, plan, self.inputs, strict=True):
            if axes is None:
                continue
            out = axes[0][1] * axes[1][1]
            taps = step.kernel[0] * step.kernel[1]
            if isinstance(step.module, nn.Conv2d):
                conv = step.module
                macs += out * taps * conv.in_channels * conv.out_channels / conv.groups
            else:
                macs += out * taps * shape[0]
            positions += math.prod(
                (axes[a][1] - 1) * step.stride[a] + step.reach(a) + 1 for a in range(2)
            )
        return macs, positions

    def base(self, image: torch.Tensor) -> tuple[list[torch.Tensor | None], torch.Tensor]:
        """Padded inputs of the spatial steps, and the layer output, for one image."""
        padded: list[torch.Tensor | None] = []
        x = image[None]
        for step, windows in zip(self.steps, self.windows, strict=True):
            if windows is None:
                padded.append(None)
            else:
                pads = []
                for a in (1, 0):  # F.pad takes the last axis first
                    extra = (windows.length[a] - 1) * step.stride[a] + step.reach(a) + 1
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
        plans: list[tuple],
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Layer output windows (B, C, h, w) of occluded images and their starts (B, 2).

        ``bases[s]`` holds the padded base inputs of spatial step ``s`` for every image of the
        chunk, channels last (I, H, W, C), see :meth:`stack`; ``images[b]`` is item ``b``'s image
        in that stack, ``corners[b]`` its occluder corner (y, x) in input pixels, ``plans[b]``
        its :meth:`plan` (window sizes equal for all items). Each step gathers the windows of all
        items and pastes the recomputed windows into them in one indexing operation each.
        """
        count = len(corners)
        window = patch.unsqueeze(0).expand(count, -1, -1, -1)
        changed = np.asarray(corners, dtype=np.int64)  # first input position the occluder changed
        low = changed.copy()  # start of the window computed
        for index, (step, sizes) in enumerate(zip(self.steps, self.windows, strict=True)):
            if sizes is None:
                window = step.module.forward(window)
                continue
            axes = plans[0][index]
            first, start = np.empty_like(changed), np.empty_like(changed)
            for a in range(2):
                first[:, a] = _changed_span(step, a, changed[:, a], changed[:, a], 1 << 62)[0]
                if axes[a][0] < 0:  # forward window: from the first changed output
                    start[:, a] = np.minimum(first[:, a], sizes.length[a] - sizes.out[a])
                else:
                    start[:, a] = [plan[index][a][0] for plan in plans]
            out = (axes[0][1], axes[1][1])
            needed = [(out[a] - 1) * step.stride[a] + step.reach(a) + 1 for a in range(2)]
            need = start * np.array(step.stride)  # in padded coordinates
            offset = low + np.array(step.padding) - need  # computed window in gathered coords
            gathered = _gather_paste(bases[index], images, need, needed, window, offset)
            window, changed, low = step.apply(gathered), first, start
        return window, low

    def stack(self, prepared: list[tuple]) -> list[torch.Tensor | None]:
        """Per spatial step, the padded base inputs of several images (:meth:`base`), stacked
        channels last as (I, H, W, C) for :func:`_gather_paste`."""
        return [
            None if padded[0] is None else torch.stack(padded).permute(0, 2, 3, 1).contiguous()
            for padded in zip(*(base for base, _ in prepared), strict=True)
        ]


def _changed_span(step: _Step, axis: int, lo: np.ndarray, hi: np.ndarray, length: int):
    """The outputs ``[lo', hi']`` of ``step`` (along ``axis``, ``length`` of them) that read an
    input in ``[lo, hi]``: output ``i`` reads inputs ``i * stride - padding + 0..reach``."""
    stride, padding, reach = step.stride[axis], step.padding[axis], step.reach(axis)
    first = np.maximum(-((reach - lo - padding) // stride), 0)
    return first, np.minimum((hi + padding) // stride, length - 1)


def _gather_paste(
    base: torch.Tensor,
    images: np.ndarray,
    corner: np.ndarray,
    size: Sequence[int],
    window: torch.Tensor,
    offset: np.ndarray,
) -> torch.Tensor:
    """Windows (B, C, h, w) of ``size`` cut at ``corner`` (B, 2) from ``base[images[b]]`` (I, H,
    W, C), with ``window[b]`` (C, h', w') pasted at ``offset[b]`` (parts outside are cut off).

    Works on rows of channels: one ``index_select`` gathers every item's window, one
    ``index_copy_`` pastes every item's recomputed values.
    """
    device, channels = base.device, base.shape[3]
    count, (height, width), (inner_h, inner_w) = len(corner), size, window.shape[2:]
    rows = corner[:, :1] + np.arange(height)  # (B, h) rows of base
    cols = corner[:, 1:] + np.arange(width)
    images = np.asarray(images)[:, None, None]
    source = (images * base.shape[1] + rows[:, :, None]) * base.shape[2] + cols[:, None, :]
    gathered = base.reshape(-1, channels).index_select(
        0, torch.as_tensor(source.ravel(), device=device)
    )
    # Window position (i, j) of item b lands at (i + offset_y, j + offset_x) of its window.
    to_y = offset[:, :1] + np.arange(inner_h)  # (B, h')
    to_x = offset[:, 1:] + np.arange(inner_w)
    keep = ((to_y >= 0) & (to_y < height))[:, :, None] & ((to_x >= 0) & (to_x < width))[:, None, :]
    item = np.arange(count)[:, None, None]
    target = (item * height + to_y[:, :, None]) * width + to_x[:, None, :]
    origin = (item * inner_h + np.arange(inner_h)[None, :, None]) * inner_w + np.arange(inner_w)
    values = window.permute(0, 2, 3, 1).reshape(-1, channels)
    pick = torch.as_tensor(origin[keep], device=device)
    gathered.index_copy_(0, torch.as_tensor(target[keep], device=device), values[pick])
    return gathered.view(count, height, width, channels).permute(0, 3, 1, 2)


def _fast(
    module, layer, geometry, load_image, measurements, patch, config, corners, image_size,
    device, progress, grids, done, checkpoint, method,
) -> None:  # fmt: skip
    """Shared, stopped, skipped, cropped or incremental, batched passes (module docstring)."""
    axes = _axes(geometry)
    order = np.argsort(measurements.image, kind="stable")
    images, first_of = np.unique(measurements.image[order], return_index=True)
    bounds = np.append(first_of, len(order))
    peak = config.discrepancy == "peak"
    first = load_image(int(images[0])).to(device)
    steps = _chain(module, layer, first) if method != "crop" else None
    if method == "incremental" and steps is None:
        raise DissectError(
            f"layer {layer!r} is not reached through a plain chain of convolution, pooling and "
            "point-wise modules; use the fast or crop method."
        )

    def plan(cost: Callable[[_Group], float]) -> list[list[_Group]]:
        return [
            _groups_for_image(
                i,
                order[bounds[i] : bounds[i + 1]],
                axes,
                corners,
                patch.shape[-1],
                image_size,
                measurements,
                peak,
                cost,
            )  # fmt: skip
            for i in range(len(images))
        ]

    per_image = plan(_Group.cost)
    if steps is not None and method == "fast":
        # Crops are cheaper while they stay small; past a quarter of the image, go incremental.
        pixels = sum(group.cost() for groups in per_image for group in groups)
        passes = sum(len(group.jobs) for groups in per_image for group in groups)
        if pixels <= 0.25 * passes * image_size**2:
            steps = None
    incremental, plans, signatures, kinds = None, {}, {}, {}
    if steps is not None:
        incremental = _Incremental(steps, first, patch.shape[-1], corners)

        def window_plan(box: tuple) -> tuple:
            if box not in plans:
                plans[box] = incremental.plan(box)
                signature = tuple(
                    a and (a[0][0] < 0, a[0][1], a[1][0] < 0, a[1][1]) for a in plans[box]
                )
                signatures[box] = kinds.setdefault(signature, len(kinds))
            return plans[box]

        per_image = plan(lambda g: len(g.jobs) * incremental.cost(window_plan(g.box))[0])
        for group in (group for groups in per_image for group in groups):
            window_plan(group.box)
    total = sum(len(group.jobs) for groups in per_image for group in groups)
    bar = tqdm(total=total, initial=done, unit="pass", disable=not progress)
    chunk_images = max(1, config.batch_size // (1 if incremental is None else 8))
    position = 0
    with LayerTrace(module, [layer], stop=True) as trace:
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
            else:  # passes with the same window sizes
                shapes = np.array([(signatures[groups[k].box], 0) for k, _, _ in jobs])
                shapes = shapes.reshape(-1, 2)
            ranking = np.lexsort((jobs[:, 2], jobs[:, 1], jobs[:, 0], shapes[:, 1], shapes[:, 0]))
            jobs, shapes = jobs[ranking], shapes[ranking]
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
                    limit = config.batch_size * image_size**2 // int(np.prod(shapes[index]))
                else:
                    reads = incremental.cost(plans[groups[jobs[index, 0]].box])[1]
                    limit = config.batch_size * incremental.full // max(reads, 1)
                end = index + 1
                while end < len(jobs) and end - index < limit:
                    if (shapes[end] != shapes[index]).any():
                        break
                    end += 1
                k, r, c = jobs[index:end].T
                if incremental is None:
                    batch = [(groups[g], row, col) for g, row, col in jobs[index:end]]
                    crops = [tensors[slots[g.image]] for g, _, _ in batch]
                    maps, starts = _crop_pass(batch, crops, patch, corners, axes, trace, layer)
                else:
                    maps, starts = incremental.run(
                        bases,
                        targets.slot[k],
                        np.column_stack([corners[r], corners[c]]),
                        patch,
                        [plans[groups[g].box] for g in k],
                    )
                _record(grids, maps, starts, targets, k, r, c)
                bar.update(len(k))
                index = end
                if checkpoint is not None:
                    checkpoint(position + index)
            position += len(jobs)
    bar.close()


def _crop_pass(batch, images, patch, corners, axes, trace, layer):
    """Layer output of each occluded crop of ``batch`` (``images[b]``: item ``b``'s image), and
    its start in layer positions."""
    crops, starts = [], []
    for (group, r, c), image in zip(batch, images, strict=True):
        y0, x0 = int(group.plan_y.start[r]), int(group.plan_x.start[c])
        window = image[:, y0 : group.plan_y.stop[r], x0 : group.plan_x.stop[c]]
        crops.append(_occlude(window, patch, int(corners[r]) - y0, int(corners[c]) - x0))
        starts.append((y0 // axes[0].jump, x0 // axes[1].jump))
    return trace(torch.stack(crops))[layer], np.array(starts)


class _Targets:
    """What the occluded passes of a chunk of groups are read for, as arrays over its groups.

    Parameters
    ----------
    groups : list of _Group
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
        index = [
            torch.as_tensor(v, device=device)
            for v in (
                item,
                targets.unit[member],
                ys[hit] - starts[item, 0],
                xs[hit] - starts[item, 1],
            )
        ]
        diff = (
            maps[tuple(index)] - targets.reference[torch.as_tensor(member, device=device)]
        ).abs()
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


def average_maps(
    grids: np.ndarray,
    measurements: Measurements,
    units: Sequence[int],
    geometry: LayerGeometry,
    config: OcclusionConfig,
    radius: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-centre each discrepancy map on its peak and average per unit.

    Parameters
    ----------
    grids : ndarray, shape (M, ny, nx)
        Discrepancy maps from :func:`discrepancy_maps`.
    measurements : Measurements
        What each map measured.
    units : sequence of int
        Units to average (in this order).
    geometry : LayerGeometry
        Geometry of the layer (peak feature position to input pixel).
    config : OcclusionConfig
        Occluder size and stride (where the map's samples sit in the image).
    radius : int
        The averaged maps cover pixel offsets ``-radius..radius`` from the peak pixel.

    Returns
    -------
    maps : ndarray, shape (U, 2 * radius + 1, 2 * radius + 1)
        Float32 averaged maps, row = vertical offset, column = horizontal offset.
    counts : ndarray of int, shape (U,)
        Images averaged per unit (0: the map is all zero).
    """
    side = 2 * radius + 1
    maps = np.zeros((len(units), side, side), dtype=np.float32)
    counts = np.zeros(len(units), dtype=np.int64)
    first = (config.occluder - 1) / 2
    for row, unit in enumerate(units):
        members = np.flatnonzero(measurements.unit == unit)
        if len(members) == 0:
            continue
        centres = np.array([geometry.center(measurements.y[m], measurements.x[m]) for m in members])
        weights_y = _interpolation(centres[:, 0], first, config.stride, grids.shape[1], radius)
        weights_x = _interpolation(centres[:, 1], first, config.stride, grids.shape[2], radius)
        recentred = np.einsum(
            "mai,mij,mbj->mab", weights_y, grids[members].astype(np.float64), weights_x
        )
        maps[row] = recentred.mean(0)
        counts[row] = len(members)
    return maps, counts


def _interpolation(centres, first, step, samples, radius) -> np.ndarray:
    """(M, 2R+1, samples) linear-interpolation weights from grid samples to pixel offsets."""
    offsets = np.arange(-radius, radius + 1)
    grid = (centres[:, None] + offsets[None] - first) / step
    low = np.floor(grid).astype(np.int64)
    frac = grid - low
    weights = np.zeros((len(centres), len(offsets), samples))
    m, a = np.indices(low.shape)
    for index, weight in ((low, 1 - frac), (low + 1, frac)):
        inside = (index >= 0) & (index < samples)
        np.add.at(weights, (m[inside], a[inside], index[inside]), weight[inside])
    return weights


def rf_size(maps: np.ndarray, fraction: float) -> np.ndarray:
    """Side of the square with the area of the region where a map is >= ``fraction`` x its max.

    Parameters
    ----------
    maps : ndarray, shape (U, H, W)
        Averaged maps on a 1-pixel grid.
    fraction : float
        Threshold as a fraction of each map's maximum.

    Returns
    -------
    ndarray, shape (U,)
        Size in input pixels; NaN where a map is all zero (the unit never responded).
    """
    peak = maps.reshape(len(maps), -1).max(1)
    area = (maps >= fraction * peak[:, None, None]).reshape(len(maps), -1).sum(1)
    return np.where(peak > 0, np.sqrt(area), np.nan)


def map_radius(geometry: LayerGeometry, config: OcclusionConfig, image_size: int) -> int:
    """Half-side of the averaged maps: every occluder that can matter, within the image."""
    if config.discrepancy == "map":
        return image_size - 1
    reach = (max(geometry.rf) - 1) / 2 + config.occluder + config.stride
    return int(min(image_size - 1, math.ceil(reach)))


def theoretical_size(geometry: LayerGeometry) -> float:
    """Side of the square with the area of the theoretical receptive field."""
    return float(math.sqrt(geometry.rf[0] * geometry.rf[1]))


def receptive_fields(
    dissection: str | Path | Dissection,
    layers: Sequence[str] | None = None,
    units: Sequence[int] | None = None,
    config: OcclusionConfig | None = None,
    *,
    model: LoadedModel | None = None,
    device: str = "auto",
    progress: bool = True,
    checkpoint_seconds: float = 60.0,
) -> pd.DataFrame:
    """Measure empirical receptive fields of units of a dissection and write them to it.

    Parameters
    ----------
    dissection : path-like or Dissection
        A dissection directory (``dissect run``).
    layers : sequence of str, optional
        Layers to measure (default: every dissected layer).
    units : sequence of int, optional
        Units to measure in each layer (default: all).
    config : OcclusionConfig, optional
        Occlusion parameters (default: 11 px occluder, stride 3, top 20 images, ``peak``).
    model : LoadedModel, optional
        The dissected model, when it cannot be reloaded from the manifest's MODEL spec.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    progress : bool
        Show progress bars.
    checkpoint_seconds : float
        How often unfinished work of a layer is saved.

    Returns
    -------
    DataFrame
        One row per unit: ``layer, unit, rf_empirical, rf_theoretical, n_images, ratio,
        max_discrepancy, rf_theoretical_h, rf_theoretical_w``. The same rows (plus those of
        layers measured earlier) are written to ``receptive_fields.csv``; the per-layer summary to
        ``receptive_fields_layers.csv``, the maps to ``receptive_fields/<layer>.npz``.
    """
    config = config or OcclusionConfig()
    dissection = dissection if isinstance(dissection, Dissection) else Dissection(dissection)
    layers = dissection.check_layers(layers)
    chosen = {layer: dissection.check_units(layer, units) for layer in layers}
    preprocess = dissection.preprocess
    config.check_image(preprocess.image_size)
    for layer in layers:
        Measurements.from_topk(dissection.topk(layer), chosen[layer][:1], config.top)
    loaded = model or dissection.load_model()
    source = dissection.open_data()
    torch_device = pick_device(device)
    distributed.init(torch_device)
    torch_device = distributed.local_device(torch_device)
    patch = noise_patch(preprocess, config.occluder, config.seed)

    def load_image(index: int) -> torch.Tensor:
        return preprocess.tensor(source.read_rgb(index))

    frames = []
    for layer in layers:
        # Under torchrun each rank measures its share of the units (they are independent) into a
        # file of its own; rank 0 joins them into the file one process would write.
        mine = distributed.shard(chosen[layer])
        final = maps_path(dissection, layer)
        if distributed.world_size() > 1:
            final = final.with_name(f"{final.stem}.rank{distributed.rank()}.npz")
        arrays = None
        if mine:
            arrays = _measure_layer(
                dissection, layer, mine, config, loaded.module, load_image, patch,
                torch_device, progress and distributed.is_main(), checkpoint_seconds, final,
            )  # fmt: skip
        if distributed.world_size() > 1:
            parts = distributed.gather(arrays)
            if distributed.is_main():
                arrays = _join([part for part in parts if part is not None], config, chosen[layer])
                write_npz(maps_path(dissection, layer), **arrays)
            distributed.barrier()
            final.unlink(missing_ok=True)
        if distributed.is_main():
            frames.append(_rows(layer, dissection.geometry(layer), arrays))
    if not distributed.is_main():
        distributed.barrier()  # wait for rank 0's tables
        return pd.read_csv(dissection.path(UNITS_CSV), dtype={"layer": str})
    table = pd.concat(frames, ignore_index=True)
    path = dissection.path(UNITS_CSV)
    if path.is_file():
        previous = pd.read_csv(path, dtype={"layer": str})
        table = pd.concat([previous[~previous["layer"].isin(layers)], table], ignore_index=True)
    depth = {name: position for position, name in enumerate(dissection.layers)}
    table = table.sort_values(
        ["layer", "unit"], key=lambda c: c.map(depth) if c.name == "layer" else c
    )
    table = table.reset_index(drop=True)
    write_csv(path, table)
    write_csv(dissection.path(LAYERS_CSV), layer_summary(table))
    distributed.barrier()
    return table


def _params(config: OcclusionConfig, units: Sequence[int]) -> str:
    """What a layer's maps file was measured with (a rerun with the same reuses it)."""
    return json.dumps({"config": config.to_dict(), "units": list(units)}, sort_keys=True)


def _join(parts: list[dict], config: OcclusionConfig, units: Sequence[int]) -> dict:
    """The maps arrays of several ranks' units, in rank (= unit list) order."""
    joined = {key: np.concatenate([part[key] for part in parts]) for key in _PER_UNIT}
    shared = {key: parts[0][key] for key in ("radius", "rf_theoretical")}
    return {**joined, **shared, "params": np.str_(_params(config, units))}


#: Arrays of a layer's maps file with one entry per unit.
_PER_UNIT = ("maps", "units", "n_images", "rf_empirical", "max_discrepancy")


def layer_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per layer (as the paper's Table 1): theoretical size and empirical mean and std.

    Parameters
    ----------
    table : DataFrame
        Per-unit rows as returned by :func:`receptive_fields`.

    Returns
    -------
    DataFrame
        ``layer, rf_theoretical, rf_empirical_mean, rf_empirical_std, n_units, ratio`` (ratio:
        empirical mean over theoretical), layers in order of first appearance.
    """
    rows = []
    for layer, group in table.groupby("layer", sort=False):
        sizes = group["rf_empirical"].dropna()
        theoretical = float(group["rf_theoretical"].iloc[0])
        mean = float(sizes.mean()) if len(sizes) else math.nan
        rows.append(
            {
                "layer": layer,
                "rf_theoretical": theoretical,
                "rf_empirical_mean": mean,
                "rf_empirical_std": float(sizes.std(ddof=0)) if len(sizes) else math.nan,
                "n_units": len(sizes),
                "ratio": mean / theoretical,
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "layer", "rf_theoretical", "rf_empirical_mean", "rf_empirical_std", "n_units", "ratio",
        ],
    )  # fmt: skip


def maps_path(dissection: Dissection, layer: str) -> Path:
    """Where the averaged maps of ``layer`` are kept."""
    return dissection.path(MAPS_FOLDER, f"{layer_file_name(layer)}.npz")


def load_maps(dissection: str | Path | Dissection, layer: str) -> dict[str, np.ndarray]:
    """Read ``receptive_fields/<layer>.npz``: ``maps, units, n_images, rf_empirical, radius``...

    Raises
    ------
    DissectError
        If the layer has not been measured.
    """
    dissection = dissection if isinstance(dissection, Dissection) else Dissection(dissection)
    path = maps_path(dissection, layer)
    if not path.is_file():
        raise DissectError(
            f"no receptive fields measured for layer {layer!r} in {str(dissection.directory)!r}; "
            f"run dissect rf {dissection.directory} --layers {layer}."
        )
    return read_npz(path)


def _measure_layer(
    dissection, layer, units, config, module, load_image, patch, device, progress,
    checkpoint_seconds, final,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Measure one layer's units (or reuse the finished file ``final``); return its arrays."""
    geometry = dissection.geometry(layer)
    params = _params(config, units)
    if final.is_file():
        stored = read_npz(final)
        if str(stored["params"]) == params:
            return stored
    measurements = Measurements.from_topk(dissection.topk(layer), units, config.top)
    partial = final.with_name(final.stem + ".partial.npz")
    grids, done = None, 0
    if partial.is_file():
        stored = read_npz(partial)
        if str(stored["params"]) == params:
            grids, done = stored["grids"], int(stored["done"])
    state = {"done": done, "saved": time.monotonic()}

    def save() -> None:
        write_npz(partial, grids=result, done=np.int64(state["done"]), params=np.str_(params))
        state["saved"] = time.monotonic()

    def checkpoint(finished: int) -> None:
        state["done"] = finished
        if time.monotonic() - state["saved"] > checkpoint_seconds:
            save()

    image_size = dissection.preprocess.image_size
    corners = len(occluder_corners(image_size, config.occluder, config.stride))
    result = grids if grids is not None else np.zeros((len(measurements), corners, corners), "f4")
    if progress:
        print(f"dissect rf: layer {layer}, {len(units)} unit(s), {len(measurements)} top images")
    try:
        discrepancy_maps(
            module, layer, geometry, load_image, measurements, patch, config,
            device=device, progress=progress, grids=result, done=done, checkpoint=checkpoint,
        )  # fmt: skip
    except KeyboardInterrupt:
        save()
        raise
    radius = map_radius(geometry, config, image_size)
    maps, counts = average_maps(result, measurements, units, geometry, config, radius)
    arrays = {
        "maps": maps,
        "units": np.asarray(units, dtype=np.int64),
        "n_images": counts,
        "rf_empirical": rf_size(maps, config.fraction).astype(np.float32),
        "max_discrepancy": maps.reshape(len(maps), -1).max(1),
        "radius": np.int64(radius),
        "rf_theoretical": np.asarray(geometry.rf, dtype=np.int64),
        "params": np.str_(params),
    }
    write_npz(final, **arrays)
    if partial.is_file():
        partial.unlink()
    return arrays


def _rows(layer: str, geometry: LayerGeometry, stored: dict[str, np.ndarray]) -> pd.DataFrame:
    theoretical = theoretical_size(geometry)
    return pd.DataFrame(
        {
            "layer": layer,
            "unit": stored["units"],
            "rf_empirical": stored["rf_empirical"].astype(np.float64),
            "rf_theoretical": theoretical,
            "n_images": stored["n_images"],
            "ratio": stored["rf_empirical"].astype(np.float64) / theoretical,
            "max_discrepancy": stored["max_discrepancy"].astype(np.float64),
            "rf_theoretical_h": geometry.rf[0],
            "rf_theoretical_w": geometry.rf[1],
        }
    )
