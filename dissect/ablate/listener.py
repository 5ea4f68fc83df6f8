"""The ablation pass as a listener of :mod:`dissect.passes`: per batch, the stacked tails.

The pass driver loops over the batches (device, progress, torchrun shards and their exact merge,
checkpoints, deferred interrupts); the ablation traces no layer through it. For each batch,
:class:`AblationListener` runs the network itself: one normal forward, whose scores are the
unablated baseline and which keeps each ablated layer's output (:class:`StackedAblation`), then
for each layer the tail of the network on stacked ablated copies of that output, a chunk of
copies at a time (:func:`ablate_batch`). The scores go into one :class:`AblationSums` per layer,
keyed by the batch's number in the whole run, so shards, resumed runs and one process give the
same bits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from ..errors import DissectError
from ..images import Batch
from ..passes import BaseListener
from .config import AblationConfig
from .copies import StackedAblation, check_against_naive
from .sets import AblationSet, masks
from .sums import AblationSums, BatchScores


@dataclass
class LayerPlan:
    """What one layer's pass ablates, and with which values."""

    layer: str
    sets: list[AblationSet]
    values: torch.Tensor
    channels_last: bool


@dataclass(frozen=True)
class Scoring:
    """How the images of a batch are scored: their data classes and the class outputs.

    Attributes
    ----------
    label : callable
        ``label(index)``: the data class (0 .. C-1) of the source's image ``index``.
    outputs : Tensor
        (C,) int64, the model output of each data class.
    """

    label: Callable[[int], int]
    outputs: torch.Tensor


def chunk_size(images: torch.Tensor, kept: torch.Tensor, config: AblationConfig) -> int:
    """Ablated copies per forward: their memory at most ``copies_mib`` (default: the input's)."""
    budget = (config.copies_mib or images.numel() * images.element_size() / 2**20) * 2**20
    return max(1, int(budget // max(kept.numel() * kept.element_size(), 1)))


def ablate_batch(
    hooks: Sequence[StackedAblation],
    all_masks: Mapping[str, torch.Tensor],
    images: torch.Tensor,
    config: AblationConfig,
    check: bool,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(base, ablated)] per layer for one batch: one normal forward, then the stacked tails.

    Parameters
    ----------
    hooks : sequence of StackedAblation
        One entered hook per ablated layer.
    all_masks : mapping of str to Tensor
        (K, units) bool per layer: the units each ablation set silences.
    images : Tensor
        The batch, on the network's device.
    config : AblationConfig
        ``copies_mib``: memory for the copies of one forward.
    check : bool
        Compare two ablations with a whole forward each first (:func:`check_against_naive`).

    Returns
    -------
    list of (Tensor, Tensor)
        Per hook, (B, outputs) unablated scores and (K, B, outputs) ablated ones.
    """
    for hook in hooks:
        hook.keep, hook.calls = True, 0
    base = hooks[0].forward(images)
    for hook in hooks:
        hook.keep = False
        if hook.calls != 1:
            raise DissectError(
                f"layer {hook.layer!r} ran {hook.calls} times in one forward; ablate a module "
                "the network calls once."
            )
    dummy = images[:1]
    results = []
    for hook in hooks:
        layer_masks = all_masks[hook.layer]
        size = chunk_size(images, hook.kept, config)

        def stacked(chosen, hook=hook, size=size):
            parts = [
                hook.forward_ablated(chosen[i : i + size], dummy)
                for i in range(0, len(chosen), size)
            ]
            return torch.cat(parts)

        if check:  # two copies in one forward, whatever the chunk size, to see any mixing
            check_against_naive(
                hook, images, layer_masks[[0, -1]], lambda m, h=hook: h.forward_ablated(m, dummy)
            )
        results.append((base, stacked(layer_masks)))
    return results


class AblationListener(BaseListener):
    """Listener of the ablation pass: the class-score drops of every plan's sets, per layer.

    Enter it (``with``) around the pass: its hooks stay on the network until it exits. The
    driver's job for it traces no layer (``layers=()``): it runs the network itself in
    :meth:`end`.

    Parameters
    ----------
    module : nn.Module
        The network, in eval mode, on ``device``.
    plans : sequence of LayerPlan
        The layers ablated and their sets.
    device : torch.device
        Where the network runs.
    config : AblationConfig
        ``batch_size`` (batch numbers) and ``copies_mib``.
    scoring : Scoring
        The images' data classes and the output of each class.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        plans: Sequence[LayerPlan],
        device: torch.device,
        config: AblationConfig,
        scoring: Scoring,
    ):
        self.device, self.config, self.scoring = device, config, scoring
        self.shapes = {plan.layer: (len(plan.sets), len(scoring.outputs)) for plan in plans}
        self.masks = {plan.layer: masks(plan.sets, len(plan.values)).to(device) for plan in plans}
        self.hooks = [
            StackedAblation(module, plan.layer, plan.values.to(device), plan.channels_last)
            for plan in plans
        ]
        self.sums: dict[str, AblationSums] = {}
        self.load_state_dict(None)
        #: Each process checks its first batch against a whole forward per ablation.
        self.checked = False
        self._stack = ExitStack()

    def __enter__(self) -> AblationListener:
        for hook in self.hooks:
            self._stack.enter_context(hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def add(self, layer: str, output: torch.Tensor, batch: Batch) -> None:
        """Never called: the ablation pass traces no layer through the driver."""

    def end(self, batch: Batch) -> None:
        """Score ``batch`` unablated and under every ablation set; add it to the sums."""
        first = min(batch.indices.tolist() + [index for index, _ in batch.skipped])
        number = first // self.config.batch_size  # the batch's number in the whole run
        images = batch.images.to(self.device)
        scores = ablate_batch(self.hooks, self.masks, images, self.config, not self.checked)
        self.checked = True
        labels = torch.tensor([self.scoring.label(int(i)) for i in batch.indices])
        for hook, (base, ablated) in zip(self.hooks, scores, strict=True):
            found = BatchScores(base, ablated, labels, self.scoring.outputs)
            self.sums[hook.layer].add(number, found)

    def state_dict(self) -> dict:
        return {layer: sums.state_dict() for layer, sums in self.sums.items()}

    def load_state_dict(self, state: dict | None) -> None:
        self.sums = {layer: AblationSums(*shape) for layer, shape in self.shapes.items()}
        for layer, saved in (state or {}).items():
            self.sums[layer].load_state_dict(saved)

    def merge(self, state: dict) -> None:
        for layer, saved in state.items():
            self.sums[layer].merge(AblationSums.from_state_dict(saved))
