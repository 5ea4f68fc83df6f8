"""Theoretical receptive field, stride (jump) and offset of every layer, probed from the network.

The geometry is measured on the network itself, so it holds for any architecture (branches,
dilation, ``ceil_mode`` pooling, upsampling, functional calls and the ATen operators of exported
programs), not only a list of layer types: :mod:`dissect.geometry.probe` runs the network once
with monotone surrogates of its operations and reads, for a few feature positions of each layer,
which input pixels they are connected to; :mod:`dissect.geometry.fit` turns that into numbers.

Conventions (per axis, input pixel coordinates):

- ``stride``: input pixels between neighbouring feature positions (the "jump"; fractional after
  upsampling);
- ``offset``: input coordinate of the centre of the receptive field of feature position 0, so
  position ``i`` is centred at ``offset + i * stride`` (may be negative: padding);
- ``rf``: side of the receptive field, counting pixels that fall in the padding (unclipped), as in
  the usual ``r_l = r_{l-1} + (k_l - 1) * jump_{l-1}`` recursion.

A layer after an operation that mixes all positions (normalisation over space, global pooling,
attention) is *global*: every position depends on the whole image. Its ``rf`` is the image and
``stride``/``offset`` say where its positions sit (through its local paths where it has any,
else as a plain resize would put them). A layer the probe cannot measure keeps the plain-resize
geometry and says why in ``problem``; the other layers are unaffected.

:func:`cached_layer_geometry` keeps what the probe found on disk (:mod:`dissect.geometry.cache`),
so a second run of the same network, layers and size does not probe again.
"""

from .cache import cached_layer_geometry
from .layer import LayerGeometry
from .measure import CANVASES, geometry_table, layer_geometry

__all__ = [
    "CANVASES",
    "LayerGeometry",
    "cached_layer_geometry",
    "geometry_table",
    "layer_geometry",
]
