"""Resolve a MODEL into an ``nn.Module`` in eval mode, safely: :func:`load_model`.

Forms of MODEL:

- an ``nn.Module`` object (from Python: a notebook's model as it is);
- a built-in name (``scene-cnn``, ``object-cnn``), see :mod:`dissect.zoo`;
- ``torchvision:NAME[:WEIGHTS]`` and ``timm:NAME[.TAG]``, pretrained weights from the local caches
  (downloaded only when asked), see :mod:`dissect.models.hub`;
- ``path/to/file.py:callable`` or ``package.module:callable`` returning an ``nn.Module``; any
  factory may take literal arguments, ``torchvision:resnet18(num_classes=365)`` (read, never
  evaluated: :mod:`dissect.models.specs`);
- a ``torch.export`` program saved with ``torch.export.save`` (``.pt2``), read without unpickling
  anything and turned back into a module tree (:mod:`dissect.models.export`);
- an ONNX file (``.onnx``), converted with onnx2torch (:mod:`dissect.models.onnx`).

``--weights FILE`` (a state dict, a checkpoint wrapping one, or ``.safetensors``; read without
running anything: :mod:`dissect.models.weights`) replaces the weights of any form but ``.pt2``.
TorchScript files and fully pickled modules are refused with a message that says how to convert.
Every failure to load is a :class:`DissectError` of one line that says what to do.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import DissectError
from ..images import Preprocess
from ..zoo import builtin_models
from .hub import PREFIXES, load_hub_model
from .specs import call_factory, parse_call
from .weights import load_weights


@dataclass
class LoadedModel:
    """A model ready for dissection, with the preprocessing it expects.

    Attributes
    ----------
    module : nn.Module
        The network, in eval mode.
    spec : str
        The MODEL spec it came from; empty for an in-memory module (a later stage then needs
        the module again: pass ``model=``).
    weights : str or None
        The weights file given with it.
    preprocess : Preprocess
        Default input size and normalisation: a built-in model's own, the one in a pretrained
        model's metadata (torchvision, timm), ImageNet's otherwise.
    classes : tuple of str or None
        Output class names, when known.
    presence_category : str or None
        For a multi-label model, the concept category whose presence its outputs predict (see
        :class:`dissect.zoo.BuiltinModel`); None for a classifier.
    layers : tuple of str or None
        The layers dissected by default when the model says so (a built-in model's); None lets
        :func:`dissect.block_outputs.default_layers` choose.
    source : str
        Where the weights came from, in words (for ``dissect layers``).
    segmenter_concepts : DataFrame or None
        For a built-in segmenter (``world-fcn``), its concepts table (``index,name,category,
        head``, one row per output channel; see :mod:`dissect.segmenter`).
    """

    module: nn.Module
    spec: str
    weights: str | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    classes: tuple[str, ...] | None = None
    presence_category: str | None = None
    layers: tuple[str, ...] | None = None
    source: str = ""
    segmenter_concepts: object = None


def load_model(
    spec: str | nn.Module | LoadedModel,
    weights: str | None = None,
    allow_download: bool = False,
) -> LoadedModel:
    """Load a model from a MODEL spec; see the module docstring for the accepted forms.

    Parameters
    ----------
    spec : str, nn.Module or LoadedModel
        The MODEL spec, an in-memory module (put in eval mode; its spec is empty), or an
        already loaded model (returned as it is).
    weights : str, optional
        A weights file (state dict, checkpoint, ``.safetensors``) for the architecture the
        spec builds (replacing a built-in or pretrained model's own weights).
    allow_download : bool
        Let ``torchvision:`` and ``timm:`` specs download weights missing from the local cache.

    Returns
    -------
    LoadedModel
    """
    if isinstance(spec, LoadedModel):
        return spec
    if isinstance(spec, nn.Module):
        if weights is not None:
            load_weights(spec, weights)
        return _ready(LoadedModel(spec, "", weights, source="in memory"), freeze=False)
    if not isinstance(spec, str):
        raise DissectError(
            f"MODEL must be a spec (str) or a torch nn.Module, got {type(spec).__name__}."
        )
    builtins = builtin_models()
    if spec in builtins:
        entry = builtins[spec]
        module = entry.factory()
        weights_file = weights or entry.weights
        if weights_file is not None:
            load_weights(module, weights_file)
        return _ready(
            LoadedModel(
                module,
                spec,
                weights,
                entry.preprocess,
                entry.classes,
                entry.presence_category,
                entry.layers,
                f"built-in ({Path(weights_file).name})",
                entry.concepts() if entry.concepts is not None else None,
            )
        )
    path = Path(spec)
    if path.suffix == ".pt2":
        return _ready(_load_export(path, spec, weights))
    if path.suffix == ".onnx":
        from .onnx import load_onnx

        module = load_onnx(path)
        if weights is not None:
            load_weights(module, weights)
        return _ready(LoadedModel(module, spec, weights, source=str(path)))
    if ":" in spec and not path.exists():
        call = parse_call(spec)
        if call.target.split(":", 1)[0] in PREFIXES:
            hub = load_hub_model(call, weights, allow_download, spec)
            return _ready(
                LoadedModel(
                    hub.module, spec, weights, hub.preprocess, hub.classes, source=hub.source
                )
            )
        module = call_factory(spec)
        if weights is not None:
            load_weights(module, weights)
        source = f"weights {weights}" if weights else "the factory's own (no --weights)"
        return _ready(LoadedModel(module, spec, weights, source=source))
    if path.is_file():
        _refuse_file(path)
    names = ", ".join(sorted(builtins)) or "none registered"
    raise DissectError(
        f"MODEL {spec!r} is not a built-in name ({names}), 'torchvision:NAME', 'timm:NAME', a "
        "'file.py:callable' or 'package.module:callable' spec, a torch.export '.pt2' file or an "
        "'.onnx' file (dissect layers --help lists the forms)."
    )


def _ready(loaded: LoadedModel, freeze: bool = True) -> LoadedModel:
    loaded.module.eval()
    if freeze:
        for parameter in loaded.module.parameters():
            parameter.requires_grad_(False)
    return loaded


def _load_export(path: Path, spec: str, weights: str | None) -> LoadedModel:
    from .export import load_exported

    if weights is not None:
        raise DissectError(
            f"MODEL {spec!r}: a .pt2 program holds its own weights; drop --weights (or export "
            "the program again after loading the weights into the model)."
        )
    module, expected = load_exported(path)
    preprocess = Preprocess()
    if expected.image_size is not None:
        preprocess = Preprocess(expected.image_size)
    if expected.batch is not None and (spec, expected.batch) not in _NOTED:
        _NOTED.add((spec, expected.batch))  # once per process, not once per stage of a demo
        warnings.warn(
            f"MODEL {spec!r} was exported with a static batch size of {expected.batch}: dissect "
            f"runs it {expected.batch} image(s) at a time, padding the last batch.",
            stacklevel=3,
        )
    return LoadedModel(module, spec, weights, preprocess, source=str(path))


#: (spec, batch) of the static-batch programs already noted in this process.
_NOTED: set[tuple[str, int]] = set()


def _refuse_file(path: Path) -> None:
    """Explain why a bare .pt/.pth/.ts file cannot be a MODEL, whatever it holds."""
    how = (
        "Give the architecture as 'file.py:callable' (a function returning the nn.Module) with "
        "--weights FILE holding torch.save(model.state_dict()), or export it with "
        "torch.export.save(torch.export.export(model.eval(), (example_input,)), 'model.pt2')."
    )
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any("/code/" in name or name.endswith("constants.pkl") for name in names):
            raise DissectError(
                f"MODEL {str(path)!r} is a TorchScript file. A loaded TorchScript module cannot "
                f"take the forward hooks that dissection needs. {how}"
            )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means: not a plain state dict
        raise DissectError(
            f"MODEL {str(path)!r} looks like a pickled Python object (a whole saved module?). "
            f"Loading pickles can run arbitrary code, so dissect refuses them. {how}"
        ) from error
    kind = "a state dict" if isinstance(state, Mapping) else type(state).__name__
    raise DissectError(f"MODEL {str(path)!r} holds {kind}, not an architecture. {how}")
