"""Segment each unit's top images to the region the unit responds to (Zhou et al., 2015).

A unit's activation map on one of its top images becomes a mask of the region it responds to by
one of two rules (``rule``):

- ``threshold`` (NetDissect's, the default): the map upsampled to the input (bilinear, aligned
  with the layer's stride and offset by :func:`dissect.upsample.upsample_maps`) above the unit's
  threshold T from the dissection, or above a fraction of the map's peak;
- ``disk`` (the rule Zhou et al. released for their annotation images): a disk with the area of
  the layer's mean empirical receptive field (``dissect rf``, half-max rule) around every map
  cell at least a fraction (0.5) of the image's maximum.

From the mask come three pictures: the image with everything outside the region dimmed,
an outline of the region drawn on the image, and a tight crop around it; a grid puts a unit's
top images side by side.

The pure functions (:func:`threshold_masks`, :func:`peak_thresholds`, :func:`disk_masks`,
:func:`dim_outside`,
:func:`outline`, :func:`crop_box`, :func:`crop`, :func:`image_grid`) take and return numpy
arrays. :func:`iter_segments` recomputes the maps of a layer's top images (one forward per image,
shared by every unit that has it among its top images) and yields a :class:`UnitSegments` per
unit; :func:`write_segments` writes them under ``segments/<layer>/`` (``segments_disk/<layer>/``
for the disk rule, so both can be compared; ``dissect segment``).

Layout: ``rules.py`` (map to mask), ``pictures.py`` (dim, outline, crop, grid), ``maps.py`` (the
maps of top images, one pass), ``segments.py`` (:func:`iter_segments`), ``write.py``
(:func:`write_segments`); this module only re-exports.
"""

from ..config import PICTURES
from .maps import TopMaps, top_maps
from .pictures import crop, crop_box, dim_outside, image_grid, outline, write_png
from .rules import RULES, disk_masks, peak_thresholds, threshold_masks
from .segments import UnitSegments, iter_segments, layer_rf_size
from .write import FOLDERS, KINDS, write_segments

__all__ = [
    "FOLDERS",
    "KINDS",
    "PICTURES",
    "RULES",
    "TopMaps",
    "UnitSegments",
    "crop",
    "crop_box",
    "dim_outside",
    "disk_masks",
    "image_grid",
    "iter_segments",
    "layer_rf_size",
    "outline",
    "peak_thresholds",
    "threshold_masks",
    "top_maps",
    "write_png",
    "write_segments",
]
