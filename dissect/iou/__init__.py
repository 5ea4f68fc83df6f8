"""Automatic unit labels by IoU with dense concept masks (NetDissect, Bau et al. 2017).

For unit k and concept c, over the whole dataset::

    IoU(k, c) = sum |M_k ∩ L_c| / sum |M_k ∪ L_c|

where M_k is the unit's activation map upsampled to the input (aligned by the layer's stride and
offset) and kept above the unit's threshold T_k, and L_c the pixels labelled c. An image-level
concept (a scene) covers the whole image. As in NetDissect, the union only counts the unit's area
on images where the concept's category is annotated, so a unit is not blamed for firing on images
that carry no part labels, say: ``union = A_k,cat(c) + |L_c| - I_k,c``.

- ``concepts.py``: concept masks read and stacked in batches;
- ``tally.py``: :class:`IoUStats`, the three counters (units x concepts, units x categories,
  concepts), mergeable, and the counting of one layer's maps;
- ``significance.py``: the permutation null and label p-values;
- ``counting.py``: the IoU pass (:func:`compute_iou`, a listener of :mod:`dissect.passes`);
- ``labelling.py``: :func:`autolabel` writes ``iou/<layer>.npz``, ``iou/concepts.csv`` and the
  ``iou`` label source (``dissect autolabel``); :func:`read_iou`;
- ``regions.py``: concept masks as regions, decoded once per image; the real pairing and the
  permutation null counted from them at once (for ``samepass.py``);
- ``samepass.py``: the labels, and their null, in the ``dissect run --iou`` pass.
"""

from .counting import IoUListener, compute_iou
from .labelling import autolabel, best_concepts, read_iou, write_outputs
from .tally import IoUStats

__all__ = [
    "IoUListener",
    "IoUStats",
    "autolabel",
    "best_concepts",
    "compute_iou",
    "read_iou",
    "write_outputs",
]
