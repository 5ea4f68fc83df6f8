"""The probed geometry of a network, kept on disk so that the same probe is not run twice.

The probe (:func:`~dissect.geometry.layer_geometry`) costs seconds on a large network, every run.
Its result depends only on the network, the layers and the input size, so it is kept as one JSON
file per key (never a pickle) in the cache directory, and a later ``dissect run`` of the same
network, layers and size reads it instead of probing again. The key holds everything the probe
depends on:

- the weights digest (names, dtypes, shapes and bytes of every parameter and buffer: the run's
  ``model_weights_sha256``);
- the network's form: ``repr`` of the module tree (each module's class and its settings, such as
  kernel size, stride, padding, dilation), the class of every module, the graph of every fx /
  exported-program module, and a digest of the source file of every class defined outside torch
  (a change to the model's code is a new key);
- the layers, in order, and the input (height, width);
- the versions of torch and dissect, and a digest of the probe's own source files.

Where it lives: ``$DISSECT_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/dissect``, else
``~/.cache/dissect`` (entries under ``geometry/``); ``DISSECT_NO_CACHE=1`` turns it off. An entry
that cannot be read, is not valid JSON, has another key or lacks a layer is ignored and replaced
by a fresh probe; a cache that cannot be written is skipped silently (the run goes on). Results
are the same with and without the cache: an entry holds exactly the numbers the probe returned.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import fx, nn

from .. import __version__
from ..config import image_hw
from .layer import LayerGeometry
from .measure import layer_geometry

#: Version of what an entry holds; part of its key.
CACHE_FORMAT = 1
#: Environment variables: where the cache lives, and whether it is used at all.
CACHE_DIR_ENV, NO_CACHE_ENV = "DISSECT_CACHE_DIR", "DISSECT_NO_CACHE"
#: Source files whose code makes the probe's result (this package and the hooks).
_PROBE_SOURCES = ("centroid", "fit", "layer", "measure", "probe", "surrogates", "../hooks")


def cache_dir() -> Path | None:
    """The cache directory (see the module docstring), or None when the cache is turned off."""
    if os.environ.get(NO_CACHE_ENV, "").strip() not in ("", "0"):
        return None
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dissect"


def cached_layer_geometry(
    module: nn.Module,
    layers: Sequence[str],
    image_size: int | tuple[int, int],
    weights_digest: str | None = None,
    probe: Callable[..., dict[str, LayerGeometry]] = layer_geometry,
) -> dict[str, LayerGeometry]:
    """:func:`~dissect.geometry.layer_geometry`, read from the cache when it has been probed.

    Parameters
    ----------
    module : nn.Module
        The network, in eval mode.
    layers : sequence of str
        Resolved layer names (as :func:`dissect.hooks.resolve_layers` returns them).
    image_size : int or (int, int)
        Input side, or (height, width), in pixels.
    weights_digest : str, optional
        :func:`dissect.checkpoint.module_digest` of ``module`` when the caller has it already;
        computed otherwise.
    probe : callable
        What probes on a miss, called as ``probe(module, layers, image_size)``: default
        :func:`~dissect.geometry.layer_geometry`.

    Returns
    -------
    dict of str to LayerGeometry
        In the order of ``layers``, equal to what ``layer_geometry`` returns.
    """
    folder, key = cache_dir(), None
    if folder is not None:
        key = geometry_key(module, layers, image_size, weights_digest)
    path = None if key is None else folder / "geometry" / f"{_digest(key)}.json"
    found = None if path is None else _read(path, key, layers)
    if found is not None:
        return found
    geometry = probe(module, layers, image_size)
    if path is not None:
        _write(path, key, geometry)
    return geometry


def geometry_key(
    module: nn.Module,
    layers: Sequence[str],
    image_size: int | tuple[int, int],
    weights_digest: str | None = None,
) -> dict | None:
    """What the probe's result depends on (see the module docstring), as JSON-ready values;
    None when the network's code cannot be read (then nothing is cached)."""
    form = model_form(module)
    if form is None:
        return None
    if weights_digest is None:
        from ..checkpoint import module_digest

        weights_digest = module_digest(module)
    return {
        "format": CACHE_FORMAT,
        "dissect": __version__,
        "probe_sha256": _probe_sources(),
        "torch": torch.__version__,
        "weights_sha256": weights_digest,
        "form_sha256": form,
        "layers": list(layers),
        "image_size": list(image_hw(image_size)),
    }


def model_form(module: nn.Module) -> str | None:
    """A digest of the network's form (modules, settings, graphs, code outside torch); None when
    the source of a class defined outside torch cannot be found."""
    digest, sources = hashlib.sha256(repr(module).encode()), {}
    for name, child in module.named_modules():
        kind = type(child)  # a model file's module name changes from one process to the next
        where = kind.__module__ if _in_torch(kind) else "file"
        digest.update(f"{name}:{where}.{kind.__qualname__};".encode())
        graph = getattr(child, "graph", None)
        if isinstance(graph, fx.Graph):
            digest.update(str(graph).encode())
        for cls in kind.__mro__:
            if _in_torch(cls) or cls in sources:
                continue
            sources[cls] = _source_digest(cls)
            if sources[cls] is None:
                return None
    for text in sorted(f"{cls.__qualname__}:{source};" for cls, source in sources.items()):
        digest.update(text.encode())
    return digest.hexdigest()


def _in_torch(cls: type) -> bool:
    """A class of torch or of Python itself (their code is named by the torch version)."""
    return cls.__module__.split(".")[0] in ("torch", "builtins")


def _source_digest(cls: type) -> str | None:
    """SHA-256 of the file that defines ``cls`` (its module's other code included), or of its
    own source where there is no file; None when neither can be read."""
    try:
        return _file_digest(inspect.getsourcefile(cls))
    except (TypeError, OSError):
        pass
    try:
        return hashlib.sha256(inspect.getsource(cls).encode()).hexdigest()
    except (TypeError, OSError):
        return None


def _file_digest(path: str | None) -> str:
    if path is None:
        raise OSError("no source file")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _probe_sources() -> str:
    here, digest = Path(__file__).parent, hashlib.sha256()
    for name in _PROBE_SOURCES:
        digest.update(_file_digest(str(here / f"{name}.py")).encode())
    return digest.hexdigest()


def _digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def _read(path: Path, key: dict, layers: Sequence[str]) -> dict[str, LayerGeometry] | None:
    """The entry at ``path`` when it holds ``key`` and every layer; None otherwise."""
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
        if entry["key"] != key:
            return None
        geometry = {name: LayerGeometry.from_dict(entry["geometry"][name]) for name in layers}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not all(geometry[name].name == name and _well_formed(geometry[name]) for name in layers):
        return None
    return geometry


def _well_formed(g: LayerGeometry) -> bool:
    """Whether every field of ``g`` has the type and length the probe gives it."""

    def numbers(values: tuple, kinds: tuple, length: int | None = 2) -> bool:
        right = length is None or len(values) == length
        return right and all(isinstance(v, kinds) and not isinstance(v, bool) for v in values)

    texts = (g.name, g.kind, g.global_reason, g.problem)
    flags = (g.rf_clipped, g.is_global, g.resampled, g.channels_last)
    return (
        numbers(g.output_shape, (int,), None)
        and numbers(g.rf, (int,))
        and numbers(g.stride, (int, float))
        and numbers(g.offset, (int, float))
        and all(isinstance(text, str) for text in texts)
        and all(isinstance(flag, bool) for flag in flags)
        and (g.extra_tokens is None or numbers((g.extra_tokens,), (int,), 1))
    )


def _write(path: Path, key: dict, geometry: dict[str, LayerGeometry]) -> None:
    """Write the entry atomically (a reader sees the old file or the new, never a part)."""
    entry = {"key": key, "geometry": {name: g.to_dict() for name, g in geometry.items()}}
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(entry, indent=1), encoding="utf-8")
        os.replace(temporary, path)
    except (OSError, TypeError, ValueError):  # not writable, or a value JSON cannot hold
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
