"""Which device a stage runs on."""

from __future__ import annotations

import torch

from .errors import DissectError


def pick_device(name: str = "auto") -> torch.device:
    """Resolve ``auto`` to cuda when available, else cpu; refuse cuda where there is none."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DissectError(f"--device {name}: no CUDA device is available here; use --device cpu.")
    return device
