"""The concept-mask interface shared by the synthetic world and Broden directories.

Both implement :class:`SegmentedSource`: an :class:`~dissect.images.ImageSource` whose images also
carry concept labels, per pixel (objects, parts, materials, colours) or per image (scenes), in the
shape NetDissect's Broden format gives them. IoU labelling reads nothing else, so real Broden data
and the built-in world go through the same code.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..images import ImageSource

#: Concept categories in the order Broden lists them.
CATEGORIES = ("color", "object", "part", "material", "scene", "texture")


@dataclass
class Segmentation:
    """The concept labels of one image.

    Attributes
    ----------
    pixel : dict of str to list of ndarray
        Category -> label maps of shape (H, W) (the image's own size, as ``read_rgb`` returns
        it), int32 concept numbers, 0 where unlabelled. A category may have several maps for
        one image when its concepts overlap (Broden stores one PNG per map).
    image : dict of str to list of int
        Category -> concept numbers that hold for the whole image (a scene; Broden's
        image-level textures). IoU labelling treats them as masks covering every pixel.
    """

    pixel: dict[str, list[np.ndarray]] = field(default_factory=dict)
    image: dict[str, list[int]] = field(default_factory=dict)


class SegmentedSource(ImageSource):
    """An image source with dense concept labels.

    Subclasses set :attr:`concepts` and implement :meth:`segmentation`.
    """

    #: One row per concept: ``number`` (1..), ``name``, ``category`` (one of CATEGORIES).
    #: Concept numbers are unique across categories, as in Broden's ``label.csv``.
    concepts: pd.DataFrame

    @abc.abstractmethod
    def segmentation(self, index: int) -> Segmentation:
        """The concept labels of image ``index``, at the size ``read_rgb(index)`` returns.

        Raises :class:`~dissect.images.ImageReadError` when a label map cannot be read: the image
        is then skipped and listed, like an unreadable image.
        """

    def concept_names(self) -> dict[int, str]:
        """Concept number -> name."""
        return dict(zip(self.concepts["number"], self.concepts["name"], strict=True))

    def concept_categories(self) -> dict[int, str]:
        """Concept number -> category."""
        return dict(zip(self.concepts["number"], self.concepts["category"], strict=True))
