"""DATA sources: a folder of images, a Broden directory, the built-in synthetic world, ADE20K,
Pascal VOC, COCO panoptic and Cityscapes in their own layouts (``formats/``).

``open_data(spec)`` turns a DATA spec into an :class:`~dissect.images.ImageSource`. Sources with
dense concept masks implement :class:`~dissect.datasets.masks.SegmentedSource`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DissectError
from ..images import ImageSource
from ..specs import dataset_spec
from .broden import BrodenDataset
from .folder import ImageFolder
from .formats import open_format
from .synthetic import open_synthetic


def open_data(spec: str | ImageSource) -> ImageSource:
    """Open a DATA spec.

    Parameters
    ----------
    spec : str or ImageSource
        ``synthetic:N`` or ``synthetic:N:SEED`` (the built-in world), a Broden-format directory
        (it holds ``index.csv``), a dataset in its own layout (``ade20k:PATH``, ``voc:PATH``,
        ``coco-panoptic:PATH``, ``cityscapes:PATH``, each with an optional ``:train``, ``:val``
        or ``:test``), or a folder of images. A source object is returned as is.

    Returns
    -------
    ImageSource
    """
    if isinstance(spec, ImageSource):
        return spec
    spec = str(spec)
    if spec.startswith("synthetic:") or spec == "synthetic":
        return open_synthetic(spec)
    dataset = dataset_spec(spec)
    if dataset is not None:
        return open_format(*dataset)
    path = Path(spec)
    if (path / "index.csv").is_file():
        return BrodenDataset(path)
    if not path.exists():
        raise DissectError(
            f"DATA {spec!r} is neither an existing folder nor a spec like 'synthetic:500'. "
            "Give a folder of images, a Broden directory, or synthetic:N[:SEED]."
        )
    return ImageFolder(path)
