"""Getting batches onto the device and running them there well: the helpers of the pass driver.

- :func:`staged`: each batch's images on the device, in channels-last memory format where that
  helps (:func:`wants_channels_last`); on CUDA the copy of the next batch (from the loader's
  pinned memory, ``non_blocking``) runs on a side stream while the current batch's forward runs;
- :func:`autocast`: the forward in ``--dtype`` (``torch.autocast``), the listeners' work outside
  it, in float32;
- :func:`out_of_memory` and :func:`free_memory`: what the driver's out-of-memory back-off needs.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import DissectError

if TYPE_CHECKING:
    from .images import Batch


#: The environment variable that turns channels-last forwards on (1) or off (0).
CHANNELS_LAST_ENV = "DISSECT_CHANNELS_LAST"


def wants_channels_last(module: nn.Module, device: torch.device) -> bool:
    """Whether the forward runs in channels-last memory format by default: on CUDA and the CPU,
    for a network with more 2-d convolutions than linear layers (cuDNN's and oneDNN's
    convolutions are faster on NHWC, cuDNN's above all in bfloat16/float16; on one CPU thread a
    ResNet-18-shaped network at 224 px takes about a fifth less time; a vision transformer's
    patch embedding is not worth it). The values are the same but for float rounding; a forward
    that fails in this format is run again in the default one (:func:`~dissect.passes.run_pass`).
    ``DISSECT_CHANNELS_LAST=0`` (or ``1``) decides instead: the rounding of the default format
    (as the user's own ``model(x)`` rounds), or for a network whose custom operations misread
    channels-last tensors.
    """
    setting = os.environ.get(CHANNELS_LAST_ENV, "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    if setting:
        raise DissectError(
            f"{CHANNELS_LAST_ENV}={setting!r}: use 1 (channels-last), 0 (the default format) or "
            "leave it unset (channels-last for convolutional networks on CUDA and the CPU)."
        )
    if device.type not in ("cuda", "cpu"):
        return False
    convolutions = sum(isinstance(layer, nn.Conv2d) for layer in module.modules())
    linears = sum(isinstance(layer, nn.Linear) for layer in module.modules())
    return convolutions > linears


def _to_device(
    images: torch.Tensor, device: torch.device, channels_last: bool, non_blocking: bool
) -> torch.Tensor:
    images = images.to(device, non_blocking=non_blocking)
    if channels_last and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images


def staged(
    batches: Iterable[Batch], device: torch.device, channels_last: bool = False
) -> Iterator[tuple[Batch, torch.Tensor]]:
    """Each batch with its images on ``device`` (channels-last memory format if asked).

    On CUDA the copy of each batch is issued on a side stream as soon as the loader hands it
    over, and the batch is yielded only after the next one's copy has been issued: the copy of
    batch n + 1 overlaps the forward of batch n; the forward's stream waits for the copy's event
    before it reads the images.
    """
    if device.type != "cuda":
        for batch in batches:
            yield batch, _to_device(batch.images, device, channels_last, False)
        return
    copier = torch.cuda.Stream(device)
    waiting: tuple[Batch, torch.Tensor, torch.cuda.Event] | None = None
    for batch in batches:
        with torch.cuda.stream(copier):
            images = _to_device(batch.images, device, channels_last, True)
            copied = torch.cuda.Event()
            copied.record(copier)
        if waiting is not None:
            yield _ready(*waiting)
        waiting = (batch, images, copied)
    if waiting is not None:
        yield _ready(*waiting)


def _ready(batch: Batch, images: torch.Tensor, copied: torch.cuda.Event):
    stream = torch.cuda.current_stream(images.device)
    stream.wait_event(copied)
    images.record_stream(stream)  # its memory is not reused before the forward is done
    return batch, images


def autocast(device: torch.device, dtype: torch.dtype, enabled: bool = True):
    """``torch.autocast`` to ``dtype`` on ``device`` (``enabled=False``: float32 again, inside
    an autocast forward); nothing at all for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the device ran out of memory (``torch.OutOfMemoryError``, or a
    RuntimeError saying "out of memory", as MPS and older CUDA builds raise)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_memory(device: torch.device) -> None:
    """Give the memory of the tensors no longer used back to ``device``."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
