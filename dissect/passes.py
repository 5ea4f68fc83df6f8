"""One pass over the data: the driver every stage plugs its listeners into.

A stage says *what* to compute with a :class:`Listener` (the statistics of ``dissect run``, the
IoU counters of ``dissect autolabel`` and their permutation null, the labels of ``dissect run
--iou``); :func:`run_pass` says *how* to loop, once for all of them:

- the network on the job's device, traced with :class:`~dissect.hooks.LayerTrace` (each layer
  handed to the listeners as it runs, or all of a batch at once), under ``inference_mode``; the
  forward in the job's ``dtype`` (``torch.autocast``), every traced output cast to float32
  before a listener sees it, the listeners' own work outside autocast; on CUDA the images come
  pinned, are copied on a side stream while the previous batch runs, in channels-last memory
  format where that helps (:mod:`dissect.on_device`);
- out-of-memory back-off: when a batch does not fit in the device's memory, the listeners go
  back to the last saved state (or the start), the batches are halved and the pass goes on from
  there (a listener never keeps part of a batch): the statistics of a run at the smaller batch
  size, but for the images counted before that save, which keep their larger batches;
- a tqdm bar over this process's shard;
- one resume policy: the state of every listener is saved to the job's
  :class:`~dissect.checkpoint.Checkpoint` every ``checkpoint_every`` images or
  ``checkpoint_seconds`` seconds (whichever comes first, :class:`~dissect.config.ResumeConfig`),
  on Ctrl-C / SIGTERM (deferred to the end of the batch in flight, then ``KeyboardInterrupt``),
  on an interruption between batches, and at the end; a pass started again loads it and goes on
  from the first image not yet counted;
- under torchrun every process runs its shard and rank 0 folds the other ranks' states into its
  own listeners in rank order (:meth:`Listener.merge`), exactly.

Listeners are small mergeable objects: ``add`` / ``state_dict`` / ``load_state_dict`` /
``merge``, plus the optional ``begin`` and ``end`` of each batch. A listener whose state only
makes sense in its own process (``per_rank = True``) is checkpointed but not merged. A job that
traces no layer (``layers=()``) runs no forward of its own: its listeners run the network
themselves in ``end`` (the ablation pass runs the tail again on stacked ablated copies of a
layer's output, :mod:`dissect.ablate.listener`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import deferred_interrupts
from .config import ResumeConfig
from .errors import DissectError
from .hooks import LayerTrace
from .images import Batch, ImageSource, warn_skipped
from .on_device import autocast, free_memory, out_of_memory, staged, wants_channels_last

if TYPE_CHECKING:
    from torch import nn

    from .checkpoint import Checkpoint


class Listener(Protocol):
    """What a stage computes from the traced outputs of a pass; mergeable across shards."""

    #: True when the state is kept per process and never merged by the driver.
    per_rank: bool

    def begin(self, batch: Batch) -> None:
        """Before the forward of ``batch`` (its images on the job's device)."""

    def add(self, layer: str, output: torch.Tensor, batch: Batch) -> None:
        """Fold one traced layer's ``output`` for ``batch`` into the state."""

    def end(self, batch: Batch) -> None:
        """After every layer of ``batch`` has been added."""

    def state_dict(self) -> dict:
        """Tensors on the CPU, numbers, strings, lists and dicts (checkpoints, other ranks)."""

    def load_state_dict(self, state: dict | None) -> None:
        """Resume from :meth:`state_dict` (None: from the start)."""

    def merge(self, state: dict) -> None:
        """Fold in the :meth:`state_dict` of another shard (disjoint images)."""


class BaseListener:
    """No-op ``begin`` and ``end``, merged by the driver; subclasses add the rest."""

    per_rank = False

    def begin(self, batch: Batch) -> None:
        pass

    def end(self, batch: Batch) -> None:
        pass


class KeptOutputs(BaseListener):
    """Every traced layer's outputs, kept as float32 on the CPU, batch after batch (a few
    images only: explaining one image, say)."""

    def __init__(self) -> None:
        self.outputs: dict[str, list[torch.Tensor]] = {}

    def add(self, layer: str, output: torch.Tensor, batch: Batch) -> None:
        self.outputs.setdefault(layer, []).append(output.float().cpu())

    def output(self, layer: str) -> torch.Tensor:
        """The outputs of ``layer`` for every image, in order."""
        return torch.cat(self.outputs[layer])

    def state_dict(self) -> dict:
        return {layer: self.output(layer) for layer in self.outputs}

    def load_state_dict(self, state: dict | None) -> None:
        self.outputs = {layer: [value] for layer, value in (state or {}).items()}

    def merge(self, state: dict) -> None:
        for layer, value in state.items():
            self.outputs.setdefault(layer, []).append(value)


@dataclass
class PassJob:
    """What one pass runs on.

    Attributes
    ----------
    module : nn.Module
        The network, in eval mode.
    layers : sequence of str
        The layers traced; none: the pass runs no forward, its listeners do in ``end``.
    batches : callable
        ``batches(start)``: the batches of this process's shard from position ``start`` on
        (a :class:`~dissect.images.Batch` each, perhaps with more fields for the listeners);
        with ``batch_size`` set, ``batches(start, size)``: of ``size`` images each.
    total : int
        Images of this process's shard.
    device : torch.device
        Where the network and the batches go.
    source : ImageSource, optional
        Names the skipped images in warnings.
    channels_last : collection of str
        Layers whose outputs are (B, H, W, C).
    stream : bool
        Hand each layer's output to the listeners as it runs (nothing kept); otherwise after the
        forward, layer by layer in the order of ``layers``.
    checkpoint : Checkpoint, optional
        Where the state is saved and resumed from.
    resume : ResumeConfig
        When it is saved.
    desc : str
        The progress bar's label.
    progress : bool
        Show the progress bar.
    dtype : torch.dtype
        The forward's number format (float32, bfloat16, float16: ``torch.autocast``); the
        listeners always see float32.
    batch_size : int, optional
        Images per batch of ``batches``; when the device runs out of memory, the pass goes on
        with half as many (None: no back-off, the error is raised).
    memory_format : bool, optional
        Run the forward in channels-last memory format (None: where it helps,
        :func:`~dissect.on_device.wants_channels_last`).
    """

    module: nn.Module
    layers: Sequence[str]
    batches: Callable[[int], Iterable[Batch]]
    total: int
    device: torch.device
    source: ImageSource | None = None
    channels_last: Collection[str] = ()
    stream: bool = True
    checkpoint: Checkpoint | None = None
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    desc: str = "dissect"
    progress: bool = True
    dtype: torch.dtype = torch.float32
    batch_size: int | None = None
    memory_format: bool | None = None


@dataclass
class PassState:
    """Where a pass stands: images consumed, the unreadable ones, time spent.

    Attributes
    ----------
    done : int
        Images of the shard consumed so far (read or skipped).
    skipped : list of (int, str)
        Unreadable images (index, reason), by index; after the merge, every rank's.
    seconds : float
        Time spent in the pass over every session of a resumed run (the slowest rank's).
    """

    done: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    def state_dict(self) -> dict:
        skipped = [[index, reason] for index, reason in self.skipped]
        return {"done": self.done, "skipped": skipped, "seconds": self.seconds}

    @classmethod
    def from_state_dict(cls, state: dict) -> PassState:
        skipped = [(int(index), str(reason)) for index, reason in state["skipped"]]
        return cls(int(state["done"]), skipped, float(state["seconds"]))

    def merge(self, other: PassState) -> None:
        self.skipped = sorted(self.skipped + other.skipped)
        self.seconds = max(self.seconds, other.seconds)
        self.done += other.done


def snapshot(state: PassState, listeners: Mapping[str, Listener]) -> dict:
    """The checkpoint of a pass: its own state and every listener's."""
    return {
        "pass": state.state_dict(),
        "listeners": {name: listener.state_dict() for name, listener in listeners.items()},
    }


class _Saver:
    """The one resume policy: save every N images or S seconds, when asked, and at the end."""

    def __init__(self, job: PassJob, listeners: Mapping[str, Listener]):
        self.job, self.listeners = job, listeners
        self.unsaved, self.saved = 0, time.monotonic()

    def due(self, count: int) -> bool:
        self.unsaved += count
        resume = self.job.resume
        return (
            self.unsaved >= resume.checkpoint_every
            or time.monotonic() - self.saved > resume.checkpoint_seconds
        )

    def save(self, state: PassState) -> None:
        if self.job.checkpoint is not None:
            self.job.checkpoint.save(snapshot(state, self.listeners))
        self.unsaved, self.saved = 0, time.monotonic()


def resume_state(job: PassJob, listeners: Mapping[str, Listener]) -> PassState:
    """Load the job's checkpoint into the listeners (or start them afresh)."""
    saved = job.checkpoint.load() if job.checkpoint is not None else None
    for name, listener in listeners.items():
        listener.load_state_dict(None if saved is None else saved["listeners"][name])
    return PassState() if saved is None else PassState.from_state_dict(saved["pass"])


def _feed(
    trace: LayerTrace,
    job: PassJob,
    listeners: Sequence[Listener],
    batch: Batch,
    images: torch.Tensor,
) -> None:
    """One forward of ``batch`` (its ``images`` on the device); every listener sees every
    traced layer, in float32 and outside autocast."""
    for listener in listeners:
        listener.begin(batch)

    def consume(layer: str, output: torch.Tensor) -> None:
        output = output.float()  # statistics, thresholds and counts stay float32
        with autocast(job.device, job.dtype, enabled=False):
            for listener in listeners:
                listener.add(layer, output, batch)

    if job.layers:  # without traced layers the listeners run the network themselves
        with autocast(job.device, job.dtype):
            if job.stream:
                trace.stream(consume, images)
            else:
                outputs = trace(images)
        if not job.stream:
            for layer in job.layers:
                consume(layer, outputs[layer])
    for listener in listeners:
        listener.end(batch)


class _Driver:
    """The loop of :func:`run_pass` over the batches of one attempt (one batch size)."""

    def __init__(
        self,
        job: PassJob,
        listeners: Mapping[str, Listener],
        trace: LayerTrace,
        channels_last: bool,
    ):
        self.job, self.listeners, self.trace = job, listeners, trace
        self.channels_last = channels_last
        self.saver = _Saver(job, listeners)

    def batches(self, start: int, size: int | None) -> Iterable[Batch]:
        job = self.job
        return job.batches(start) if size is None else job.batches(start, size)

    def run(self, state: PassState, size: int | None, bar: tqdm, stop: Any) -> None:
        """Feed every batch from ``state.done`` on; save as the resume policy says."""
        job, saver, live = self.job, self.saver, list(self.listeners.values())
        start, before, consistent = time.perf_counter(), state.seconds, True
        try:
            for batch, images in staged(
                self.batches(state.done, size), job.device, self.channels_last
            ):
                if batch.skipped:
                    if job.source is not None:
                        warn_skipped(job.source, batch.skipped)
                    state.skipped.extend(batch.skipped)
                consistent = False  # until every listener has this batch
                if len(batch.indices):
                    _feed(self.trace, job, live, batch, images)
                del images
                count = len(batch.indices) + len(batch.skipped)
                state.done += count
                state.seconds = before + time.perf_counter() - start
                consistent = True
                bar.update(count)
                if saver.due(count) or stop.requested:
                    saver.save(state)
                if stop.requested:
                    raise KeyboardInterrupt(stop.signal)
        except KeyboardInterrupt:
            if consistent and not stop.requested:
                saver.save(state)  # interrupted between batches (e.g. while reading)
            raise

    def back_off(self, size: int | None) -> int:
        """After an out-of-memory error: free memory, halve the batches; a clear error when
        there is no smaller batch to try."""
        job = self.job
        free_memory(job.device)
        if size is None or size <= 1:
            images = " with 1 image per forward" if size == 1 else ""
            raise DissectError(
                f"the {job.desc} pass ran out of {job.device.type} memory{images}; trace fewer "
                "--layers, use a smaller --image-size or --dtype bfloat16, or run on another "
                "--device."
            )
        return size // 2

    def leave_channels_last(self, reason: str, state: PassState) -> None:
        """After an error in channels-last memory format: the network and its batches in the
        default format from now on; say so once."""
        self.channels_last = False
        self.job.module.to(memory_format=torch.contiguous_format)
        warnings.warn(
            f"{self.job.desc}: the network raised an error in channels-last memory format "
            f"({reason}); running it in the default format from image {state.done} of this "
            "shard (the last saved state).",
            stacklevel=4,
        )

    def tell(self, size: int, state: PassState) -> None:
        """Say once that the batches were halved, and from where the pass goes on."""
        job = self.job
        if size * 2 == job.batch_size:
            warnings.warn(
                f"{job.desc}: out of {job.device} memory with {job.batch_size} images per "
                f"forward; going on with {size} (halved again if need be) from image "
                f"{state.done} of this shard (the last saved state; nothing of the failed batch "
                "was kept).",
                stacklevel=4,
            )


def run_pass(job: PassJob, listeners: Mapping[str, Listener]) -> PassState | None:
    """Run the job's shard through the network once, feeding every listener; merge the ranks.

    Parameters
    ----------
    job : PassJob
        Network, layers, batches, device, checkpoint and resume policy.
    listeners : mapping of str to Listener
        By name (the name keys each one's state in the checkpoint).

    Returns
    -------
    PassState or None
        On rank 0 the state of the whole pass, its listeners (but ``per_rank`` ones) holding
        every rank's statistics; None on the other ranks.
    """
    channels_last = job.memory_format
    if channels_last is None:
        channels_last = wants_channels_last(job.module, job.device)
    job.module.to(job.device, memory_format=_memory_format(channels_last))
    try:
        state, driver = _attempts(job, listeners, channels_last)
    finally:
        if channels_last:
            job.module.to(memory_format=torch.contiguous_format)
    driver.saver.save(state)  # the finished shard survives a failed merge or write
    return merge_ranks(state, listeners)


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.preserve_format


def _attempts(
    job: PassJob, listeners: Mapping[str, Listener], channels_last: bool
) -> tuple[PassState, _Driver]:
    """The pass, again from the last saved state with half the batch size after each
    out-of-memory error, and in the default memory format after any other error in
    channels-last format (a network whose code assumes contiguous tensors, as ``x.view``)."""
    state = resume_state(job, listeners)
    bar = tqdm(
        total=job.total, initial=state.done, unit="img", desc=job.desc, disable=not job.progress
    )
    size = job.batch_size
    with (
        torch.inference_mode(),
        (
            LayerTrace(job.module, job.layers, stop=True, channels_last=job.channels_last)
            if job.layers
            else nullcontext()
        ) as trace,
        deferred_interrupts() as stop,
    ):
        driver = _Driver(job, listeners, trace, channels_last)
        while True:
            try:
                driver.run(state, size, bar, stop)
                break
            except RuntimeError as error:  # torch.OutOfMemoryError is one
                memory = out_of_memory(error)
                if not memory and not driver.channels_last:
                    raise
                reason = "" if memory else f"{type(error).__name__}: {error}".splitlines()[0]
            # out of the handler: the failed batch's tensors went with the traceback
            if memory:
                size = driver.back_off(size)
            state = resume_state(job, listeners)  # nothing of the failed batch is kept
            if memory:
                driver.tell(size, state)
            else:
                driver.leave_channels_last(reason, state)
            bar.reset(job.total)
            bar.update(state.done)
    bar.close()
    return state, driver


def merge_ranks(state: PassState, listeners: Mapping[str, Listener]) -> PassState | None:
    """Fold every rank's state into rank 0's listeners, in rank order; None off rank 0."""
    shared = {name: listener for name, listener in listeners.items() if not listener.per_rank}
    states = distributed.gather(snapshot(state, shared))
    if states is None:
        return None
    with torch.inference_mode():  # the listeners' tensors were made in inference mode
        for other in states[1:]:
            state.merge(PassState.from_state_dict(other["pass"]))
            for name, listener in shared.items():
                listener.merge(other["listeners"][name])
    return state


def state_to(state: Any, device: torch.device | str) -> Any:
    """A nested state dict (or list) with its tensors on ``device``."""
    if isinstance(state, dict):
        return {key: state_to(value, device) for key, value in state.items()}
    if isinstance(state, torch.Tensor):
        return state.to(device)
    return state
