"""Cheap checks of what a command was given, before torch, pandas or matplotlib load.

Every command of the CLI calls :func:`preflight` first, so that a typo in a folder name, a
``synthetic:`` spec that does not parse, a directory that ``dissect run`` never wrote, or a layer
the directory does not hold is reported in a fraction of a second instead of after the
10-20 s that the heavy imports take on a busy machine. The checks only read paths and
``manifest.json``; the stages still check everything themselves (a module that passes here can
still fail to load).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from .errors import DissectError

#: The built-in MODEL names (``dissect.zoo``; a test keeps the two in step).
BUILTIN_MODELS = ("scene-cnn", "object-cnn", "world-fcn")
#: MODEL prefixes resolved by an optional library (dissect.models.hub checks them itself).
LIBRARY_PREFIXES = ("torchvision:", "timm:")
#: Datasets read in their own layout (``dissect.datasets.formats``): DATA prefixes and
#: ``dissect data import --from`` names.
DATASET_FORMATS = ("ade20k", "voc", "coco-panoptic", "cityscapes")
#: Splits a dataset spec may end with.
SPLITS = ("train", "val", "test")
#: Images of ``synthetic`` without N.
SYNTHETIC_DEFAULT_COUNT = 1000
MANIFEST = "manifest.json"


def parse_synthetic(spec: str) -> tuple[int, int]:
    """``synthetic``, ``synthetic:N`` or ``synthetic:N:SEED`` -> ``(N, SEED)``.

    Raises
    ------
    DissectError
        For anything else, with the form to write.
    """
    parts = spec.split(":")
    if parts[0] != "synthetic" or len(parts) > 3:
        raise DissectError(
            f"DATA {spec!r} is not a synthetic spec; write synthetic:N or synthetic:N:SEED."
        )
    try:
        count = int(parts[1]) if len(parts) > 1 else SYNTHETIC_DEFAULT_COUNT
        seed = int(parts[2]) if len(parts) > 2 else 0
    except ValueError:
        raise DissectError(
            f"DATA {spec!r}: N and SEED must be whole numbers, as in synthetic:500 or "
            "synthetic:500:7."
        ) from None
    if count < 1 or seed < 0:
        raise DissectError(
            f"DATA {spec!r}: N must be at least 1 and SEED at least 0, as in synthetic:500:7."
        )
    return count, seed


def dataset_spec(spec: str) -> tuple[str, str, str] | None:
    """``(kind, root, split)`` of a ``KIND:PATH[:SPLIT]`` spec (split ``val`` by default), or
    None when ``spec`` names no dataset format."""
    kind, colon, rest = spec.partition(":")
    if not colon or kind not in DATASET_FORMATS:
        return None
    root, _, split = rest.rpartition(":")
    if not root or split not in SPLITS:
        root, split = rest, "val"
    return kind, root, split


def check_data(spec: str) -> None:
    """A DATA spec: ``synthetic:...`` parses, anything else is an existing path."""
    dataset = dataset_spec(spec)
    if spec == "synthetic" or spec.startswith("synthetic:"):
        parse_synthetic(spec)
    elif dataset is not None:
        kind, root, _ = dataset
        if not Path(root).is_dir():
            raise DissectError(
                f"DATA {spec!r}: folder {root!r} does not exist. Give the dataset's root folder, "
                f"as in {kind}:path/to/{kind}[:val]."
            )
    elif not Path(spec).exists():
        raise DissectError(
            f"DATA {spec!r} is neither an existing folder nor a spec like 'synthetic:500'. "
            "Give a folder of images, a Broden directory, or synthetic:N[:SEED]."
        )


def check_model(spec: str, weights: str | None = None) -> None:
    """A MODEL spec names a built-in model, an existing file, or a findable module."""
    if weights is not None and not Path(weights).is_file():
        raise DissectError(f"--weights {weights!r} does not exist.")
    path = Path(spec)
    if spec in BUILTIN_MODELS or path.is_file() or spec.startswith(LIBRARY_PREFIXES):
        return
    if path.suffix in (".pt2", ".onnx"):
        raise DissectError(f"MODEL {spec!r}: file {spec!r} does not exist.")
    if ":" in spec:
        target = spec.partition("(")[0].rpartition(":")[0]
        if target.endswith(".py"):
            if not Path(target).is_file():
                raise DissectError(f"MODEL {spec!r}: file {target!r} does not exist.")
        elif importlib.util.find_spec(target.split(".")[0]) is None:
            raise DissectError(
                f"MODEL {spec!r}: no module {target.split('.')[0]!r} is installed here. Check "
                "the module path, or give a file: path/to/net.py:callable."
            )
        return
    raise DissectError(
        f"MODEL {spec!r} is not a built-in name ({', '.join(BUILTIN_MODELS)}), a "
        "'file.py:callable' or 'package.module:callable' spec, a torch.export '.pt2' file or "
        "an '.onnx' file (dissect layers --help lists the forms)."
    )


def dissection_layers(directory: str) -> list[str]:
    """The layers a dissection directory holds (from its manifest), or a clear error."""
    path = Path(directory)
    if not path.is_dir():
        raise DissectError(
            f"{directory!r} does not exist. Give a dissection directory (dissect run MODEL DATA "
            "--out DIR makes one)."
        )
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise DissectError(
            f"{directory!r} is not a dissection directory (no {MANIFEST}). "
            "Create one with: dissect run MODEL DATA --out DIR"
        )
    try:
        return list(json.loads(manifest.read_text(encoding="utf-8"))["config"]["layers"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise DissectError(
            f"{manifest} is not a valid manifest ({error}); run dissect run again."
        ) from error


def check_layers(directory: str, layers: str | None) -> None:
    """Every name of a comma-separated ``--layers`` is a layer of the directory."""
    known = dissection_layers(directory)
    names = [name.strip() for name in (layers or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise DissectError(
            f"--layers: {', '.join(unknown)} not dissected in {directory!r}; its layers are "
            f"{', '.join(known)}."
        )


def preflight(args: argparse.Namespace) -> None:
    """Check a parsed command line's paths, specs and layer names (torch-free, in milliseconds).

    Reads the arguments the subcommands share by name: ``directory``/``directories`` (a
    dissection directory, with ``layers`` checked against it), ``model`` and ``weights``,
    ``data``, ``files``, ``mapping``.
    """
    directories = getattr(args, "directories", None) or []
    if getattr(args, "directory", None):
        directories = [args.directory]
    for directory in directories:
        check_layers(directory, getattr(args, "layers", None))
    if getattr(args, "model", None):
        check_model(args.model, getattr(args, "weights", None))
    if getattr(args, "data", None):
        check_data(args.data)
    for path in [*(getattr(args, "files", None) or []), getattr(args, "mapping", None)]:
        if path and not Path(path).is_file():
            raise DissectError(f"{path!r} does not exist.")
