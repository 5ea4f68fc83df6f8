"""Weights files read safely: nothing in them is unpickled as code.

Accepted: a ``torch.save`` file read with ``weights_only=True`` (``.pt``, ``.pth``, ``.bin``, the
Places365 ``.pth.tar`` checkpoints, the legacy and the zip format alike), or a ``.safetensors``
file. A state dict may come wrapped in a checkpoint dict (under ``state_dict``,
``model_state_dict``, ``model``, ``module``, ``net`` or ``state_dict_ema``), and its names may
carry the ``module.`` prefix of ``DataParallel`` / ``DistributedDataParallel`` (also inside a
name, as in Places365's ``features.module.0.weight``); :func:`load_weights` removes what the
model does not have.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import DissectError

#: Keys of a checkpoint dict that may hold the state dict, in the order they are tried.
WRAPPERS = ("state_dict", "model_state_dict", "model", "module", "net", "state_dict_ema")

_HOW = "save the weights with torch.save(model.state_dict(), FILE) or safetensors"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict without running anything in the file; unwrap checkpoints.

    Parameters
    ----------
    path : path-like
        A ``.safetensors`` file, or a file written by ``torch.save`` holding a state dict or a
        checkpoint dict that wraps one (see :data:`WRAPPERS`).

    Returns
    -------
    dict
        Parameter name to tensor, with a ``module.`` prefix shared by every name removed.

    Raises
    ------
    DissectError
        If the file is missing, unreadable, holds pickled Python objects (refused: loading them
        could run code) or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise DissectError(f"weights file {str(path)!r} does not exist.")
    state = _read_safetensors(path) if path.suffix == ".safetensors" else _read_torch(path)
    for key in WRAPPERS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(
        isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in state.items()
    ):
        raise DissectError(
            f"weights file {str(path)!r} does not hold a state dict (name -> tensor); {_HOW}."
        )
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = next((line for line in str(error).splitlines() if "GLOBAL" in line), "")
        raise DissectError(
            f"weights file {str(path)!r} is not a plain state dict: it holds pickled Python "
            f"objects{' (' + found.strip() + ')' if found else ''}, which could run code when "
            f"loaded, so dissect refuses it; {_HOW}."
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise DissectError(
            f"weights file {str(path)!r} is not a readable torch file ({first_line(error)}); "
            f"{_HOW}."
        ) from error


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as error:  # a dependency of dissect; only a broken install lacks it
        raise DissectError(
            f"weights file {str(path)!r} is a .safetensors file and the safetensors package is "
            "missing: pip install safetensors."
        ) from error
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise DissectError(
            f"weights file {str(path)!r} is not a readable .safetensors file "
            f"({first_line(error)}); {_HOW}."
        ) from error


def fit_names(state: Mapping[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """Remove ``module.`` segments (``DataParallel``) that ``module``'s own names do not have.

    Places365's AlexNet and VGG checkpoints wrap only ``features`` and name its weights
    ``features.module.0.weight``; a whole wrapped model gives ``module.conv1.weight``.
    """
    own = set(module.state_dict())
    if set(state) <= own or any(".module." in f".{name}" for name in own):
        return dict(state)
    return {
        ".".join(part for part in name.split(".") if part != "module"): value
        for name, value in state.items()
    }


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a weights file into ``module``, with an error that lists mismatched names.

    Parameters
    ----------
    module : nn.Module
        The architecture the weights belong to.
    path : path-like
        Any file :func:`read_state_dict` reads.

    Raises
    ------
    DissectError
        If the file cannot be read or its names or shapes do not fit the module.
    """
    apply_state_dict(
        module, fit_names(read_state_dict(path), module), f"weights file {str(path)!r}"
    )


def apply_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state)`` with one line naming what does not fit."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shapes that differ: one line per tensor from torch
        mismatched = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        raise DissectError(
            f"{what} does not fit the model ({few(mismatched, 2)}). Check that MODEL builds "
            "the architecture these weights were trained with (e.g. num_classes=...)."
        ) from error
    problems = []
    if result.missing_keys:
        problems.append(f"missing from the file: {few(result.missing_keys)}")
    if result.unexpected_keys:
        problems.append(f"not in the model: {few(result.unexpected_keys)}")
    if problems:
        raise DissectError(
            f"{what} does not fit the model ({'; '.join(problems)}). "
            "Check that MODEL builds the architecture these weights were trained with."
        )


def few(keys: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` names, comma-separated, and how many more there are."""
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type when the message is empty)."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
