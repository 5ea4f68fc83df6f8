"""The dissection directory: what the streaming pass (:mod:`dissect.streaming`) writes and every
later stage reads (:class:`Dissection`).

It holds:

- ``manifest.json``: model and data specs, layers, parameters, layer geometry, version, timing;
- ``images.csv``: ``index,path,skipped,reason`` for every image of the data source;
- ``units.csv``: ``layer,unit,max_activation,mean_activation,threshold,quantile,nonfinite``;
- ``topk/<layer>.npz``: arrays ``index``, ``score``, ``y``, ``x`` of shape (units, K), best first;
- ``.checkpoint/rank<r>.pt`` while a pass is unfinished (see :mod:`dissect.checkpoint`).

Under torchrun every process dissects a contiguous shard of whole batches and rank 0 merges the
statistics and writes the directory (see :mod:`dissect.distributed`): the files equal those of a
one-process run with the same number of torch threads per process (CPU convolutions round
differently with another thread count).

Later stages (receptive fields, segmentation, labels, report) open it with :class:`Dissection`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .datasets import open_data
from .errors import DissectError
from .geometry import LayerGeometry
from .images import ImageSource, Preprocess
from .io import read_csv, read_npz
from .lock import LOCK_FILE
from .models import LoadedModel, load_model

if TYPE_CHECKING:
    from torch import nn

MANIFEST = "manifest.json"
#: What ``dissect run`` itself writes; everything else in the directory is a later stage's output.
RUN_OUTPUTS = frozenset(
    {MANIFEST, "units.csv", "images.csv", "topk", ".checkpoint", "stale", LOCK_FILE}
)
#: Where ``dissect run`` moves the later stages' outputs of the run it replaces.
STALE = "stale"


def run_digest(manifest: dict, tables: Sequence[bytes]) -> str:
    """The run id: a digest of what a pass computed (manifest without timing, and its tables).

    Two passes that computed the same statistics from the same model, data and parameters get
    the same id, so re-running an identical pass keeps the later stages valid; any difference
    gives another id.
    """
    digest = hashlib.sha256()
    timing = ("created", "seconds", "probe_seconds", "world_size", "run_id")
    kept = {key: value for key, value in manifest.items() if key not in timing}
    digest.update(json.dumps(kept, sort_keys=True, default=str).encode())
    for table in tables:
        digest.update(hashlib.sha256(table).digest())
    return digest.hexdigest()[:16]


def retire_stale_outputs(directory: str | Path, run_id: str) -> Path | None:
    """Move the later stages' outputs of an earlier, different run aside; return where to.

    Called by ``dissect run`` before it writes ``run_id`` into ``directory``. When the directory
    holds a dissection with another run id (or one from before run ids), every entry that
    ``dissect run`` does not write itself (labels, ``iou/``, receptive fields, segments, the
    annotation package, statistics, plots, the report, ...) moves to ``stale/<old run id>/``:
    nothing is deleted (crowd answers are costly) and nothing stale looks current.
    """
    directory = Path(directory)
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return None
    try:
        old = json.loads(manifest.read_text(encoding="utf-8")).get("run_id") or "unknown"
    except (json.JSONDecodeError, AttributeError):
        old = "unknown"
    if old == run_id:
        return None
    moving = [entry for entry in directory.iterdir() if entry.name not in RUN_OUTPUTS]
    if not moving:
        return None
    target = directory / STALE / old
    suffix = 1
    while target.exists():
        suffix += 1
        target = directory / STALE / f"{old}-{suffix}"
    target.mkdir(parents=True)
    for entry in moving:
        shutil.move(str(entry), str(target / entry.name))
    return target


@dataclass(frozen=True)
class RunConfig:
    """Parameters of a dissection pass.

    Attributes
    ----------
    layers : tuple of str
        Layer names as in ``model.named_modules()``.
    topk : int
        How many top images to keep per unit.
    quantile : float
        Top fraction of all activation values that lies above a unit's threshold T.
    batch_size : int
        Images per forward pass.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available).
    seed : int
        Seeds torch before the pass.
    workers : int
        DataLoader worker processes.
    """

    layers: tuple[str, ...]
    topk: int = 50
    quantile: float = 0.005
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0
    workers: int = 0

    def __post_init__(self) -> None:
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


def layer_file_name(layer: str) -> str:
    """A file name for a layer name (module paths may hold dots)."""
    return layer.replace("/", "_")


class Dissection:
    """A dissection directory, opened for reading by later stages.

    Parameters
    ----------
    directory : path-like
        A directory written by :func:`run_dissection` (``dissect run``).
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        manifest = self.directory / MANIFEST
        if not manifest.is_file():
            raise DissectError(
                f"{str(self.directory)!r} is not a dissection directory (no {MANIFEST}). "
                "Create one with: dissect run MODEL DATA --out DIR"
            )
        try:
            self.manifest = json.loads(manifest.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise DissectError(
                f"{manifest} is not valid JSON ({error}); run dissect run again."
            ) from error
        self.layers: list[str] = list(self.manifest["config"]["layers"])

    def __repr__(self) -> str:
        return f"Dissection({str(self.directory)!r}, layers={self.layers})"

    @property
    def run_id(self) -> str:
        """The id of the pass this directory holds (empty for directories from before run ids).

        Every later stage records it in what it writes, and readers refuse outputs of another
        run (see :func:`check_run`).
        """
        return str(self.manifest.get("run_id", ""))

    def check_run(self, found: object, what: str, fix: str) -> None:
        """Refuse an output recorded for another run than this directory's.

        Parameters
        ----------
        found : object
            The run id the output records (empty or missing: written before run ids; accepted).
        what : str
            The output, for the message (``"labels.csv"``).
        fix : str
            The command that makes it again.
        """
        found = "" if found is None or found != found else str(found)
        if found and self.run_id and found != self.run_id:
            raise DissectError(
                f"{what} in {str(self.directory)!r} comes from run {found}, but the directory "
                f"now holds run {self.run_id} (dissect run was run again); make it again "
                f"with: {fix}"
            )

    @property
    def config(self) -> RunConfig:
        """The parameters of the pass."""
        config = dict(self.manifest["config"])
        return RunConfig(**{**config, "layers": tuple(config["layers"])})

    @property
    def preprocess(self) -> Preprocess:
        """Input size and normalisation used by the pass."""
        return Preprocess.from_dict(self.manifest["preprocess"])

    def units(self) -> pd.DataFrame:
        """``units.csv``: one row per unit of every layer."""
        return read_csv(self.directory / "units.csv", dtype={"layer": str})

    def images(self) -> pd.DataFrame:
        """``images.csv``: every image of the data source, with the skipped ones marked."""
        return read_csv(self.directory / "images.csv", keep_default_na=False)

    def topk(self, layer: str) -> dict[str, np.ndarray]:
        """Arrays ``index``, ``score``, ``y``, ``x`` of shape (units, K) for ``layer``."""
        self.check_layers([layer])
        return read_npz(self.directory / "topk" / f"{layer_file_name(layer)}.npz")

    def thresholds(self, layer: str) -> np.ndarray:
        """The activation threshold T of every unit of ``layer``."""
        units = self.units()
        return units.loc[units["layer"] == layer, "threshold"].to_numpy(dtype=np.float32)

    def geometry(self, layer: str) -> LayerGeometry:
        """Receptive field, stride and offset of ``layer`` in input pixels."""
        self.check_layers([layer])
        return LayerGeometry.from_dict(self.manifest["geometry"][layer])

    def channels_last(self, layers: Sequence[str] | None = None) -> list[str]:
        """Those of ``layers`` (default: all) whose outputs are channels-last (B, H, W, C)."""
        return [name for name in self.check_layers(layers) if self.geometry(name).channels_last]

    def n_units(self, layer: str) -> int:
        """How many units (channels) ``layer`` has."""
        return int(self.geometry(layer).output_shape[0])

    def check_layers(self, layers: Sequence[str] | None) -> list[str]:
        """Return ``layers`` (default: all dissected ones), refusing names not dissected here."""
        if not layers:
            return list(self.layers)
        unknown = [name for name in layers if name not in self.layers]
        if unknown:
            raise DissectError(
                f"layer(s) {', '.join(unknown)} were not dissected in {str(self.directory)!r}; "
                f"it has {', '.join(self.layers)}. Run dissect run with --layers to add them."
            )
        return list(layers)

    def check_units(self, layer: str, units: Sequence[int] | None) -> list[int]:
        """Return ``units`` of ``layer`` (default: all), refusing out-of-range numbers."""
        count = self.n_units(layer)
        if units is None:
            return list(range(count))
        bad = [unit for unit in units if not 0 <= unit < count]
        if bad:
            raise DissectError(
                f"unit(s) {', '.join(map(str, bad))} do not exist in layer {layer!r}, "
                f"which has units 0..{count - 1}."
            )
        return list(units)

    def load_model(self, model: str | nn.Module | LoadedModel | None = None) -> LoadedModel:
        """The dissected model: ``model`` when given, else loaded again from the manifest.

        Parameters
        ----------
        model : str, nn.Module or LoadedModel, optional
            The network to use instead of the manifest's MODEL spec (required when the
            dissection was run on an in-memory module).

        Returns
        -------
        LoadedModel
        """
        if model is not None:
            return load_model(model)
        spec = self.manifest.get("model")
        if not spec:
            raise DissectError(
                f"{str(self.directory)!r} was dissected from an in-memory model, which cannot be "
                "loaded again from the manifest; pass the module as model=."
            )
        return load_model(spec, self.manifest.get("weights"))

    def open_data(self) -> ImageSource:
        """Open the dissected data source again from the manifest's DATA spec."""
        source = open_data(self.manifest["data"])
        if len(source) != self.manifest["n_images"]:
            raise DissectError(
                f"DATA {self.manifest['data']!r} now holds {len(source)} images but held "
                f"{self.manifest['n_images']} when dissected; image indices would not match. "
                "Restore the data or run dissect run again."
            )
        return source

    def path(self, *parts: str) -> Path:
        """A path inside the directory; refuses parts that would escape it."""
        target = self.directory.joinpath(*parts).resolve()
        root = self.directory.resolve()
        if target != root and root not in target.parents:
            raise DissectError(f"path {'/'.join(parts)!r} escapes {str(self.directory)!r}.")
        return target
