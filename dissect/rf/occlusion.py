"""The shared set-up of every occlusion method: parameters, the noise occluder and its grid.

:class:`OcclusionConfig` holds the parameters of a measurement, :class:`Measurements` the (image,
unit, peak) triples to occlude, :func:`occluder_corners` the grid of occluder positions and
:func:`noise_patch` the seeded noise occluder that every method pastes with :func:`occlude`, so
their maps agree to float32 round-off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import OcclusionConfig
from ..errors import DissectError
from ..geometry import LayerGeometry
from ..images import Preprocess


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


@dataclass
class OcclusionJob:
    """Everything one occlusion method (:func:`~dissect.rf.naive.naive`,
    :func:`~dissect.rf.schedule.fast`) needs: its one argument.

    Attributes
    ----------
    module : nn.Module
        The network, in eval mode, on ``device``.
    layer : str
        The measured layer.
    geometry : LayerGeometry
        Geometry of ``layer`` at the input size of the images.
    load_image : callable
        ``load_image(index)``: the preprocessed (3, H, W) tensor of image ``index``.
    measurements : Measurements
        Images, units and peak positions to measure.
    patch : Tensor
        The (3, o, o) occluder on ``device``.
    config : OcclusionConfig
        Occluder size and stride, discrepancy measure, batch size.
    corners : (ndarray, ndarray)
        The occluder's top-left corners along y and along x.
    image_size : (int, int)
        The images' (height, width).
    device : torch.device
        Where the passes run.
    progress : bool
        Show a tqdm bar of occluded passes.
    grids : ndarray
        (M, ny, nx) float32 results, filled in place.
    done : int
        Fast methods: occluded passes of ``grids`` already finished, in pass order.
    checkpoint : callable, optional
        ``checkpoint(done)``, called after every batch (the naive method: with 0, as it cannot
        resume).
    method : str
        ``fast``, ``incremental`` or ``crop`` (see :func:`~dissect.rf.schedule.fast`).
    """

    module: torch.nn.Module
    layer: str
    geometry: LayerGeometry
    load_image: Callable[[int], torch.Tensor]
    measurements: Measurements
    patch: torch.Tensor
    config: OcclusionConfig
    corners: tuple[np.ndarray, np.ndarray]
    image_size: tuple[int, int]
    device: torch.device
    progress: bool
    grids: np.ndarray
    done: int = 0
    checkpoint: Callable[[int], None] | None = None
    method: str = "fast"


def occluder_corners(image_size: int, occluder: int, stride: int) -> np.ndarray:
    """Top-left coordinates of the occluder along one axis: ``0, stride, 2 * stride, ...``.

    The grid goes on until a window reaches the last pixel: where ``stride`` does not divide
    ``image_size - occluder``, that last window hangs past the border and is clipped to the
    image, so every pixel is occluded by some window.
    """
    count = -(-(image_size - occluder) // stride) + 1
    return np.arange(count, dtype=np.int64) * stride


def noise_patch(preprocess: Preprocess, occluder: int, seed: int) -> torch.Tensor:
    """The (3, occluder, occluder) noise occluder: uniform random pixels, normalised."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(3, occluder, occluder, generator=generator)
    mean = torch.tensor(preprocess.mean).view(3, 1, 1)
    std = torch.tensor(preprocess.std).view(3, 1, 1)
    return (pixels - mean) / std


def layout_of(geometry: LayerGeometry) -> list[str]:
    """LayerTrace's ``channels_last`` for the layer of ``geometry``."""
    return [geometry.name] if geometry.channels_last else []


def occlude(image: torch.Tensor, patch: torch.Tensor, y: int, x: int) -> torch.Tensor:
    """A copy of ``image`` with ``patch`` pasted at corner (y, x); parts outside are cut off."""
    occluded = image.clone()
    height, width = image.shape[1:]
    size_y, size_x = patch.shape[1:]
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + size_y, height), min(x + size_x, width)
    if top < bottom and left < right:
        occluded[:, top:bottom, left:right] = patch[:, top - y : bottom - y, left - x : right - x]
    return occluded


class Cost:
    """Says up front what an occlusion run costs, and after its first batches how long it takes.

    Parameters
    ----------
    total : int
        Occluded passes the method runs.
    done : int
        Passes already finished (a resumed run).
    measurements : Measurements
        What is measured.
    positions : int
        Occluder positions per image.
    method : str
        The method's name, for the message.
    show : bool
        Print the messages (with ``tqdm.write``, so progress bars stay intact).
    """

    #: Estimates above this many seconds come with ways to cut the cost.
    HINT_SECONDS = 60.0

    def __init__(self, total, done, measurements, positions, method, show):
        self.total, self.show, self.told = total, show, False
        self.first: tuple[float, int] | None = None
        if show:
            images = len(np.unique(measurements.image))
            tqdm.write(
                f"{total:,} occluded passes to run ({method} method; {len(measurements):,} "
                f"unit-image pairs on {images:,} distinct images, {positions:,} occluder "
                "positions each)"
            )

    def update(self, finished: int) -> None:
        """After a batch: after the second, print the estimated time left (and how to cut it).

        The rate is that of the batches after the first, which also loaded the images and ran
        their unoccluded forward.
        """
        if not self.show or self.told:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = (now, finished)
            return
        if finished <= self.first[1]:
            return
        self.told = True
        rate = (now - self.first[0]) / (finished - self.first[1])
        left = rate * (self.total - finished)
        message = (
            f"about {_duration(left)} left for these passes (estimated from the first batches)"
        )
        if left > self.HINT_SECONDS:
            message += (
                "; to cut it: fewer top images (--top), a coarser occluder grid (--stride: "
                "passes fall with its square), fewer units (--units) or layers (--layers), or "
                "a GPU (--device cuda)"
            )
        tqdm.write(message)


def _duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3.5 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
