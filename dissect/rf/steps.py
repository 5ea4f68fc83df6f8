"""The steps of a plain chain of convolutions, max pooling and point-wise modules.

:func:`chain_steps` checks that a network reaches a layer through such a chain and returns its
:class:`Step` objects, each with its window arithmetic; :func:`changed_span` says which outputs of
a step read a changed input. The incremental method (:mod:`dissect.rf.incremental`) runs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..hooks import LayerTrace

#: Modules that act on every position separately (in eval mode): windows pass through them.
_POINTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardtanh,
    nn.BatchNorm2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)


@dataclass(frozen=True)
class Step:
    """One module of a plain chain, with its window arithmetic (per axis) if it is spatial."""

    module: nn.Module
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    fill: float = 0.0  # value of its padding: 0 for convolutions, -inf for max pooling

    @property
    def spatial(self) -> bool:
        return not isinstance(self.module, _POINTWISE)

    def reach(self, axis: int) -> int:
        return self.dilation[axis] * (self.kernel[axis] - 1)

    def apply(self, window: torch.Tensor, channels: torch.Tensor | None = None) -> torch.Tensor:
        """The module on a window that already holds its padding; a convolution computes only
        output ``channels`` (all if None).

        Convolutions and max pooling run channels last, the layout windows are gathered in,
        where such small windows run fastest on CPU (a convolution's round-off then differs from
        a whole-image NCHW forward's at the float32 level).
        """
        if isinstance(self.module, nn.Conv2d):
            conv = self.module
            weight, bias = conv.weight, conv.bias
            if channels is not None:
                weight = weight[channels]
                bias = None if bias is None else bias[channels]
            window = window.contiguous(memory_format=torch.channels_last)
            return F.conv2d(window, weight, bias, self.stride, 0, self.dilation, conv.groups)
        if isinstance(self.module, nn.MaxPool2d):
            window = window.contiguous(memory_format=torch.channels_last)
            return F.max_pool2d(window, self.kernel, self.stride, 0, self.dilation)
        return self.module.forward(window)


def _two(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _as_step(module: nn.Module) -> Step | None:
    """The step of a supported module, else None."""
    if isinstance(module, _POINTWISE):
        return Step(module)
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros":
        if module.padding == "same":
            return None
        padding = (0, 0) if module.padding == "valid" else _two(module.padding)
        return Step(
            module, _two(module.kernel_size), _two(module.stride), padding, _two(module.dilation)
        )
    if isinstance(module, nn.MaxPool2d) and not module.return_indices:
        return Step(
            module,
            _two(module.kernel_size),
            _two(module.stride or module.kernel_size),
            _two(module.padding),
            _two(module.dilation),
            -math.inf,
        )
    return None


def chain_steps(module: nn.Module, layer: str, image: torch.Tensor) -> list[Step] | None:
    """The modules from the input to ``layer``, if they form a plain chain of supported modules.

    Each module must take exactly the previous one's output (checked by identity during a
    forward) and recomputing ``layer`` module by module on ``image`` must give the traced value;
    otherwise (branches, functional calls in ``forward``, unsupported modules) None.
    """
    target = dict(module.named_modules())[layer]
    watched = {id(c): c for _, c in module.named_modules() if not list(c.children())}
    watched[id(target)] = target
    calls = []
    handles = [
        child.register_forward_hook(lambda c, i, o: calls.append((c, i, o)))
        for child in watched.values()
    ]
    start = image[None]
    try:
        with LayerTrace(module, [layer], stop=True) as trace:
            expected = trace(start)[layer]
    finally:
        for handle in handles:
            handle.remove()
    steps, previous = [], start
    for child, inputs, output in calls:
        if child is target and list(child.children()):
            if output is not previous:
                return None
            break
        step = _as_step(child)
        if step is None or len(inputs) != 1 or inputs[0] is not previous:
            return None
        steps.append(step)
        previous = output
        if child is target:
            break
    else:
        return None
    result = start
    for step in steps:
        result = step.module.forward(result)
    same = result.shape == expected.shape and torch.allclose(result, expected, 1e-4, 1e-5)
    return steps if same else None


def changed_span(step: Step, axis: int, lo: np.ndarray, hi: np.ndarray, length: int):
    """The outputs ``[lo', hi']`` of ``step`` (along ``axis``, ``length`` of them) that read an
    input in ``[lo, hi]``: output ``i`` reads inputs ``i * stride - padding + 0..reach``."""
    stride, padding, reach = step.stride[axis], step.padding[axis], step.reach(axis)
    first = np.maximum(-((reach - lo - padding) // stride), 0)
    return first, np.minimum((hi + padding) // stride, length - 1)


def sliced_step(steps: list[Step]) -> int | None:
    """The index of the last convolution of ``steps`` if the layer's channels can be computed
    apart there (an ungrouped convolution followed only by max pooling and point-wise modules
    that treat every channel alike, not batch norm), else None."""
    spatial = [index for index, step in enumerate(steps) if step.spatial]
    convs = [index for index in spatial if isinstance(steps[index].module, nn.Conv2d)]
    if not convs or steps[convs[-1]].module.groups != 1:
        return None
    after = steps[convs[-1] + 1 :]
    if any(isinstance(step.module, nn.BatchNorm2d) for step in after):
        return None
    return convs[-1]
