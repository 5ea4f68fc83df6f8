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

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .datasets import open_data
from .errors import DissectError
from .geometry import LayerGeometry
from .images import ImageSource, Preprocess
from .io import read_npz
from .models import LoadedModel, load_model

MANIFEST = "manifest.json"


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
    def config(self) -> RunConfig:
        """The parameters of the pass."""
        config = dict(self.manifest["config"])
        return RunConfig(**{**config, "layers": tuple(config["layers"])})

    @property
    def preprocess(self) -> Preprocess:
        """Input size and normalisation used by the pass."""
        values = self.manifest["preprocess"]
        return Preprocess(values["image_size"], tuple(values["mean"]), tuple(values["std"]))

    def units(self) -> pd.DataFrame:
        """``units.csv``: one row per unit of every layer."""
        return pd.read_csv(self.directory / "units.csv", dtype={"layer": str})

    def images(self) -> pd.DataFrame:
        """``images.csv``: every image of the data source, with the skipped ones marked."""
        return pd.read_csv(self.directory / "images.csv", keep_default_na=False)

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

    def load_model(self) -> LoadedModel:
        """Load the dissected model again from the manifest's MODEL spec."""
        spec = self.manifest.get("model")
        if not spec:
            raise DissectError(
                "this dissection was run on an in-memory model; pass the model explicitly."
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
