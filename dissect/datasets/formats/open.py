"""``open_format(kind, root, split)``: a dataset reader by its ``--from`` name."""

from __future__ import annotations

from pathlib import Path

from ...errors import DissectError
from ...specs import DATASET_FORMATS as FORMATS
from ..masks import SegmentedSource


def open_format(kind: str, root: str | Path, split: str = "val", **options) -> SegmentedSource:
    """Open a dataset in its own layout.

    Parameters
    ----------
    kind : {"ade20k", "voc", "coco-panoptic", "cityscapes"}
        The dataset.
    root : path-like
        Its folder (see each reader's module for the layout).
    split : str
        ``val`` (default) or ``train`` (Cityscapes also ``test``; VOC any ImageSets list).
    **options
        VOC only: ``annotations`` (the folder of index PNGs) and ``classes`` (a class list).
    """
    from .ade20k import ADE20K
    from .cityscapes import Cityscapes
    from .coco import CocoPanoptic
    from .voc import PascalVOC

    readers = {
        "ade20k": ADE20K,
        "voc": PascalVOC,
        "coco-panoptic": CocoPanoptic,
        "cityscapes": Cityscapes,
    }
    if kind not in readers:
        raise DissectError(f"unknown dataset format {kind!r}; one of {', '.join(FORMATS)}.")
    if not Path(root).is_dir():
        raise DissectError(f"{kind} folder {str(root)!r} does not exist.")
    if options and kind != "voc":
        raise DissectError("--annotations and --classes apply to --from voc only.")
    return readers[kind](root, split, **options)
