"""Every stage's parameters as small frozen dataclasses: the one place a default is written.

The command line takes its defaults (and the numbers in its help) from these classes, and the
library functions take a ``config=`` of them plus the few arguments a user really passes, so a
default never has two spellings. Light to import (no torch, numpy or pandas): ``dissect --help``
reads it.

- :class:`RunConfig`: the statistics pass of ``dissect run`` (stored in ``manifest.json``);
- :class:`ResumeConfig`: how often a long pass saves its state;
- :class:`IoUConfig`: automatic labels by IoU (``dissect autolabel``);
- :class:`OcclusionConfig`: empirical receptive fields by occlusion (``dissect rf``);
- :class:`SegmentConfig`: segmented top images (``dissect segment``, ``dissect export``);
- :class:`DetectorRule`: which labelled units count as detectors, and of which type;
- the small rest: :class:`RfOptions`, :class:`ExplainConfig`, :class:`ReportConfig`,
  :class:`CompareConfig`, :class:`ExportConfig`, :class:`EvaluateConfig`, :class:`ImportConfig`,
  :class:`DemoConfig`.

The image size is ``(height, width)`` inside the package; :func:`image_hw` turns the int a user
may give at the edges (command line, manifest, public functions) into that pair.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from .errors import DissectError

if TYPE_CHECKING:
    from .taxonomy import Taxonomy

#: Ways to compute discrepancy maps: fast (incremental where possible, else crop), or naive.
METHODS = ("fast", "incremental", "crop", "naive")
#: Discrepancy measures, see :mod:`dissect.rf`.
DISCREPANCIES = ("peak", "map")
#: Segmentation rules, see :mod:`dissect.segment.rules`.
RULES = ("threshold", "disk")
#: Placements of upsampled unit maps (``--align``), see :mod:`dissect.alignment`.
ALIGNMENTS = ("theoretical", "empirical", "resize")
#: The default placement (why: README, "Where unit maps are placed").
ALIGN = "theoretical"
#: The false discovery rate at which the report and ``dissect compare`` count detectors where the
#: labels have q-values (the significance rule; ``--fdr`` changes it).
FDR = 0.05
#: The pictures ``dissect segment`` can draw of a top image.
PICTURES = ("segmented", "outline", "crop", "grid")
#: Default device of every command: cuda, else Apple's mps, else cpu; and ``--workers auto``.
AUTO = "auto"
#: Number formats the forward may run in (``--dtype``); statistics stay float32.
DTYPES = ("float32", "bfloat16", "float16")


def check_align(align: str) -> str:
    """``align`` when it is one of :data:`ALIGNMENTS`, else a :class:`DissectError`."""
    if align not in ALIGNMENTS:
        raise DissectError(f"--align must be one of {', '.join(ALIGNMENTS)}, got {align!r}.")
    return align


def image_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``224`` -> ``(224, 224)``; ``(240, 320)`` stays ``(height, width)``.

    Parameters
    ----------
    size : int or (int, int)
        A side (square input) or ``(height, width)``, in pixels.

    Returns
    -------
    (int, int)
    """
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def check_workers(workers: int | str) -> None:
    """Refuse a ``--workers`` that is neither ``auto`` nor a count of processes."""
    if workers != AUTO and (not isinstance(workers, int) or workers < 0):
        raise DissectError(
            f"--workers {workers}: give the number of image-decoding processes (0: decode in "
            "the main process) or auto."
        )


def check_dtype(dtype: str | None) -> None:
    """Refuse a ``--dtype`` not in :data:`DTYPES` (None: the default of the stage)."""
    if dtype is not None and dtype not in DTYPES:
        raise DissectError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")


@dataclass(frozen=True)
class RunConfig:
    """Parameters of a dissection pass (``dissect run``); stored in ``manifest.json``.

    Attributes
    ----------
    layers : tuple of str
        Layer names as in ``model.named_modules()`` (empty: the model's default layers, see
        :func:`dissect.block_outputs.model_default_layers`).
    topk : int
        How many top images to keep per unit.
    quantile : float
        Top fraction of all activation values that lies above a unit's threshold T.
    batch_size : int
        Images per forward pass.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available).
    seed : int
        Keys the threshold sketch's sample (with the image index and position).
    workers : int or "auto"
        Image-decoding processes (``auto``: see :func:`dissect.device.auto_workers`).
    dtype : str
        Number format of the forward (one of :data:`DTYPES`; statistics stay float32).
    """

    layers: tuple[str, ...] = ()
    topk: int = 50
    quantile: float = 0.005
    batch_size: int = 64
    device: str = AUTO
    seed: int = 0
    workers: int | str = AUTO
    dtype: str = "float32"

    def __post_init__(self) -> None:
        check_workers(self.workers)
        check_dtype(self.dtype)
        if self.topk < 1:
            raise DissectError(f"--topk must be at least 1, got {self.topk}.")
        if not 0 < self.quantile < 1:
            raise DissectError(
                f"--quantile must lie strictly between 0 and 1, got {self.quantile}."
            )
        if self.batch_size < 1:
            raise DissectError(f"--batch-size must be at least 1, got {self.batch_size}.")

    def to_dict(self) -> dict:
        return {**asdict(self), "layers": list(self.layers)}


@dataclass(frozen=True)
class ResumeConfig:
    """When a long pass saves its state (see :mod:`dissect.passes`).

    Attributes
    ----------
    checkpoint_every : int
        Images a process handles between two saves of the statistics pass (``dissect run``).
    checkpoint_seconds : float
        Seconds between two saves of the later passes (``autolabel``, ``rf``); every pass also
        saves on Ctrl-C / SIGTERM.
    """

    checkpoint_every: int = 10000
    checkpoint_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.checkpoint_every < 1:
            raise DissectError(
                f"--checkpoint-every must be at least 1 image, got {self.checkpoint_every}."
            )
        if self.checkpoint_seconds < 0:
            raise DissectError(
                f"--checkpoint-seconds must not be negative, got {self.checkpoint_seconds}."
            )


@dataclass(frozen=True)
class IoUConfig:
    """Automatic labelling by IoU with concept masks (``dissect autolabel``).

    Attributes
    ----------
    batch_size : int
        Images per forward.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    workers : int or "auto"
        Image-decoding processes.
    permutations : int
        Random re-pairings of images for each label's p-value (0: none).
    dtype : str or None
        Number format of the forward (None: the one ``dissect run`` used).
    align : str
        Where upsampled unit maps are placed (one of :data:`ALIGNMENTS`).
    """

    batch_size: int = 16
    device: str = AUTO
    workers: int | str = AUTO
    permutations: int = 19
    dtype: str | None = None
    align: str = ALIGN

    def __post_init__(self) -> None:
        check_workers(self.workers)
        check_dtype(self.dtype)
        if self.batch_size < 1:
            raise DissectError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if self.permutations < 0:
            raise DissectError(f"--permutations must be 0 or more, got {self.permutations}.")
        check_align(self.align)


@dataclass(frozen=True)
class OcclusionConfig:
    """Parameters of the occlusion measurement (``dissect rf``).

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

    def check_image(self, image_size: tuple[int, int]) -> None:
        """Refuse an occluder that does not fit in the network input ((height, width))."""
        height, width = image_size
        if self.occluder > min(height, width):
            shape = f"{height} px" if height == width else f"{height}x{width} px"
            raise DissectError(
                f"--occluder {self.occluder} px is larger than the {shape} network input; use "
                f"at most {min(height, width)}."
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RfOptions:
    """``dissect rf`` besides the measurement: the ``device`` and ``plot_units`` units per
    layer drawn in the map plot."""

    device: str = AUTO
    plot_units: int = 8


@dataclass(frozen=True)
class SegmentConfig:
    """How top images are segmented (``dissect segment``, ``dissect export``).

    Attributes
    ----------
    top : int or None
        Top images per unit (None: all kept by ``dissect run``).
    rule : str
        ``threshold`` (the upsampled map above T, NetDissect's) or ``disk`` (a disk of the
        layer's empirical receptive field around every strong map cell, Zhou et al.'s).
    peak_fraction : float or None
        Threshold rule: each map at this fraction of its own peak (None: the unit's T); disk
        rule: cells from this fraction of the image's max (None: ``disk_fraction``).
    disk_fraction : float
        The disk rule's default ``peak_fraction``.
    rf_size : float or None
        Disk rule: receptive-field size in px (None: the layer's mean from ``dissect rf``).
    batch_size : int
        Images per forward.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    pictures : tuple of str
        Which pictures to draw (some of :data:`PICTURES`).
    workers : int or "auto"
        Image-decoding processes.
    dtype : str or None
        Number format of the forward (None: the one ``dissect run`` used).
    align : str
        Where upsampled unit maps are placed (one of :data:`ALIGNMENTS`).
    """

    top: int | None = 10
    rule: str = "threshold"
    peak_fraction: float | None = None
    disk_fraction: float = 0.5
    rf_size: float | None = None
    batch_size: int = 32
    device: str = AUTO
    pictures: tuple[str, ...] = ("segmented",)
    workers: int | str = AUTO
    dtype: str | None = None
    align: str = ALIGN

    def __post_init__(self) -> None:
        check_workers(self.workers)
        check_dtype(self.dtype)
        check_align(self.align)
        if self.rule not in RULES:
            raise DissectError(f"--rule must be one of {', '.join(RULES)}, got {self.rule!r}.")
        unknown = [name for name in self.pictures if name not in PICTURES]
        if unknown:
            raise DissectError(
                f"unknown picture(s) {', '.join(unknown)}; choose from {', '.join(PICTURES)}."
            )
        if self.batch_size < 1:
            raise DissectError(f"--batch-size must be at least 1, got {self.batch_size}.")


@dataclass(frozen=True)
class DetectorRule:
    """Which labelled units count as detectors, and of which semantic type.

    Attributes
    ----------
    min_precision : float
        Crowd labels count from this precision.
    min_iou : float
        Automatic labels count from this IoU.
    max_p : float or None
        Automatic labels count only with a permutation p-value at most this (None: p-values not
        used).
    fdr : float or None
        Automatic labels count only with a Benjamini-Hochberg q-value (over the layer's units)
        at most this (None: q-values not used).
    taxonomy : Taxonomy or None
        Category -> semantic type mapping (None: the default one, see :mod:`dissect.taxonomy`).
    """

    min_precision: float = 0.75
    min_iou: float = 0.04
    max_p: float | None = None
    fdr: float | None = None
    taxonomy: Taxonomy | None = field(default=None, compare=False)

    def types(self) -> Taxonomy:
        """The taxonomy to use (the default one when none was given)."""
        from .taxonomy import DEFAULT_TAXONOMY

        return DEFAULT_TAXONOMY if self.taxonomy is None else self.taxonomy

    def replace(self, **values: object) -> DetectorRule:
        """This rule with the given values (those not None) replaced: the loose ``min_iou=``,
        ``max_p=``... keywords of the public functions applied to their ``rule=``."""
        given = {key: value for key, value in values.items() if value is not None}
        return dataclasses.replace(self, **given) if given else self

    def describe(self) -> str:
        """``"IoU >= 0.04, p <= 0.05"``: the automatic part of the rule, for messages."""
        text = f"IoU >= {self.min_iou}" + (f", p <= {self.max_p}" if self.max_p else "")
        return text + (f", q <= {self.fdr} (FDR)" if self.fdr else "")


@dataclass(frozen=True)
class ExplainConfig:
    """``dissect explain``: ``top`` units per layer, on ``device``, the forward in ``dtype``
    (None: the one ``dissect run`` used)."""

    top: int = 5
    device: str = AUTO
    dtype: str | None = None


@dataclass(frozen=True)
class ReportConfig:
    """``dissect report``: ``top`` segmented top images per unit."""

    top: int = 5


@dataclass(frozen=True)
class CompareConfig:
    """``dissect compare``: the published ``reference`` drawn beside ours and what bar heights
    are a ``share`` of (``units`` or ``detectors``)."""

    reference: str = "zhou2015"
    share: str = "units"


@dataclass(frozen=True)
class ExportConfig:
    """``dissect export``.

    Attributes
    ----------
    seed : int
        Seed of the sentinels' choice and places.
    sentinels : int or None
        Sentinel images (top images of other units) mixed into each task (None: one per 12
        own images, at least one; 0 for none).
    dim : float
        Brightness of the image outside the unit's region.
    segment : SegmentConfig
        How the top images are segmented (all kept top images by default).
    """

    seed: int = 0
    sentinels: int | None = None
    dim: float = 0.25
    segment: SegmentConfig = SegmentConfig(top=None)


@dataclass(frozen=True)
class EvaluateConfig:
    """``dissect evaluate``: ``batch_size`` images per forward on ``device``."""

    batch_size: int = 64
    device: str = AUTO


@dataclass(frozen=True)
class ImportConfig:
    """``dissect import``: ``format`` of the answer files (``auto``: by content)."""

    format: str = "auto"


@dataclass(frozen=True)
class DemoConfig:
    """``dissect demo``: output folder, the world's seed, device, the network compared with."""

    out: str = "dissection-demo"
    seed: int = 1
    device: str = AUTO
    compare_with: str = "object-cnn"
