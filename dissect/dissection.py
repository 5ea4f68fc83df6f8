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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .config import RunConfig
from .directory import IMAGES, MANIFEST, TOPK, UNITS, layer_file_name
from .errors import DissectError
from .geometry import LayerGeometry
from .images import Preprocess
from .io import read_csv, read_npz

if TYPE_CHECKING:
    from torch import nn

    from .images import ImageSource
    from .models import LoadedModel


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
        self._tables: dict[str, pd.DataFrame] = {}  # the run's tables, read once

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
        """``units.csv``: one row per unit of every layer (read once; a copy each call)."""
        return self._units().copy()

    def _units(self) -> pd.DataFrame:
        if self._tables.get(UNITS) is None:
            self._tables[UNITS] = read_csv(self.directory / UNITS, dtype={"layer": str})
        return self._tables[UNITS]

    def images(self) -> pd.DataFrame:
        """``images.csv``: every image of the data source, with the skipped ones marked (read
        once; a copy each call)."""
        if self._tables.get(IMAGES) is None:
            self._tables[IMAGES] = read_csv(self.directory / IMAGES, keep_default_na=False)
        return self._tables[IMAGES].copy()

    def topk(self, layer: str) -> dict[str, np.ndarray]:
        """Arrays ``index``, ``score``, ``y``, ``x`` of shape (units, K) for ``layer``."""
        self.check_layers([layer])
        return read_npz(self.directory / TOPK / f"{layer_file_name(layer)}.npz")

    def thresholds(self, layer: str) -> np.ndarray:
        """The activation threshold T of every unit of ``layer``."""
        units = self._units()
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

    def path(self, *parts: str) -> Path:
        """A path inside the directory; refuses parts that would escape it."""
        target = self.directory.joinpath(*parts).resolve()
        root = self.directory.resolve()
        if target != root and root not in target.parents:
            raise DissectError(f"path {'/'.join(parts)!r} escapes {str(self.directory)!r}.")
        return target


def load_dissected_model(
    dissection: Dissection, model: str | nn.Module | LoadedModel | None = None
) -> LoadedModel:
    """The dissected model: ``model`` when given, else loaded again from the manifest.

    Parameters
    ----------
    dissection : Dissection
        The opened directory.
    model : str, nn.Module or LoadedModel, optional
        The network to use instead of the manifest's MODEL spec (required when the dissection
        was run on an in-memory module).

    Returns
    -------
    LoadedModel
    """
    from .models import load_model

    if model is not None:
        return load_model(model)
    spec = dissection.manifest.get("model")
    if not spec:
        raise DissectError(
            f"{str(dissection.directory)!r} was dissected from an in-memory model, which cannot "
            "be loaded again from the manifest; pass the module as model=."
        )
    return load_model(spec, dissection.manifest.get("weights"))


def open_dissected_data(dissection: Dissection) -> ImageSource:
    """Open the dissected data source again from the manifest's DATA spec."""
    from .datasets import open_data

    manifest = dissection.manifest
    source = open_data(manifest["data"])
    if len(source) != manifest["n_images"]:
        raise DissectError(
            f"DATA {manifest['data']!r} now holds {len(source)} images but held "
            f"{manifest['n_images']} when dissected; image indices would not match. "
            "Restore the data or run dissect run again."
        )
    return source
