"""The semantic types of unit labels, and how label categories map onto them.

The taxonomy follows Zhou et al. (ICLR 2015): six types, keyed ``color`` (simple elements and
colours), ``texture`` (texture / material), ``region`` (region / surface), ``part`` (object part),
``object`` and ``scene``. A :class:`Taxonomy` maps the category a label came with (a dataset
category such as Broden's ``material``, or the type an annotator picked) onto one type key.
Light to import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DissectError

#: The paper's six semantic types, key -> display name, shallow to deep.
DEFAULT_TYPES: dict[str, str] = {
    "color": "simple elements & colors",
    "texture": "texture / material",
    "region": "region / surface",
    "part": "object part",
    "object": "object",
    "scene": "scene",
}

#: Broden's concept categories (and common spellings of type names) -> type key.
BRODEN_MAPPING: dict[str, str] = {
    "color": "color",
    "colour": "color",
    "texture": "texture",
    "material": "texture",
    "region": "region",
    "surface": "region",
    "part": "part",
    "object": "object",
    "scene": "scene",
}


@dataclass(frozen=True)
class Taxonomy:
    """Semantic types and the mapping from label categories onto them.

    Attributes
    ----------
    types : dict of str to str
        Type key -> display name, in plotting order.
    mapping : dict of str to str
        Category (lower case) -> type key. Type keys and display names always map to themselves.
    """

    types: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TYPES))
    mapping: dict[str, str] = field(default_factory=lambda: dict(BRODEN_MAPPING))

    def __post_init__(self) -> None:
        unknown = sorted({value for value in self.mapping.values() if value not in self.types})
        if unknown:
            raise DissectError(
                f"the category mapping names type(s) {', '.join(unknown)} that the taxonomy "
                f"lacks; use one of {', '.join(self.types)}."
            )

    @property
    def keys(self) -> list[str]:
        """Type keys in order."""
        return list(self.types)

    def type_of(self, category: object) -> str | None:
        """The type key of one label category; None for a missing or unknown category."""
        if category is None or category != category:  # None or NaN
            return None
        text = str(category).strip().lower()
        lookup = {key.lower(): key for key in self.types}
        lookup.update({name.lower(): key for key, name in self.types.items()})
        lookup.update({name.lower(): key for name, key in self.mapping.items()})
        return lookup.get(text)

    def map_categories(self, categories: Sequence[object]) -> list[str | None]:
        """:meth:`type_of` for each category."""
        return [self.type_of(category) for category in categories]

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str]) -> Taxonomy:
        """The default types, with ``mapping`` (category -> type key) added to Broden's.

        Type keys not among the defaults become new types, appended in order of appearance.
        """
        types = dict(DEFAULT_TYPES)
        for key in mapping.values():
            types.setdefault(str(key), str(key))
        merged = {**BRODEN_MAPPING, **{str(k).lower(): str(v) for k, v in mapping.items()}}
        return cls(types, merged)

    @classmethod
    def from_csv(cls, path: str | Path) -> Taxonomy:
        """Read a user mapping from a CSV file with columns ``category,type``."""
        import pandas as pd

        path = Path(path)
        try:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise DissectError(
                f"cannot read the category mapping {str(path)!r}: {error}"
            ) from error
        if not {"category", "type"} <= set(table.columns):
            raise DissectError(
                f"the category mapping {str(path)!r} needs columns category,type "
                f"(it has {', '.join(table.columns)})."
            )
        return cls.from_mapping(dict(zip(table["category"], table["type"], strict=True)))


DEFAULT_TAXONOMY = Taxonomy()
