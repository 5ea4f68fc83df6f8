"""A segmenter's concepts table: which output channel is which concept, and how to read them.

The table (CSV, or a DataFrame) has one row per output channel: ``index`` (0..C-1), ``name``,
``category`` (``object``, ``part``, ``material``, ``color``, ``scene``, ...) and optionally
``head``. Channels of one head compete: each pixel takes the head's highest-scoring channel (a
softmax head). A head of a single channel is a binary mask, on where its score is above 0 (a
sigmoid, multi-label output: give each class its own head). Without a ``head`` column, the
channels of one category form a head. A row with an empty name is "nothing of this head" (the
background class of a softmax head). A pixel can be labelled in several heads at once (an
object, a part and a material).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..errors import DissectError


@dataclass(frozen=True)
class Head:
    """Channels read together: ``channels`` (indices), their concept ``numbers`` (0: none)."""

    name: str
    channels: np.ndarray
    numbers: np.ndarray


class SegmenterConcepts:
    """A validated concepts table: the source's ``concepts`` and the decoding of scores.

    Parameters
    ----------
    table : DataFrame or path-like
        ``index,name,category[,head]``, one row per output channel.
    """

    def __init__(self, table: pd.DataFrame | str | Path):
        where = "the concepts table"
        if not isinstance(table, pd.DataFrame):
            where = f"concepts table {str(table)!r}"
            try:
                table = pd.read_csv(table, keep_default_na=False, dtype=str)
            except (OSError, ValueError, pd.errors.ParserError) as error:
                raise DissectError(f"cannot read {where}: {error}") from error
        table = table.astype(str).replace("nan", "")
        missing = {"index", "name", "category"} - set(table.columns)
        if missing:
            raise DissectError(
                f"{where} lacks column(s) {', '.join(sorted(missing))}; it needs "
                "index,name,category[,head], one row per output channel of the segmenter."
            )
        self.table = _checked(table, where)
        named = self.table[self.table["name"] != ""]
        pairs = list(dict.fromkeys(zip(named["category"], named["name"], strict=True)))
        #: ``number,name,category``: the concepts of the predicted masks, numbered 1..
        self.concepts = pd.DataFrame(
            {
                "number": np.arange(1, len(pairs) + 1),
                "name": [name for _, name in pairs],
                "category": [category for category, _ in pairs],
            }
        )
        number = {pair: i + 1 for i, pair in enumerate(pairs)}
        self.category_of_number = np.array(["", *(category for category, _ in pairs)], dtype=object)
        heads = self.table["head"].where(self.table["head"] != "", self.table["category"])
        self.heads = [
            Head(
                str(head),
                rows["index"].to_numpy(np.int64),
                np.array(
                    [
                        number.get(pair, 0)
                        for pair in zip(rows["category"], rows["name"], strict=True)
                    ]
                ),
            )
            for head, rows in self.table.assign(head=heads).groupby("head", sort=False)
        ]

    def __len__(self) -> int:
        return len(self.table)

    def decode(self, scores: torch.Tensor) -> list[dict[str, list[np.ndarray]]]:
        """Per image, category -> label maps (concept numbers, 0 = none) from (B, C, h, w).

        Raises
        ------
        DissectError
            When ``scores`` is not (B, C, h, w) with C the table's number of rows.
        """
        if scores.ndim != 4 or scores.shape[1] != len(self):
            raise DissectError(
                f"the segmenter's output has shape {tuple(scores.shape)}, not (B, {len(self)}, "
                f"h, w): it must give per-pixel class scores, one channel per row of the "
                f"concepts table ({len(self)} rows)."
            )
        maps: list[dict[str, list[np.ndarray]]] = [{} for _ in range(len(scores))]
        for head in self.heads:
            chosen = _choose(scores, head)
            categories = self.category_of_number[chosen]
            for category in dict.fromkeys(self.category_of_number[head.numbers]):
                if not category:
                    continue
                masked = np.where(categories == category, chosen, 0).astype(np.int32)
                for row, label_map in enumerate(masked):
                    maps[row].setdefault(category, []).append(label_map)
        return maps


def _choose(scores: torch.Tensor, head: Head) -> np.ndarray:
    """(B, h, w) concept numbers the head gives each pixel."""
    picked = scores[:, torch.as_tensor(head.channels.copy())].float()
    if len(head.channels) == 1:
        return np.where(picked[:, 0].numpy() > 0, head.numbers[0], 0)
    return head.numbers[picked.argmax(1).numpy()]


def _checked(table: pd.DataFrame, where: str) -> pd.DataFrame:
    """The table with integer ``index`` 0..C-1 (each once), a ``head`` column, names stripped."""
    table = table.assign(
        name=table["name"].str.strip(),
        category=table["category"].str.strip(),
        head=table["head"].str.strip() if "head" in table else "",
    )
    try:
        index = table["index"].astype(np.int64)
    except ValueError as error:
        raise DissectError(f"{where}: the index column must hold integers ({error}).") from error
    if sorted(index) != list(range(len(table))) or not len(table):
        raise DissectError(
            f"{where}: the index column must list every output channel 0..C-1 once "
            f"(found {len(table)} rows, indices {sorted(index)[:5]}...)."
        )
    blank = table[(table["name"] != "") & (table["category"] == "")]
    if len(blank):
        raise DissectError(f"{where}: channel {blank['index'].iloc[0]} has a name but no category.")
    named = table[table["name"] != ""]
    twice = named[named.duplicated(["category", "name"], keep=False)]
    if len(twice):
        raise DissectError(
            f"{where}: class names collide: {twice['category'].iloc[0]} "
            f"{twice['name'].iloc[0]!r} names channels {', '.join(twice['index'])}; give each "
            "channel its own name (or the same head a single channel)."
        )
    return table.assign(index=index).sort_values("index").reset_index(drop=True)
