"""Ablated copies of one layer's output, stacked on the batch axis after the layer.

A forward hook on the layer keeps its output on a normal forward of a batch (the *head*, the
network up to the layer, runs once). On an ablation forward the hook returns K copies of the kept
output instead, copy k with the units of ablation set k replaced by their values (0, or the unit's
dataset mean), stacked as (K x B, ...): the rest of the network (the *tail*) runs once on all of
them. The input of an ablation forward is one image of the batch (the head's work is thrown
away), so its cost is one image through the head plus K x B through the tail.

This is exact when the images of a batch do not mix after the layer and the tail reads nothing
from before it but the layer's output. Both are checked on each process's first batch against a
whole forward per ablation (:func:`check_against_naive`): a BatchNorm in training mode or another
statistic over the batch, or a skip connection around the layer, fail that check with one line.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import DissectError


def unit_axis(output_dim: int, channels_last: bool) -> int:
    """The axis of a layer output that holds its units: 1 for (B, C, ...), -1 for channels-last
    (B, H, W, C) maps and (B, N, C) token layers (every token, class tokens included)."""
    return -1 if channels_last or output_dim == 3 else 1


class StackedAblation:
    """Context manager: a forward hook on ``layer`` that keeps its output or stacks ablated copies.

    Parameters
    ----------
    module : nn.Module
        The network, in eval mode.
    layer : str
        A name from ``module.named_modules()``.
    values : Tensor
        (units,) the value an ablated unit takes everywhere (zeros, or its dataset means).
    channels_last : bool
        The layer's 4-d output is (B, H, W, C).
    """

    def __init__(self, module: nn.Module, layer: str, values: torch.Tensor, channels_last: bool):
        self.module = module
        self.layer = layer
        self.target = dict(module.named_modules())[layer]
        self.values = values
        self.channels_last = channels_last
        self.kept: torch.Tensor | None = None
        self.masks: torch.Tensor | None = None
        self.naive = False
        #: Keep the output of a normal forward (off while another layer's copies run).
        self.keep = True
        self.calls = 0
        self._handle = None

    def __enter__(self) -> StackedAblation:
        self._handle = self.target.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self.kept = None

    def _hook(self, _module: nn.Module, _inputs, output):
        self.calls += 1
        if not isinstance(output, torch.Tensor):
            raise DissectError(
                f"layer {self.layer!r} returns a {type(output).__name__}, not one tensor; ablate "
                "a layer that returns a tensor (dissect layers MODEL lists them)."
            )
        if self.masks is None:
            if self.keep:  # cloned: an in-place op after the layer cannot touch it
                self.kept = output.detach().clone()
            return None
        base = output if self.naive else self.kept
        return self.ablated(base, self.masks)

    def ablated(self, base: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """(K x B, ...) copies of ``base`` (B, ...), copy k with the units of ``masks[k]`` set."""
        axis = unit_axis(base.dim(), self.channels_last) % base.dim()
        shape = [1] * (base.dim() + 1)
        shape[0], shape[axis + 1] = len(masks), base.shape[axis]
        values = self.values.to(base.dtype).view(shape[1:])
        stacked = torch.where(masks.view(shape), values, base.unsqueeze(0))
        return stacked.reshape(-1, *base.shape[1:])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """A normal forward: the network's output, the layer's output kept."""
        return self._call(images, None)

    def forward_ablated(self, masks: torch.Tensor, dummy: torch.Tensor) -> torch.Tensor:
        """(K, B, outputs): the tail run on K ablated copies of the kept output.

        Parameters
        ----------
        masks : Tensor
            (K, units) bool: the units each copy ablates.
        dummy : Tensor
            One input image (1, ...): the head runs on it, and its output is replaced.
        """
        batch = len(self.kept)
        outputs = self._call(dummy, masks)
        if outputs.shape[0] != len(masks) * batch:
            raise DissectError(
                f"the network's output has {outputs.shape[0]} rows for {len(masks)} x {batch} "
                f"copies of layer {self.layer!r}: it does not keep one row per image after "
                "that layer, so its units cannot be ablated this way."
            )
        return outputs.reshape(len(masks), batch, *outputs.shape[1:])

    def forward_naive(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A whole forward of ``images`` with the units of ``mask`` (units,) ablated."""
        self.naive = True
        try:
            return self._call(images, mask[None])
        finally:
            self.naive = False

    def _call(self, images: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        self.masks, self.calls = masks, 0
        try:
            outputs = self.module(images)
        except DissectError:
            raise
        except RuntimeError as error:
            if masks is None:
                raise
            raise DissectError(
                f"running the network after layer {self.layer!r} on stacked ablated copies "
                f"failed ({str(error).splitlines()[0]}): something after the layer reads the "
                "batch size or a tensor from before it (a skip connection). Ablate a layer every "
                "path goes through, such as a block's output."
            ) from error
        finally:
            self.masks = None
        if self.calls != 1:
            raise DissectError(
                f"layer {self.layer!r} ran {self.calls} times in one forward; ablate a module "
                "the network calls once."
            )
        if not isinstance(outputs, torch.Tensor) or outputs.dim() != 2:
            raise DissectError(
                "the model's output is not class scores (a (batch, classes) tensor); ablation "
                "measures each class's score, so it needs a classifier."
            )
        return outputs


#: Images of the batch the check's whole forwards run on: enough to see images mix, few enough
#: that the check, which holds the layer's kept output, needs less memory than a forward of the
#: whole batch.
CHECK_IMAGES = 4


def check_against_naive(
    ablation: StackedAblation,
    images: torch.Tensor,
    masks: torch.Tensor,
    stacked: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """Refuse the stacked method where it differs from a whole forward per ablation (of the
    batch's first ``CHECK_IMAGES`` images: a network that mixes the images of a batch gives them
    other scores alone than among the stacked copies).

    Parameters
    ----------
    ablation : StackedAblation
        The hook, after a normal forward of ``images``.
    images : Tensor
        The batch.
    masks : Tensor
        (K, units): the ablations to check (two are enough to see mixing).
    stacked : callable
        ``stacked(masks)`` -> (K, B, outputs) by the stacked method.
    """
    kept = ablation.kept
    fast = stacked(masks)
    few = images[:CHECK_IMAGES]
    for k, mask in enumerate(masks):
        slow = ablation.forward_naive(few, mask)
        scale = float(slow.abs().max()) + 1.0
        difference = float((fast[k, : len(few)] - slow).abs().max())
        if not difference <= 1e-4 * scale:
            raise DissectError(
                f"ablating layer {ablation.layer!r} by stacking copies after it changes the "
                f"network's output (largest difference {difference:.3g}): something after the "
                "layer mixes the images of a batch (BatchNorm in training mode, a statistic over "
                "the batch) or reads a tensor from before it (a skip connection around it). "
                "Ablate a layer every path goes through, such as a block's output."
            )
    ablation.kept = kept
