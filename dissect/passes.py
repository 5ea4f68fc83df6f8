"""One pass over the data: the driver every stage plugs its listeners into.

A stage says *what* to compute with a :class:`Listener` (the statistics of ``dissect run``, the
IoU counters of ``dissect autolabel`` and their permutation null, the labels of ``dissect run
--iou``); :func:`run_pass` says *how* to loop, once for all of them:

- the network on the job's device, traced with :class:`~dissect.hooks.LayerTrace` (each layer
  handed to the listeners as it runs, or all of a batch at once), under ``inference_mode``;
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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import deferred_interrupts
from .config import ResumeConfig
from .hooks import LayerTrace
from .images import Batch, ImageSource, warn_skipped

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
        (a :class:`~dissect.images.Batch` each, perhaps with more fields for the listeners).
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


def _feed(trace: LayerTrace, job: PassJob, listeners: Sequence[Listener], batch: Batch) -> None:
    """One forward of ``batch``; every listener sees every traced layer."""
    for listener in listeners:
        listener.begin(batch)

    def consume(layer: str, output: torch.Tensor) -> None:
        for listener in listeners:
            listener.add(layer, output, batch)

    images = batch.images.to(job.device, non_blocking=True)
    if not job.layers:
        pass  # the listeners run the network themselves
    elif job.stream:
        trace.stream(consume, images)
    else:
        outputs = trace(images)
        for layer in job.layers:
            consume(layer, outputs[layer])
    for listener in listeners:
        listener.end(batch)


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
    job.module.to(job.device)
    state = resume_state(job, listeners)
    saver = _Saver(job, listeners)
    bar = tqdm(
        total=job.total, initial=state.done, unit="img", desc=job.desc, disable=not job.progress
    )
    start, before, consistent = time.perf_counter(), state.seconds, True
    live = list(listeners.values())
    with (
        torch.inference_mode(),
        (
            LayerTrace(job.module, job.layers, stop=True, channels_last=job.channels_last)
            if job.layers
            else nullcontext()
        ) as trace,
        deferred_interrupts() as stop,
    ):
        try:
            for batch in job.batches(state.done):
                if batch.skipped:
                    if job.source is not None:
                        warn_skipped(job.source, batch.skipped)
                    state.skipped.extend(batch.skipped)
                consistent = False  # until every listener has this batch
                if len(batch.indices):
                    _feed(trace, job, live, batch)
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
    bar.close()
    saver.save(state)  # the finished shard survives a failed merge or write
    return merge_ranks(state, listeners)


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
