"""Survive interruption: per-rank checkpoints of a pass, run fingerprints, deferred signals.

A pass saves its partial state every so often to ``DIR/.checkpoint/rank<r>.pt`` (atomically,
tensors and numbers only, read back with ``weights_only=True``). Each checkpoint holds the
*fingerprint* of the run (the checkpoint format version, model weights digest, data spec and
image list digest, layers, parameters, world size); a run started again with the same arguments
resumes from it, and one with anything changed is refused with a message naming what changed, so
results of two different runs are never mixed. Ctrl-C and SIGTERM are deferred to the end of the
batch in flight, which is saved before the run stops; SIGKILL loses at most the work since the
last checkpoint.
"""

from __future__ import annotations

import hashlib
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from pickle import UnpicklingError
from typing import TYPE_CHECKING, Any

from .directory import CHECKPOINT_DIR
from .errors import DissectError
from .io import write_torch

if TYPE_CHECKING:
    from torch import nn

    from .images import ImageSource

#: Version of what checkpoints hold; part of every fingerprint (the statistics pass, IoU labels,
#: receptive fields), so a resume after an upgrade that changed it is refused, not misread.
#: 2: the threshold sketch samples by a hash of (seed, image, position), not a generator state.
#: 3: one layout for every pass (:mod:`dissect.passes`: the pass, then each listener's state).
#: 4: the ablation pass on the same driver (its sums as a listener's state).
#: 5: `run --iou` keeps its pending maps sparsely (:mod:`dissect.iou.kept_maps`).
CHECKPOINT_FORMAT = 5


def module_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer of ``module`` (names, dtypes, shapes and bytes)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        if tensor.numel():  # a zero-size tensor has no bytes (and cannot be viewed as bytes)
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def source_digest(source: ImageSource) -> str:
    """SHA-256 of the ids of every image of ``source``, in order."""
    digest = hashlib.sha256()
    for index in range(len(source)):
        digest.update(source.image_id(index).encode() + b"\n")
    return digest.hexdigest()


class Checkpoint:
    """The checkpoint file of one rank of a run.

    Parameters
    ----------
    out : path-like
        The output directory of the run.
    fingerprint : dict
        Everything that must match for a checkpoint to be resumed (str / number / list values);
        :data:`CHECKPOINT_FORMAT` is added to it.
    rank : int
        This process's rank; each rank keeps its own file.
    folder : str
        The checkpoint folder inside ``out``, one per kind of pass (default ``.checkpoint``, the
        statistics pass).
    """

    def __init__(
        self,
        out: str | Path,
        fingerprint: dict[str, Any],
        rank: int = 0,
        folder: str = CHECKPOINT_DIR,
    ):
        self.folder = Path(out) / folder
        self.path = self.folder / f"rank{rank}.pt"
        self.fingerprint = {"format": CHECKPOINT_FORMAT, **fingerprint}
        self.rank = rank

    def load(self) -> dict | None:
        """The saved state, or None when there is none; refuse a checkpoint of another run."""
        import torch

        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
            old, state = saved["fingerprint"], saved["state"]
        except (OSError, RuntimeError, EOFError, KeyError, TypeError, UnpicklingError) as error:
            raise DissectError(
                f"checkpoint {self.path} cannot be read (damaged, or not written by dissect: "
                f"{type(error).__name__}); add --restart to discard it and start over."
            ) from error
        if not isinstance(old, dict) or old.get("format") != CHECKPOINT_FORMAT:
            raise DissectError(format_refusal(self.path, old))
        changed = describe_changes(old, self.fingerprint)
        if changed:
            raise DissectError(
                f"{self.path.parent} holds a checkpoint of a different run ({changed}); run again "
                "with the original arguments to resume it, or add --restart to discard it and "
                "start over."
            )
        return state

    def save(self, state: dict) -> None:
        """Write ``state`` (tensors on the CPU, numbers, strings, lists, dicts) atomically."""
        write_torch(self.path, {"fingerprint": self.fingerprint, "state": state})

    def remove(self, world_size: int = 1) -> None:
        """Delete this rank's file and any temporary file a kill left half-written (rank 0: also
        files of ranks >= ``world_size``), then the folder if it is empty."""
        self.path.unlink(missing_ok=True)
        try:
            for partial in self.folder.glob(f".{self.path.name}.*.tmp"):
                partial.unlink(missing_ok=True)
            if self.rank == 0:
                for path in self.folder.glob("rank*.pt"):
                    number = path.stem.removeprefix("rank")
                    if number.isdigit() and int(number) >= world_size:
                        path.unlink(missing_ok=True)
            self.folder.rmdir()
        except OSError:
            pass  # other ranks' files are still there, or another rank removed the folder


def format_refusal(path: str | Path, fingerprint: Any) -> str:
    """The message refusing a checkpoint written in another format (by another version)."""
    found = fingerprint.get("format") if isinstance(fingerprint, dict) else None
    return (
        f"checkpoint {path} was written by another version of dissect (checkpoint format "
        f"{found if found is not None else 'unversioned'}, this version reads format "
        f"{CHECKPOINT_FORMAT}) and cannot be resumed; add --restart to discard it and start over."
    )


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``"batch_size 64 -> 32, model weights changed"`` for the keys that differ ('' if none)."""
    changes = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        if key.endswith("_sha256"):
            changes.append(f"{key.removesuffix('_sha256').replace('_', ' ')} changed")
        else:
            changes.append(f"{key} {before!r} -> {after!r}")
    return ", ".join(changes)


class StopRequest:
    """Set by :func:`deferred_interrupts` when Ctrl-C or SIGTERM arrives."""

    def __init__(self) -> None:
        #: Name of the signal received (``SIGINT`` / ``SIGTERM``), or None.
        self.signal: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None


@contextmanager
def deferred_interrupts() -> Iterator[StopRequest]:
    """Turn the first Ctrl-C or SIGTERM into a request the loop honours at the end of a batch.

    Yields
    ------
    StopRequest
        Check ``requested`` after each batch; save, then raise ``KeyboardInterrupt``. A second
        Ctrl-C raises ``KeyboardInterrupt`` at once; SIGTERM never does (torchrun sends it to
        every worker right after the terminal's Ctrl-C). Outside the main thread signals cannot
        be caught, and the request is never set.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and request.signal == "SIGINT":
            raise KeyboardInterrupt
        request.signal = request.signal or name

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
