"""Capture the outputs of named layers with forward hooks, and stop the forward early.

A layer name is a module name as in ``model.named_modules()``; its value is the tensor that module
returns. A token-shaped output (B, N, C), as in vision transformers, whose N is a grid of the
input's aspect plus up to 8 leading class/register tokens, is read as C units over that grid:
(B, C, h, w), the extra tokens dropped (:func:`token_grid`); a channels-last output (B, H, W, C),
as inside ConvNeXt or Swin blocks, is read as C units over H x W (:func:`channels_last_by_shape`;
the geometry probe settles the shapes that fit both readings). For ``conv -> ReLU(inplace=True)``
the conv's name means the pre-ReLU response: the hook clones it before the in-place ReLU
overwrites it. Name the ReLU module to get the rectified value.

    with LayerTrace(model, ["conv3", "conv5"], stop=True) as trace:
        outputs = trace(images)          # {"conv3": tensor, "conv5": tensor}
        trace.stream(consume, images)    # consume(name, tensor) as each layer runs; nothing kept
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from torch import nn

from .errors import DissectError
from .layer_select import select_layers

#: Most leading class/register tokens a token layer may have.
MAX_EXTRA_TOKENS = 8


def token_grid(tokens: int, image: tuple[int, int]) -> tuple[int, int, int] | None:
    """How ``tokens`` tokens of an ``image`` (height, width) input split into a patch grid.

    Returns
    -------
    (extra, h, w) or None
        The fewest leading extra tokens (class, register) such that the rest form an ``h x w``
        grid of the image's aspect ratio (at least 2 x 2); None if there is no such split.

    Examples
    --------
    >>> token_grid(197, (224, 224))
    (1, 14, 14)
    """
    height, width = image
    if not height or not width:
        return None
    for extra in range(min(MAX_EXTRA_TOKENS, tokens) + 1):
        rest = tokens - extra
        rows = round((rest * height / width) ** 0.5)
        if rows >= 2 and rows * round(rows * width / height) == rest:
            columns = rest // rows
            if abs(rows * width - columns * height) <= max(height, width) / max(rows, columns):
                return extra, rows, columns
    return None


def _fits(height: int, width: int, image: tuple[int, int]) -> bool:
    """Whether an ``height x width`` map can cover an ``image`` (height, width): the image's
    aspect, give or take two positions lost or gained at the borders along each axis."""
    return abs(height * image[1] - width * image[0]) <= 2 * max(image)


def channels_last_by_shape(shape: Sequence[int], image: tuple[int, int]) -> bool | None:
    """Whether a 4-d output of this ``shape`` is (B, H, W, C) rather than (B, C, H, W).

    Returns
    -------
    bool or None
        True when only axes 1, 2 have the ``image``'s (height, width) aspect, False when only
        axes 2, 3 have it, or neither; None when both readings fit (say (B, 16, 16, 16)).

    Examples
    --------
    >>> channels_last_by_shape((2, 56, 56, 96), (224, 224))
    True
    >>> channels_last_by_shape((2, 96, 56, 56), (224, 224))
    False
    """
    if len(shape) != 4 or not all(image):
        return False
    first, last = _fits(shape[1], shape[2], image), _fits(shape[2], shape[3], image)
    return None if first and last else first


def as_maps(
    output: torch.Tensor, image: tuple[int, int], channels_last: bool | None = None
) -> torch.Tensor:
    """Layer outputs as (B, C, h, w) maps: (B, N, C) tokens over their patch grid (see
    :func:`token_grid`), (B, H, W, C) channels-last maps permuted (``channels_last``, or when
    None, :func:`channels_last_by_shape`; both readings fitting counts as (B, C, H, W)); others
    as they are."""
    if output.dim() == 4:
        if channels_last is None:
            channels_last = bool(channels_last_by_shape(output.shape, image))
        return output.permute(0, 3, 1, 2) if channels_last else output
    if output.dim() != 3 or (grid := token_grid(output.shape[1], image)) is None:
        return output
    extra, rows, columns = grid
    patches = output[:, extra:]
    return patches.transpose(1, 2).reshape(output.shape[0], output.shape[2], rows, columns)


class _StopForward(Exception):
    """Raised inside a hook once every traced layer has produced its output."""


def resolve_layers(module: nn.Module, names: Sequence[str]) -> list[str]:
    """Check layer names against ``module.named_modules()``; return them without duplicates.

    Globs (``layer*``) and type filters (``type:Conv2d``) are expanded, see
    :func:`dissect.layer_select.select_layers`.

    Parameters
    ----------
    module : nn.Module
        The network.
    names : sequence of str
        Requested layer names or patterns.

    Returns
    -------
    list of str
        The names, in the order given, each once.

    Raises
    ------
    DissectError
        If no name is given, or a name is not a module of the network (close matches are listed).
    """
    return select_layers(module, names)


class LayerTrace:
    """Context manager that records the outputs of named layers during a forward pass.

    Parameters
    ----------
    module : nn.Module
        The network.
    layers : sequence of str
        Names from ``module.named_modules()`` (checked with :func:`resolve_layers`).
    stop : bool
        End the forward as soon as every traced layer has produced its output, so later layers
        are never computed. The network's own output is then not available.
    clone : bool
        Copy each traced output, so in-place operations later in the network cannot change it.
    detach : bool
        Detach the kept outputs from the autograd graph (set False to take gradients).
    channels_last : collection of str, optional
        The layers whose 4-d outputs are (B, H, W, C), as the geometry probe found them
        (:attr:`dissect.geometry.LayerGeometry.channels_last`); the others are (B, C, H, W).
        Default: judged from each output's shape (:func:`channels_last_by_shape`).

    Notes
    -----
    Hooks are removed on exit, even after an error. A module called several times in one forward
    (a shared ReLU, say) keeps its first output. A network with a static batch size B (an
    attribute ``static_batch``, set on ``.pt2`` programs exported that way) runs B images at a
    time: the trace splits larger batches, and cuts off the padding the network adds to smaller
    ones, so every traced output has one row per input image.
    """

    def __init__(
        self,
        module: nn.Module,
        layers: Sequence[str],
        stop: bool = False,
        clone: bool = True,
        detach: bool = True,
        channels_last: Collection[str] | None = None,
    ):
        self.module = module
        self.layers = resolve_layers(module, layers)
        self.stop = stop
        self.clone = clone
        self.detach = detach
        self.channels_last = None if channels_last is None else set(channels_last)
        self.outputs: dict[str, torch.Tensor] = {}
        self._reached: set[str] = set()
        self._consume: Callable[[str, torch.Tensor], None] | None = None
        self._rows: int | None = None
        self._static_batch: int | None = getattr(module, "static_batch", None)
        self._image: tuple[int, int] = (0, 0)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> LayerTrace:
        modules = dict(self.module.named_modules())
        for name in self.layers:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if name in self._reached:
                return
            if not isinstance(output, torch.Tensor):
                raise DissectError(
                    f"layer {name!r} returns {type(output).__name__}, not a tensor; "
                    "trace one of its sub-layers instead (dissect layers MODEL lists them)."
                )
            self._reached.add(name)
            if self._static_batch is not None and self._rows is not None:
                output = output[: self._rows]  # padding rows of a static-batch network
            if self.detach:
                output = output.detach()
            layout = None if self.channels_last is None else name in self.channels_last
            output = as_maps(output, self._image, layout)
            if self._consume is not None:
                self._consume(name, output)
            else:
                self.outputs[name] = output.clone() if self.clone else output
            if self.stop and len(self._reached) == len(self.layers):
                raise _StopForward

        return hook

    def __call__(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the network on ``inputs``; return the traced outputs by layer name.

        Raises
        ------
        DissectError
            If a traced layer was never reached by the forward pass.
        """
        if not self._handles:
            raise RuntimeError("LayerTrace must be entered (use it in a with statement)")
        batch = self._static_batch
        if batch is not None and len(inputs) == 1 and len(inputs[0]) > batch:
            parts = [self(part) for part in inputs[0].split(batch)]
            return {name: torch.cat([part[name] for part in parts]) for name in self.layers}
        self.outputs, self._reached = {}, set()
        self._rows = len(inputs[0]) if inputs and isinstance(inputs[0], torch.Tensor) else None
        self._image = tuple(inputs[0].shape[-2:]) if inputs else (0, 0)
        try:
            self.module(*inputs)
        except _StopForward:
            pass
        finally:
            self._rows = None
        missing = [name for name in self.layers if name not in self._reached]
        if missing:
            raise DissectError(
                f"layer(s) {', '.join(missing)} were never reached by the forward pass "
                "(defined but unused in forward?); pick layers the network runs."
            )
        outputs, self.outputs = self.outputs, {}
        return outputs

    def stream(self, consume: Callable[[str, torch.Tensor], None], *inputs: torch.Tensor) -> None:
        """Run the network on ``inputs``, calling ``consume(name, output)`` as each layer runs.

        Nothing is copied or kept: ``consume`` sees each output before a later in-place
        operation can change it, and the outputs are freed as the forward goes on.

        Raises
        ------
        DissectError
            If a traced layer was never reached by the forward pass.
        """
        batch = self._static_batch
        if batch is not None and len(inputs) == 1 and len(inputs[0]) > batch:
            for name, output in self(*inputs).items():  # split into parts, joined per layer
                consume(name, output)
            return
        self._consume = consume
        try:
            self(*inputs)
        finally:
            self._consume = None
