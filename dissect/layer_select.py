"""``--layers`` as users mean them: exact names, globs and type filters.

Each comma-separated item is one of:

- an exact module name of ``model.named_modules()`` (``layer4``, ``features.10``);
- a glob over the dot-separated parts of names: ``*`` and ``?`` stay within one part, so
  ``layer*`` is ``layer1`` .. ``layer4`` (not ``layer1.0.conv1``) and ``features.*`` is every
  direct child of ``features``; ``**`` spans any number of parts (``**.conv2``);
- ``type:NAME`` (or a glob of it: ``type:*Norm2d``), every module of that class, by its class name
  (``type:Bottleneck``, ``type:Conv2d``) or its qualified name (``type:torch.nn.Conv2d``); a
  layer of a ``.pt2`` program counts by the module it was exported from.

Names keep the network's order; an item that matches nothing is one line naming the closest
layers.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence

from torch import nn

from .errors import DissectError

_WILDCARDS = "*?["


def is_pattern(item: str) -> bool:
    """Whether a ``--layers`` item is a glob or a type filter rather than one exact name."""
    return item.startswith("type:") or any(char in item for char in _WILDCARDS)


def select_layers(module: nn.Module, items: Sequence[str]) -> list[str]:
    """The layer names that ``items`` (names, globs, ``type:`` filters) pick, each once.

    Parameters
    ----------
    module : nn.Module
        The network.
    items : sequence of str
        What the user asked for.

    Returns
    -------
    list of str
        Exact names first in the order given; each pattern adds its matches in network order.

    Raises
    ------
    DissectError
        If no item is given, or an item matches no layer.

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    >>> select_layers(net, ["type:Conv2d"])
    ['0', '2']
    """
    modules = [(name, child) for name, child in module.named_modules() if name]
    available = [name for name, _ in modules]
    if not items:
        raise DissectError(
            f"no layer given; the network has {preview(available)}. "
            "Pick layers with --layers (see dissect layers MODEL)."
        )
    known = set(available)
    chosen: list[str] = []
    for item in items:
        if item in known:
            chosen.append(item)
            continue
        matches = [name for name, child in modules if _matches(item, name, child)]
        if not matches:
            raise DissectError(_no_match(item, modules))
        chosen.extend(matches)
    return list(dict.fromkeys(chosen))


def _matches(item: str, name: str, child: nn.Module) -> bool:
    if item.startswith("type:"):
        wanted = item[len("type:") :]
        kinds = {type(child).__name__, f"{type(child).__module__}.{type(child).__qualname__}"}
        original = getattr(child, "original_type", None)
        if original:
            kinds |= {original, original.rpartition(".")[2]}
        return any(fnmatch.fnmatchcase(kind, wanted) for kind in kinds)
    return any(char in item for char in _WILDCARDS) and _glob(item.split("."), name.split("."))


def _glob(pattern: list[str], parts: list[str]) -> bool:
    """Match name parts against pattern parts; ``**`` takes any number of parts."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_glob(rest, parts[start:]) for start in range(len(parts) + 1))
    return bool(parts) and fnmatch.fnmatchcase(parts[0], head) and _glob(rest, parts[1:])


def _no_match(item: str, modules: list[tuple[str, nn.Module]]) -> str:
    available = [name for name, _ in modules]
    if item.startswith("type:"):
        kinds = list(dict.fromkeys(type(child).__name__ for _, child in modules))
        close = difflib.get_close_matches(item[len("type:") :], kinds, n=5, cutoff=0.5)
        hint = f"did you mean type:{', type:'.join(close)}? " if close else ""
        return (
            f"--layers {item!r} matches no layer; {hint}The network's types: {preview(kinds)}. "
            "dissect layers MODEL lists every layer with its type."
        )
    close = difflib.get_close_matches(item, available, n=5, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    what = "matches no layer" if is_pattern(item) else "is not in the network"
    return (
        f"layer {item!r} {what}; {hint}It has {preview(available)}. "
        "dissect layers MODEL lists every layer (globs: layer*, features.*; types: type:Conv2d)."
    )


def preview(names: Sequence[str], limit: int = 12) -> str:
    """The first ``limit`` names and how many there are in all."""
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} layers)" if len(names) > limit else "")
