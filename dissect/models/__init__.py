"""Resolve a MODEL into an ``nn.Module`` in eval mode, safely.

Forms of MODEL:

- an ``nn.Module`` object (from Python: a notebook's model as it is);
- a built-in name (``scene-cnn``, ``object-cnn``), see :mod:`dissect.zoo`;
- ``path/to/file.py:callable`` or ``package.module:callable`` returning an ``nn.Module``, with
  optional weights (a state dict, loaded with ``weights_only=True``);
- a ``torch.export`` program saved with ``torch.export.save`` (``.pt2``), read without unpickling
  anything and turned back into a module tree (:mod:`dissect.models.export`);
- an ONNX file (``.onnx``), converted with onnx2torch (:mod:`dissect.models.onnx`).

TorchScript files and fully pickled modules are refused with a message that says how to convert.
Every failure to load is a :class:`DissectError` of one line that says what to do.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
import sys
import traceback
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import DissectError
from ..images import Preprocess
from ..zoo import builtin_models


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
        Default input size and normalisation (a built-in model's own; ImageNet's otherwise).
    classes : tuple of str or None
        Output class names, when known.
    presence_category : str or None
        For a multi-label model, the concept category whose presence its outputs predict (see
        :class:`dissect.zoo.BuiltinModel`); None for a classifier.
    """

    module: nn.Module
    spec: str
    weights: str | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    classes: tuple[str, ...] | None = None
    presence_category: str | None = None


def load_model(spec: str | nn.Module | LoadedModel, weights: str | None = None) -> LoadedModel:
    """Load a model from a MODEL spec; see the module docstring for the accepted forms.

    Parameters
    ----------
    spec : str, nn.Module or LoadedModel
        The MODEL spec, an in-memory module (put in eval mode; its spec is empty), or an
        already loaded model (returned as it is).
    weights : str, optional
        A state-dict file for ``file.py:callable`` / ``module:callable`` specs (or to replace a
        built-in model's weights). Checkpoint dicts holding ``state_dict`` and ``module.``
        prefixes from DataParallel are handled.

    Returns
    -------
    LoadedModel
    """
    if isinstance(spec, LoadedModel):
        return spec
    if isinstance(spec, nn.Module):
        if weights is not None:
            load_weights(spec, weights)
        return _ready(LoadedModel(spec, "", weights), freeze=False)
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
                module, spec, weights, entry.preprocess, entry.classes, entry.presence_category
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
        return _ready(LoadedModel(module, spec, weights))
    if ":" in spec and not path.exists():
        module = _call_factory(spec)
        if weights is not None:
            load_weights(module, weights)
        return _ready(LoadedModel(module, spec, weights))
    if path.is_file():
        _refuse_file(path)
    names = ", ".join(sorted(builtins)) or "none registered"
    raise DissectError(
        f"MODEL {spec!r} is not a built-in name ({names}), a 'file.py:callable' or "
        "'package.module:callable' spec, a torch.export '.pt2' file or an '.onnx' file "
        "(dissect layers --help lists the forms)."
    )


def _ready(loaded: LoadedModel, freeze: bool = True) -> LoadedModel:
    loaded.module.eval()
    if freeze:
        for parameter in loaded.module.parameters():
            parameter.requires_grad_(False)
    return loaded


def _call_factory(spec: str) -> nn.Module:
    target, _, name = spec.rpartition(":")
    if not name.isidentifier():
        raise DissectError(f"MODEL {spec!r}: {name!r} after ':' is not a Python name.")
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise DissectError(f"MODEL {spec!r}: file {target!r} does not exist.")
        module_name = f"_dissect_user_model_{abs(hash(file.resolve()))}"
        module_spec = importlib.util.spec_from_file_location(module_name, file)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:  # noqa: BLE001 - whatever the user's file raises
            del sys.modules[module_name]
            raise DissectError(
                f"MODEL {spec!r}: running {target!r} failed with {_where(error)}; fix the file "
                "(python FILE shows the whole traceback)."
            ) from error
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as error:
            raise DissectError(
                f"MODEL {spec!r}: cannot import {target!r} ({error}). Check the module path, "
                "or give a file: path/to/file.py:callable."
            ) from error
        except Exception as error:  # noqa: BLE001 - whatever the user's module raises
            raise DissectError(
                f"MODEL {spec!r}: importing {target!r} failed with {_where(error)}; fix the "
                f"module (python -c 'import {target}' shows the whole traceback)."
            ) from error
    factory = getattr(module, name, None)
    if not callable(factory):
        raise DissectError(f"MODEL {spec!r}: {target!r} has no callable named {name!r}.")
    try:
        model = factory()
    except Exception as error:  # noqa: BLE001 - whatever the user's factory raises
        raise DissectError(
            f"MODEL {spec!r}: {name}() failed with {_where(error)}; fix the factory so that "
            "it builds the model with no arguments."
        ) from error
    if not isinstance(model, nn.Module):
        raise DissectError(
            f"MODEL {spec!r}: {name}() returned {type(model).__name__}, not a torch nn.Module."
        )
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True``; unwrap checkpoints and DataParallel.

    Parameters
    ----------
    path : path-like
        A file written by ``torch.save(model.state_dict())`` or a checkpoint dict that holds one
        under ``state_dict``, ``model_state_dict`` or ``model``.

    Returns
    -------
    dict
        Parameter name to tensor, with any ``module.`` prefix removed.
    """
    path = Path(path)
    if not path.is_file():
        raise DissectError(f"weights file {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise DissectError(
            f"weights file {str(path)!r} is not a plain state dict: it holds pickled Python "
            "objects, which could run code when loaded, so dissect refuses it. Save the weights "
            "with torch.save(model.state_dict(), FILE) and pass FILE."
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise DissectError(
            f"weights file {str(path)!r} is not a readable torch file ({_first_line(error)}); "
            "save the weights with torch.save(model.state_dict(), FILE)."
        ) from error
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise DissectError(
            f"weights file {str(path)!r} does not hold a state dict (name -> tensor). Save one "
            "with torch.save(model.state_dict(), FILE)."
        )
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a state dict file into ``module``, with an error that lists mismatched keys."""
    state = read_state_dict(path)
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that differ: one line per tensor from torch
        mismatched = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        raise DissectError(
            f"weights file {str(path)!r} does not fit the model ({_few(mismatched, 2)}). "
            "Check that MODEL builds the architecture these weights were trained with."
        ) from error
    problems = []
    if result.missing_keys:
        problems.append(f"missing from the file: {_few(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"not in the model: {_few(result.unexpected_keys)}")
    if problems:
        raise DissectError(
            f"weights file {str(path)!r} does not fit the model ({'; '.join(problems)}). "
            "Check that MODEL builds the architecture these weights were trained with."
        )


def _few(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _where(error: BaseException) -> str:
    """``Type: message (file:line)`` of an exception, on one line."""
    text = (str(error).strip().splitlines() or [""])[0]
    frames = traceback.extract_tb(error.__traceback__)
    place = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {text}{place}"


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
    return LoadedModel(module, spec, weights, preprocess)


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
