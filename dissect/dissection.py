"""The one streaming pass over a dataset, and the dissection directory it writes.

A dissection directory holds:

- ``manifest.json``: model and data specs, layers, parameters, layer geometry, version, timing;
- ``images.csv``: ``index,path,skipped,reason`` for every image of the data source;
- ``units.csv``: ``layer,unit,max_activation,mean_activation,threshold,quantile``;
- ``topk/<layer>.npz``: arrays ``index``, ``score``, ``y``, ``x`` of shape (units, K), best first.

Later stages (receptive fields, segmentation, labels, report) open it with :class:`Dissection`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .data import ImageSource, Preprocess, make_loader, open_data, warn_skipped
from .errors import DissectError
from .geometry import LayerGeometry, layer_geometry
from .hooks import LayerTrace, resolve_layers
from .io import read_npz, write_csv, write_json, write_npz
from .models import LoadedModel, load_model
from .stats import UnitStats

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


def pick_device(name: str = "auto") -> torch.device:
    """Resolve ``auto`` to cuda when available, else cpu; refuse cuda where there is none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DissectError(f"--device {name}: no CUDA device is available here; use --device cpu.")
    return device


def default_layers(module: nn.Module) -> list[str]:
    """Every convolution and pooling layer, in definition order."""
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    return [name for name, child in module.named_modules() if name and isinstance(child, kinds)]


@dataclass
class PassResult:
    """Statistics of one pass: per layer, and the images that were skipped."""

    stats: dict[str, UnitStats]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0


def collect_stats(
    module: nn.Module,
    source: ImageSource,
    preprocess: Preprocess,
    config: RunConfig,
    indices: Sequence[int] | None = None,
    progress: bool = True,
) -> PassResult:
    """Run the images through ``module`` once and accumulate per-unit statistics.

    Parameters
    ----------
    module : nn.Module
        The network, in eval mode.
    source : ImageSource
        Where images come from.
    preprocess : Preprocess
        Resizing and normalisation.
    config : RunConfig
        Layers and pass parameters.
    indices : sequence of int, optional
        Which images (default: all of them, in order).
    progress : bool
        Show a tqdm bar with images/s.

    Returns
    -------
    PassResult
    """
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    module.to(device)
    indices = range(len(source)) if indices is None else indices
    loader = make_loader(source, preprocess, indices, config.batch_size, config.workers)
    stats: dict[str, UnitStats] = {}
    result = PassResult(stats)
    start = time.perf_counter()
    bar = tqdm(total=len(indices), unit="img", desc="dissect", disable=not progress)
    with torch.inference_mode(), LayerTrace(module, config.layers, stop=True) as trace:
        for batch in loader:
            if batch.skipped:
                warn_skipped(source, batch.skipped)
                result.skipped.extend(batch.skipped)
            if len(batch.indices):
                outputs = trace(batch.images.to(device, non_blocking=True))
                for name in config.layers:
                    acts = outputs[name]
                    if name not in stats:
                        stats[name] = UnitStats(
                            acts.shape[1], config.topk, config.quantile, config.seed,
                            device=acts.device,
                        )
                    stats[name].add(acts, batch.indices.to(acts.device))
            bar.update(len(batch.indices) + len(batch.skipped))
    bar.close()
    result.seconds = time.perf_counter() - start
    if not stats:
        raise DissectError(f"no readable image in DATA {source.spec!r}; nothing to dissect.")
    return result


def run_dissection(
    model: str | LoadedModel,
    data: str | ImageSource,
    out: str | Path,
    layers: Sequence[str] | None = None,
    *,
    weights: str | None = None,
    topk: int = 50,
    quantile: float = 0.005,
    batch_size: int = 64,
    preprocess: Preprocess | None = None,
    device: str = "auto",
    seed: int = 0,
    workers: int = 0,
    progress: bool = True,
) -> Dissection:
    """Dissect ``layers`` of ``model`` over ``data`` and write the dissection directory ``out``.

    Parameters
    ----------
    model : str or LoadedModel
        A MODEL spec (see :func:`dissect.models.load_model`) or an already loaded model.
    data : str or ImageSource
        A DATA spec (see :func:`dissect.data.open_data`) or a source.
    out : path-like
        The dissection directory to write.
    layers : sequence of str, optional
        Layers to dissect; default every convolution and pooling layer.
    weights : str, optional
        State-dict file for a ``file.py:callable`` MODEL.
    topk, quantile, batch_size, device, seed, workers
        See :class:`RunConfig`.
    preprocess : Preprocess, optional
        Input size and normalisation; default the model's own (ImageNet statistics, 224 px).
    progress : bool
        Show a progress bar.

    Returns
    -------
    Dissection
        The directory just written, opened.
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(model, weights)
    source = open_data(data)
    preprocess = preprocess or loaded.preprocess
    names = resolve_layers(loaded.module, layers or default_layers(loaded.module))
    config = RunConfig(tuple(names), topk, quantile, batch_size, device, seed, workers)
    geometry = layer_geometry(loaded.module, names, preprocess.image_size)
    result = collect_stats(loaded.module, source, preprocess, config, progress=progress)
    return write_dissection(out, loaded, source, preprocess, config, geometry, result)


def write_dissection(
    out: str | Path,
    loaded: LoadedModel,
    source: ImageSource,
    preprocess: Preprocess,
    config: RunConfig,
    geometry: dict[str, LayerGeometry],
    result: PassResult,
) -> Dissection:
    """Write the statistics of a finished pass as a dissection directory (manifest last)."""
    out = Path(out)
    rows = []
    for name in config.layers:
        stats = result.stats[name]
        write_npz(out / "topk" / f"{_safe_name(name)}.npz", **stats.topk())
        rows.append(
            pd.DataFrame(
                {
                    "layer": name,
                    "unit": np.arange(len(stats.max())),
                    "max_activation": stats.max(),
                    "mean_activation": stats.mean(),
                    "threshold": stats.threshold(),
                    "quantile": config.quantile,
                }
            )
        )
    write_csv(out / "units.csv", pd.concat(rows, ignore_index=True))
    write_csv(out / "images.csv", images_table(source, result.skipped))
    manifest = {
        "dissect_version": __version__,
        "model": loaded.spec,
        "weights": loaded.weights,
        "data": source.spec,
        "preprocess": preprocess.to_dict(),
        "config": config.to_dict(),
        "geometry": {name: geometry[name].to_dict() for name in config.layers},
        "n_images": len(source),
        "n_skipped": len(result.skipped),
        "seconds": round(result.seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(out / MANIFEST, manifest)
    return Dissection(out)


def images_table(source: ImageSource, skipped: Sequence[tuple[int, str]]) -> pd.DataFrame:
    """``index,path,skipped,reason`` for every image of ``source``."""
    reasons = dict(skipped)
    return pd.DataFrame(
        {
            "index": np.arange(len(source)),
            "path": [source.image_id(i) for i in range(len(source))],
            "skipped": [i in reasons for i in range(len(source))],
            "reason": [reasons.get(i, "") for i in range(len(source))],
        }
    )


def _safe_name(layer: str) -> str:
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
        return pd.read_csv(self.directory / "units.csv")

    def images(self) -> pd.DataFrame:
        """``images.csv``: every image of the data source, with the skipped ones marked."""
        return pd.read_csv(self.directory / "images.csv", keep_default_na=False)

    def topk(self, layer: str) -> dict[str, np.ndarray]:
        """Arrays ``index``, ``score``, ``y``, ``x`` of shape (units, K) for ``layer``."""
        self.check_layers([layer])
        return read_npz(self.directory / "topk" / f"{_safe_name(layer)}.npz")

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
