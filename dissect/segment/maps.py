"""Recompute the activation maps of units on their top images, in one pass (a listener).

Each distinct image runs through the network once (stopped at the layer), in batches, and serves
every unit that has it among its top images; only those units' maps are kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..config import SegmentConfig
from ..device import forward_dtype, pick_device
from ..dissection import Dissection
from ..errors import DissectError
from ..images import Batch, ImageSource, make_loader
from ..passes import BaseListener, PassJob, run_pass


def top_maps(
    dissection: Dissection,
    layer: str,
    index: np.ndarray,
    units: Sequence[int],
    *,
    module: torch.nn.Module,
    source: ImageSource,
    config: SegmentConfig | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Recompute the activation maps of units on their top images.

    Each distinct image runs through the network once (stopped at ``layer``), in batches, and
    serves every unit that has it among its top images.

    Parameters
    ----------
    dissection : Dissection
        The dissection (preprocessing, the layer's layout).
    layer : str
        Layer name.
    index : ndarray
        (len(units), K) dataset indices of the top images of each unit; -1 marks an empty slot.
    units : sequence of int
        The unit of each row of ``index``.
    module : nn.Module
        The dissected network, in eval mode.
    source : ImageSource
        The dissected images.
    config : SegmentConfig, optional
        ``batch_size`` images per forward on ``device``.
    progress : bool
        Show a progress bar.

    Returns
    -------
    ndarray
        (len(units), K, h, w) float32 maps of each row's unit (zeros in empty slots): only
        these are kept, not the whole layer's output.
    """
    config = config or SegmentConfig()
    preprocess = dissection.preprocess
    wanted = np.unique(index[index >= 0]).tolist()
    device = pick_device(config.device)

    def batches(start: int, size: int) -> Iterator[Batch]:
        loader = make_loader(source, preprocess, wanted[start:], size, config.workers, device)
        for batch in loader:
            if batch.skipped:
                image, reason = batch.skipped[0]
                raise DissectError(
                    f"top image {source.image_id(image)!r} can no longer be read ({reason}); "
                    "restore it or run dissect run again."
                )
            yield batch

    listener = TopMaps(index, units)
    job = PassJob(
        module,
        [layer],
        batches,
        len(wanted),
        device,
        source,
        channels_last=dissection.channels_last([layer]),
        stream=False,
        desc=f"maps {layer}",
        progress=progress,
        dtype=forward_dtype(config.dtype or dissection.config.dtype, device),
        batch_size=config.batch_size,
    )
    run_pass(job, {"maps": listener})
    if listener.maps is None:
        raise DissectError(f"layer {layer!r} has no top images to segment.")
    return listener.maps


class TopMaps(BaseListener):
    """The maps of units on their top images, as a listener of the pass (see :func:`top_maps`).

    Parameters
    ----------
    index : ndarray
        (len(units), K) dataset indices of the top images of each unit; -1 marks an empty slot.
    units : sequence of int
        The unit of each row of ``index``.
    """

    def __init__(self, index: np.ndarray, units: Sequence[int]):
        self.index, self.units = index, np.asarray(units, dtype=np.int64)
        # Slots of each image: positions in the flattened index, found by binary search.
        self.order = np.argsort(index.ravel(), kind="stable")
        self.sorted_index = index.ravel()[self.order]
        #: (len(units), K, h, w) float32, zeros in empty slots; None until a batch is seen.
        self.maps: np.ndarray | None = None

    def add(self, layer: str, output: torch.Tensor, batch: Batch) -> None:
        acts = output.float().cpu().numpy()
        if self.maps is None:
            self.maps = np.zeros((*self.index.shape, *acts.shape[2:]), dtype=np.float32)
        for image, act in zip(batch.indices.tolist(), acts, strict=True):
            start, stop = np.searchsorted(self.sorted_index, [image, image + 1])
            rows, ranks = np.divmod(self.order[start:stop], self.index.shape[1])
            self.maps[rows, ranks] = act[self.units[rows]]

    def state_dict(self) -> dict:
        return {"maps": None if self.maps is None else torch.from_numpy(self.maps)}

    def load_state_dict(self, state: dict | None) -> None:
        maps = None if state is None else state["maps"]
        self.maps = None if maps is None else maps.numpy()

    def merge(self, state: dict) -> None:
        if state["maps"] is not None:
            other = state["maps"].numpy()
            self.maps = other if self.maps is None else self.maps + other  # disjoint slots
