"""Run a pass over the data across processes started by ``torchrun``, and merge exactly.

Every pass of dissect (statistics, IoU labels, receptive fields) follows the same pattern: each
process takes its shard of the work, computes mergeable partial results, the partial results are
gathered and merged on rank 0, and only rank 0 writes shared files::

    distributed.init(device)
    device = distributed.local_device(device)
    mine = do_work(distributed.shard(range(n), block=batch_size), device)
    merged = distributed.gather_and_merge(mine, merge)   # None except on rank 0
    if distributed.is_main():
        write(merged)
    distributed.barrier()

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) every function here behaves as a
world of one process: ``shard`` returns everything, ``gather_and_merge`` returns its argument.
The process group is joined from torchrun's variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``, with backend ``nccl`` for CUDA devices and ``gloo`` for CPU.
"""

from __future__ import annotations

import atexit
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from .errors import DissectError

T = TypeVar("T")


def launched() -> bool:
    """True when this process was started by torchrun (or any launcher setting WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    """True when a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """How many processes share the work (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on rank 0, the one process that writes shared files and prints summaries.

    Before :func:`init`, a process started by torchrun knows its rank from ``RANK``.
    """
    if active():
        return rank() == 0
    return not launched() or os.environ.get("RANK", "0") == "0"


def local_rank() -> int:
    """This process's index on its own machine (torchrun's ``LOCAL_RANK``; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def local_world_size() -> int:
    """Processes of the job on this machine (torchrun's ``LOCAL_WORLD_SIZE``; 1 otherwise)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if launched() else 1


def backend_for(device: torch.device) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for everything else."""
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """The device this process should use: ``cuda:LOCAL_RANK`` for an unnumbered CUDA device."""
    if device.type == "cuda" and device.index is None and active():
        return torch.device("cuda", local_rank())
    return device


def init(device: torch.device | str = "cpu") -> None:
    """Join torchrun's process group, once per process; it is destroyed when the process exits.

    Parameters
    ----------
    device : torch.device or str
        The device type the passes run on; chooses the backend (``nccl`` for cuda, else
        ``gloo``).

    Notes
    -----
    Does nothing outside torchrun, or when the group is already initialised (by an earlier pass,
    or by the caller, who then also destroys it). The group stays up between passes because
    torchrun's rendezvous cannot be joined twice by one process.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise DissectError(
                f"WORLD_SIZE is set but {name} is not; start distributed runs with torchrun, e.g. "
                "torchrun --nproc_per_node=2 -m dissect run MODEL DATA --out DIR."
            )
    backend = backend_for(torch.device(device))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    atexit.register(_destroy)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shard(indices: Sequence[T], block: int = 1) -> list[T]:
    """This process's contiguous part of ``indices`` (all of them in a world of one).

    Parameters
    ----------
    indices : sequence
        The work of the whole run, in order.
    block : int
        Cut only between blocks of this many items: pass the batch size so that every rank
        forms exactly the batches a single process would (bit-identical activations).

    Returns
    -------
    list
        Ranks get whole blocks in rank order, as evenly as possible, so the concatenation of
        every rank's shard is ``indices`` itself.
    """
    items = list(indices)
    blocks = -(-len(items) // block)
    bounds = np.linspace(0, blocks, world_size() + 1).round().astype(int) * block
    return items[bounds[rank()] : bounds[rank() + 1]]


def gather(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0; None on the other ranks.

    Objects travel pickled: move tensors to the CPU first (they arrive on the device they left).
    """
    if not active():
        return [obj]
    objects = [None] * world_size() if is_main() else None
    dist.gather_object(obj, objects, dst=0)
    return objects


def gather_and_merge(obj: T, merge: Callable[[T, T], T]) -> T | None:
    """Gather every rank's partial result on rank 0 and fold them with ``merge`` in rank order.

    Parameters
    ----------
    obj : object
        This rank's partial result (picklable; tensors on the CPU).
    merge : callable
        ``merge(a, b)`` returns the combination of two partial results.

    Returns
    -------
    object or None
        ``merge(...merge(merge(r0, r1), r2)...)`` on rank 0, None elsewhere.
    """
    objects = gather(obj)
    return None if objects is None else functools.reduce(merge, objects)


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (``obj`` is ignored elsewhere)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank gets here."""
    if active():
        dist.barrier()
