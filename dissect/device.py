"""Which device a stage runs on."""

from __future__ import annotations

import os
import warnings

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


#: Most image-decoding processes ``--workers auto`` starts (per process of a torchrun job).
MAX_AUTO_WORKERS = 8


def free_cores() -> int:
    """Cores this process may use that other processes are not using now: the cores it may run
    on (its CPU affinity) less the load of the last minute beyond its own (``os.getloadavg``)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        others = max(0.0, os.getloadavg()[0] - 1.0)  # this process counts for about one
    except OSError:  # no load average on this platform
        others = 0.0
    return max(0, (cores or 1) - round(others))


def auto_workers(device: torch.device, batches: int, processes: int = 1) -> int:
    """How many image-decoding processes ``--workers auto`` starts.

    Decoding in workers overlaps with the forward only where a core is left for them: on a
    CUDA or MPS device the main process needs one core to feed it, on the CPU the forward needs
    ``torch.get_num_threads()``; the rest of the free cores (:func:`free_cores`), shared by
    the ``processes`` of a torchrun job on this machine, at most :data:`MAX_AUTO_WORKERS`. A
    pass of fewer than two batches gets none (starting the workers would cost more).

    Parameters
    ----------
    device : torch.device
        Where the forward runs.
    batches : int
        Batches the loader will yield.
    processes : int
        Processes of the job sharing this machine's cores.

    Returns
    -------
    int
        0 (decode in the main process) or more.
    """
    if batches < 2:
        return 0
    compute = torch.get_num_threads() if device.type == "cpu" else 1
    spare = (free_cores() - compute * processes) // max(1, processes)
    return max(0, min(MAX_AUTO_WORKERS, spare))


def forward_dtype(name: str, device: torch.device) -> torch.dtype:
    """The ``torch.dtype`` of ``--dtype name``, refused with a clear line where autocast cannot
    run it on ``device``.

    Parameters
    ----------
    name : str
        ``float32``, ``bfloat16`` or ``float16``.
    device : torch.device
        Where the forward runs.

    Returns
    -------
    torch.dtype
    """
    dtype = getattr(torch, name)
    if dtype == torch.float32:
        return dtype
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DissectError(
            f"--dtype bfloat16: {torch.cuda.get_device_name(device)} has no bfloat16 arithmetic; "
            "use --dtype float16 or float32."
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with torch.autocast(device.type, dtype=dtype):
                pass
        except (RuntimeError, ValueError) as error:
            caught.append(warnings.WarningMessage(str(error), UserWarning, "", 0))
    problems = [str(item.message) for item in caught if "autocast" in str(item.message).lower()]
    if problems:
        raise DissectError(
            f"--dtype {name} is not supported on {device.type} by this torch "
            f"({torch.__version__}: {problems[0]}); use --dtype float32"
            + (" or bfloat16." if name == "float16" else ".")
        )
    return dtype
