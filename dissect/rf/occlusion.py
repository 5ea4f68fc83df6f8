"""The shared set-up of every occlusion method: parameters, the noise occluder and its grid.

:class:`OcclusionConfig` holds the parameters of a measurement, :class:`Measurements` the (image,
unit, peak) triples to occlude, :func:`occluder_corners` the grid of occluder positions and
:func:`noise_patch` the seeded noise occluder that every method pastes with :func:`_occlude`, so
their maps agree to float32 round-off.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import DissectError
from ..geometry import LayerGeometry
from ..images import Preprocess

#: Ways to compute discrepancy maps: fast (incremental where possible, else crop), or naive.
METHODS = ("fast", "incremental", "crop", "naive")
#: Discrepancy measures, see :mod:`dissect.rf`.
DISCREPANCIES = ("peak", "map")


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
        ``peak`` or ``map`` (see :mod:`dissect.rf`).
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

    def check_image(self, image_size: int | tuple[int, int]) -> None:
        """Refuse an occluder that does not fit in the network input (side or (height, width))."""
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        if self.occluder > min(height, width):
            shape = f"{height} px" if height == width else f"{height}x{width} px"
            raise DissectError(
                f"--occluder {self.occluder} px is larger than the {shape} network input; use "
                f"at most {min(height, width)}."
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


def _layout(geometry: LayerGeometry) -> list[str]:
    """LayerTrace's ``channels_last`` for the layer of ``geometry``."""
    return [geometry.name] if geometry.channels_last else []


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


class _Cost:
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
