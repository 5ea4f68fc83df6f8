"""Which device a stage runs on."""

from __future__ import annotations

import torch

from .errors import DissectError


def pick_device(name: str = "auto") -> torch.device:
    """Resolve ``auto`` to cuda, else Apple's mps, else cpu; refuse a device that is not here.

    Parameters
    ----------
    name : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns
    -------
    torch.device
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise DissectError(
            f"--device {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps."
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DissectError(f"--device {name}: no CUDA device is available here; use --device cpu.")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise DissectError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}."
            )
    if device.type == "mps" and not _mps_available():
        raise DissectError(f"--device {name}: Apple's MPS is not available here; use --device cpu.")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
