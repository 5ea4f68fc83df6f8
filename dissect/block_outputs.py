"""The layers dissected by default: block outputs, one per resolution stage.

The rule, read from one forward pass of a random image with autograd recording:

1. A *block* is a module with weights that adds or concatenates two paths starting at the same
   input of the module, at least one of them through weights: a residual add (ResNet's basic and
   bottleneck blocks, inverted residuals, ConvNeXt, Swin and ViT blocks; the block's output is
   taken *after* the skip is added) or a dense concatenation (DenseNet). The add or concatenation
   belongs to the smallest module that computes it, so a space-to-depth concatenation of slices
   (Swin's patch merging) or a gate that multiplies (squeeze-and-excitation) makes no block.
   Every module of a block's class is a block too (MobileNet's strided inverted residuals have
   no skip), and a block inside another block does not count.
2. Blocks are grouped into *stages*: consecutive blocks with the same output resolution. The
   default is the last block of each stage, named by the outermost module that returns the very
   same tensor and holds no block of another stage (ResNet-50: ``layer1`` .. ``layer4``, not
   ``layer4.2``; never the whole trunk). A network whose blocks all keep one resolution (a ViT,
   an MLP-Mixer) gets every block.
3. A network without blocks (AlexNet, VGG, plain stacks, U-Net-style decoders whose skips join
   in the top module) gets the last module of each resolution stage: the last leaf module (not a
   dropout, identity, flatten or adaptive pooling to a fixed grid) before the resolution changes
   (VGG-16: the ReLU after each stage's last convolution, then ``pool5``).

Only outputs that are maps count: (B, C, H, W), channels-last (B, H, W, C) or tokens over a patch
grid (B, N, C), with more than one position. A network whose forward cannot run with autograd
falls back to every convolution and pooling layer. The built-in networks name their own default
(:class:`dissect.zoo.BuiltinModel`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import DissectError
from .hooks import channels_last_by_shape, token_grid

if TYPE_CHECKING:
    from .models import LoadedModel

#: Leaf modules that never end a stage: they pass their input on, or pool to a fixed grid (the
#: classifier's input, not a resolution of the image).
PASS_THROUGH = (
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Flatten,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
)
#: Autograd nodes that merge paths: additions (residuals) and concatenations (dense blocks).
_MERGES = re.compile(r"(Add|Cat)Backward\d+$")
#: The fallback's layer types (every convolution and pooling layer).
CONV_AND_POOL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class DefaultLayers:
    """The default layers of a network and the rule that chose them.

    Attributes
    ----------
    layers : list of str
        Layer names in forward order.
    rule : str
        The rule, in words (``dissect layers`` prints it).
    blocks : list of str
        Every block found (empty for a plain stack).
    """

    layers: list[str]
    rule: str
    blocks: list[str] = field(default_factory=list)


@dataclass
class _Call:
    name: str
    module: nn.Module
    inputs: set
    output: object = None
    grid: tuple[int, int] | None = None


def model_default_layers(loaded: LoadedModel, image_size: tuple[int, int]) -> DefaultLayers:
    """The layers dissected when none are named (``dissect run`` without ``--layers``,
    :func:`dissect.run_dissection` without ``layers=``): the model's own default (the built-in
    networks: every convolution and pooling layer), else :func:`default_layers`.

    Parameters
    ----------
    loaded : LoadedModel
        The model, perhaps with its own default (``loaded.layers``).
    image_size : (int, int)
        Input (height, width) of the forward pass that finds blocks and resolutions.
    """
    if loaded.layers:
        return DefaultLayers(list(loaded.layers), "the built-in model's own")
    return default_layers(loaded.module, image_size)


def default_layers(module: nn.Module, image_size: tuple[int, int] = (224, 224)) -> DefaultLayers:
    """The block outputs of ``module`` (see the module docstring for the rule).

    Parameters
    ----------
    module : nn.Module
        The network, in eval mode.
    image_size : (int, int)
        Input (height, width) of the forward pass that finds blocks and resolutions.

    Returns
    -------
    DefaultLayers
    """
    try:
        calls = _trace(module, image_size)
    except DissectError:  # a model that says what is wrong (a .pt2 of another input size)
        raise
    except Exception as error:  # noqa: BLE001 - any model that cannot run with autograd
        warnings.warn(
            f"the default layers could not be read from a forward pass ({type(error).__name__}: "
            f"{error}); every convolution and pooling layer is the default instead.",
            stacklevel=2,
        )
        return DefaultLayers(conv_and_pool(module), "every convolution and pooling layer")
    blocks = _blocks(calls)
    if blocks:
        stages = _stages(blocks)
        if len(stages) == 1:
            kinds = ", ".join(sorted({type(call.module).__name__ for call in blocks}))
            names = [call.name for call in blocks]
            return DefaultLayers(names, f"every block ({kinds}): one resolution throughout", names)
        chosen = [_outermost(stage, blocks, calls) for stage in stages]
        kinds = ", ".join(sorted({type(call.module).__name__ for call in blocks}))
        rule = f"the last block ({kinds}) of each of {_stages_text(stages)}"
        return DefaultLayers(chosen, rule, [call.name for call in blocks])
    leaves = [
        call
        for call in _first_calls(calls)
        if call.grid and not list(call.module.children()) and not _passes_through(call.module)
    ]
    stages = _stages(leaves)
    return DefaultLayers(
        [stage[-1].name for stage in stages],
        f"no blocks: the last module of each of {_stages_text(stages)}",
    )


def _trace(module: nn.Module, size: tuple[int, int]) -> list[_Call]:
    names = {}
    for name, child in module.named_modules():
        names.setdefault(id(child), name)
    calls: list[_Call] = []
    open_calls: list[int] = []

    def before(child: nn.Module, args: tuple, kwargs: dict) -> None:
        nodes = {tensor.grad_fn for tensor in _tensors((args, kwargs)) if tensor.grad_fn}
        open_calls.append(len(calls))
        calls.append(_Call(names.get(id(child), "?"), child, nodes))

    def after(child: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
        call = calls[open_calls.pop()]
        tensor = next(_tensors(output), None)
        if tensor is not None:
            call.output, call.grid = tensor.grad_fn, _grid(tensor.shape, size)

    handles = []
    for child in module.modules():
        handles.append(child.register_forward_pre_hook(before, with_kwargs=True))
        handles.append(child.register_forward_hook(after, with_kwargs=True))
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, *size, generator=generator).to(device).requires_grad_()
    try:
        with torch.enable_grad():
            module(image * 1.0)  # a node of its own, so the input has a grad_fn
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _tensors(value: object) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _grid(shape: torch.Size, size: tuple[int, int]) -> tuple[int, int] | None:
    """The positions of a map-like output, or None (vectors, single positions)."""
    grid = None
    if len(shape) == 4:
        grid = tuple(shape[1:3]) if channels_last_by_shape(shape, size) else tuple(shape[2:4])
    elif len(shape) == 3 and (tokens := token_grid(shape[1], size)) is not None:
        grid = tokens[1:]
    return grid if grid and grid[0] * grid[1] > 1 else None


def _reach(call: _Call, weighted: set) -> dict:
    """For every autograd node of ``call``'s forward: the inputs of ``call`` it depends on, and
    whether its path from them passes a module with weights (a node of ``weighted``)."""
    memo: dict = {}
    stack = [(call.output, False)]
    while stack:
        node, expanded = stack.pop()
        if node in memo:
            continue
        if node in call.inputs:
            memo[node] = (frozenset([node]), False)
            continue
        children = _children(node)
        if expanded:
            reached = frozenset().union(*(memo[child][0] for child in children))
            through = node in weighted or any(memo[child][1] for child in children)
            memo[node] = (reached, through)
        else:
            stack.append((node, True))
            stack.extend((child, False) for child in children if child not in memo)
    return memo


def _children(node: object) -> list:
    return list(dict.fromkeys(child for child, _ in node.next_functions if child is not None))


def _skip_merges(call: _Call, memo: dict) -> set:
    """Adds and concatenations of ``call`` (``memo``: its :func:`_reach`) that join a path
    through weights with another path from the same input: a residual or dense skip."""
    merges = set()
    for node in memo:
        if node in call.inputs or not _MERGES.match(type(node).__name__):
            continue
        branches = [memo[child] for child in _children(node) if memo[child][0]]
        for first, (inputs, through) in enumerate(branches):
            for other_inputs, other_through in branches[first + 1 :]:
                if inputs & other_inputs and (through or other_through):
                    merges.add(node)
    return merges


def _blocks(calls: list[_Call]) -> list[_Call]:
    """The first call of every block, in forward order (see the rule, step 1)."""
    candidates = [
        call
        for call in _first_calls(calls)
        if call.name and call.output is not None and call.inputs and _has_weights(call.module)
    ]
    weighted = {
        call.output
        for call in calls
        if next(call.module.parameters(recurse=False), None) is not None
    }
    reach = {id(call): _reach(call, weighted) for call in candidates}
    owners: dict = {}  # every add and concatenation -> the smallest module that computes it
    for call in sorted(candidates, key=lambda call: len(reach[id(call)])):
        for node in reach[id(call)]:
            if node not in call.inputs and _MERGES.match(type(node).__name__):
                owners.setdefault(node, call)
    skips = {id(owner): _skip_merges(owner, reach[id(owner)]) for owner in owners.values()}
    kinds = {type(owner.module) for node, owner in owners.items() if node in skips[id(owner)]}
    found = [call for call in _first_calls(calls) if call.name and type(call.module) in kinds]
    names = {call.name for call in found}
    return [
        call
        for call in found
        if call.grid and not any(call.name.startswith(f"{other}.") for other in names)
    ]


def _stages(calls: list[_Call]) -> list[list[_Call]]:
    stages: list[list[_Call]] = []
    for call in calls:
        if stages and stages[-1][-1].grid == call.grid:
            stages[-1].append(call)
        else:
            stages.append([call])
    return stages


def _outermost(stage: list[_Call], blocks: list[_Call], calls: list[_Call]) -> str:
    """The stage's last block, named by the outermost module that returns the very same tensor
    and holds no block of another stage (``layer1`` for ``layer1.2``, never the whole trunk)."""
    by_name = {call.name: call for call in reversed(calls)}
    last = stage[-1]
    own = {call.name for call in stage}
    others = [call.name for call in blocks if call.name not in own]
    parts = last.name.split(".")
    for end in range(1, len(parts)):
        outer = by_name.get(".".join(parts[:end]))
        if (
            outer is not None
            and outer.output is last.output
            and not any(name.startswith(f"{outer.name}.") for name in others)
        ):
            return outer.name
    return last.name


def _first_calls(calls: list[_Call]) -> list[_Call]:
    seen: set = set()
    first = []
    for call in calls:
        if id(call.module) not in seen:
            seen.add(id(call.module))
            first.append(call)
    return first


def _has_weights(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _passes_through(module: nn.Module) -> bool:
    return isinstance(module, PASS_THROUGH) or "Drop" in type(module).__name__


def conv_and_pool(module: nn.Module) -> list[str]:
    """Every convolution and pooling layer, in definition order (the fallback, and the built-in
    networks' own default). Layers of a ``.pt2`` program count by the module they were exported
    from (``original_type``, see :mod:`dissect.models.export`)."""
    kinds = {f"{kind.__module__}.{kind.__qualname__}" for kind in CONV_AND_POOL}
    return [
        name
        for name, child in module.named_modules()
        if name
        and (isinstance(child, CONV_AND_POOL) or getattr(child, "original_type", None) in kinds)
    ]


def _stages_text(stages: list) -> str:
    return f"{len(stages)} resolution stage{'s' if len(stages) > 1 else ''}"
