"""What to ablate: single units, concept groups (units sharing a label), random groups (the null).

A concept group is every detector of a layer with the same label (``labels.csv``, by the
detector rule of ``dissect stats``), or with the same semantic type (all object detectors, say).
Its null is ``draws`` random groups of the same size from the same layer; draw r of size m is
``numpy.random.default_rng([seed, m, r])``'s choice of m units without replacement, so the null
never depends on how images are sharded or when a run was interrupted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..errors import DissectError

#: Random groups per group size, by default (the smallest p-value is 1 / (draws + 1)).
DEFAULT_DRAWS = 100
#: The kinds of concept groups: one per label, one per semantic type of the detectors.
GROUP_KINDS = ("label", "type")


@dataclass(frozen=True)
class AblationSet:
    """Units of one layer ablated together.

    Attributes
    ----------
    kind : str
        ``unit``, ``label`` (detectors sharing a label), ``type`` (detectors of one semantic
        type) or ``random`` (a draw of the null).
    name : str
        The unit number, the label, the type, or ``<size>:<draw>``.
    units : tuple of int
        The units, ascending.
    """

    kind: str
    name: str
    units: tuple[int, ...]


def unit_sets(units: list[int]) -> list[AblationSet]:
    """One set per unit."""
    return [AblationSet("unit", str(unit), (unit,)) for unit in units]


def concept_groups(
    detectors: pd.DataFrame, layer: str, kinds: tuple[str, ...]
) -> list[AblationSet]:
    """The concept groups of ``layer`` from a detector table (:func:`dissect.semantics.detectors`).

    Parameters
    ----------
    detectors : DataFrame
        ``layer``, ``unit``, ``label``, ``type``.
    layer : str
        The layer.
    kinds : tuple of str
        Among :data:`GROUP_KINDS`.

    Returns
    -------
    list of AblationSet
        Sorted by kind, then by size (largest first), then by name.
    """
    mine = detectors[detectors["layer"].astype(str) == layer]
    groups = []
    for kind in kinds:
        column = "label" if kind == "label" else "type"
        found = [
            AblationSet(kind, str(name), tuple(sorted(int(u) for u in rows["unit"])))
            for name, rows in mine.groupby(column, sort=True)
        ]
        groups += sorted(found, key=lambda group: (-len(group.units), group.name))
    return groups


def random_groups(n_units: int, sizes: list[int], draws: int, seed: int) -> list[AblationSet]:
    """``draws`` random groups of each size, keyed by (seed, size, draw)."""
    groups = []
    for size in sorted(set(sizes)):
        for draw in range(draws):
            rng = np.random.default_rng([seed, size, draw])
            units = tuple(sorted(int(u) for u in rng.choice(n_units, size, replace=False)))
            groups.append(AblationSet("random", f"{size}:{draw}", units))
    return groups


def masks(sets: list[AblationSet], n_units: int) -> torch.Tensor:
    """(K, units) bool: the units each set ablates."""
    result = torch.zeros(len(sets), n_units, dtype=torch.bool)
    for row, group in enumerate(sets):
        result[row, list(group.units)] = True
    return result


def parse_units(text: str | list[int] | None) -> str | list[int]:
    """``all``, ``labelled``, ``none`` or unit numbers (``0,3,17``)."""
    if text is None:
        return "all"
    if isinstance(text, list):
        return text
    if text in ("all", "labelled", "none"):
        return text
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise DissectError(
            f"--units takes all, labelled, none or unit numbers like 0,3,17: {text!r}."
        ) from error
