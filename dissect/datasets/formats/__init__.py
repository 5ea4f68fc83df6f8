"""Real datasets' own layouts as sources of concept masks: ADE20K, Pascal VOC (and index-PNG
datasets like Pascal-Context), COCO panoptic, Cityscapes. Each reader is a
:class:`~dissect.datasets.masks.SegmentedSource`, opened as DATA (``ade20k:PATH[:SPLIT]``) or
converted to the Broden layout by ``dissect data import``."""

from .ade20k import ADE20K
from .cityscapes import Cityscapes
from .coco import CocoPanoptic
from .open import FORMATS, open_format

__all__ = ["ADE20K", "FORMATS", "Cityscapes", "CocoPanoptic", "open_format"]
