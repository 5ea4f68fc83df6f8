"""The one entry point of every method: discrepancy maps of measurements on the occluder grid.

:func:`discrepancy_maps` checks its arguments and runs the naive method (:mod:`dissect.rf.naive`)
or the fast ones (:mod:`dissect.rf.schedule`, with :mod:`dissect.rf.crop` or
:mod:`dissect.rf.incremental`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import METHODS, OcclusionConfig
from ..errors import DissectError
from ..geometry import LayerGeometry
from .naive import naive
from .occlusion import Measurements, OcclusionJob, occluder_corners
from .schedule import fast


def discrepancy_maps(
    module: nn.Module,
    layer: str,
    geometry: LayerGeometry,
    load_image: Callable[[int], torch.Tensor],
    measurements: Measurements,
    patch: torch.Tensor,
    config: OcclusionConfig,
    *,
    method: str = "fast",
    **options: Any,
) -> np.ndarray:
    """Discrepancy of every measurement for every occluder position.

    Parameters
    ----------
    module : nn.Module
        The network, in eval mode.
    layer : str
        The measured layer (a name of ``module.named_modules()``).
    geometry : LayerGeometry
        Geometry of ``layer`` at the input size of the images.
    load_image : callable
        ``load_image(index)`` returns the preprocessed (3, H, W) tensor of image ``index``.
    measurements : Measurements
        Images, units and peak positions to measure.
    patch : Tensor
        The (3, o, o) occluder, see :func:`noise_patch`.
    config : OcclusionConfig
        Occluder size and stride, discrepancy measure, batch size.
    method : str
        ``fast`` (default): ``incremental`` where the network up to ``layer`` is a plain chain of
        convolutions, max pooling and point-wise modules, else ``crop`` (see the module
        docstring); ``naive``: one full forward per occluder position, per measurement, batched
        by ``config.batch_size``. All give the same maps up to float32 round-off. Where the fast
        methods' assumption that a position depends only on its receptive-field box does not
        hold (a global layer, a layer whose geometry was not measured, a layer after upsampling),
        every method runs the naive one.
    **options
        ``device`` (torch.device or str, default cpu): where the forward passes run;
        ``progress`` (bool, default True): show a tqdm bar of occluded passes; ``grids``
        (ndarray, optional): results of an interrupted run, shape (M, ny, nx), filled in place;
        ``done`` (int, default 0; fast method only): occluded passes of ``grids`` already
        finished, in pass order; ``checkpoint`` (callable, optional): ``checkpoint(done)`` is
        called after every batch (the naive method passes 0: it cannot resume, but a stop
        request is honoured there); ``image_size`` ((height, width), optional): the images'
        size, when known (else the first image is read for it). See
        :class:`~dissect.rf.occlusion.OcclusionJob`.

    Returns
    -------
    ndarray, shape (M, ny, nx)
        Float32 discrepancy per measurement and occluder position (rows: occluder corner
        ``y = 0, stride, ...``; columns likewise for ``x``).
    """
    if not geometry.is_spatial or len(geometry.output_shape) != 3:
        raise DissectError(
            f"layer {layer!r} has no spatial feature map; occlusion receptive fields need a "
            "convolution or pooling layer."
        )
    size = patch.shape[-1]
    image_size = _image_size(load_image, measurements, options.get("image_size"))
    config.check_image(image_size)
    corners = tuple(occluder_corners(length, size, config.stride) for length in image_size)
    shape = (len(measurements), len(corners[0]), len(corners[1]))
    known = {"device", "progress", "grids", "done", "checkpoint", "image_size"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"discrepancy_maps() got unexpected keyword argument(s) {unknown}")
    grids = options.get("grids")
    if grids is None:
        grids = np.zeros(shape, dtype=np.float32)
    elif grids.shape != shape:
        raise ValueError(f"grids has shape {grids.shape}, expected {shape}")
    device = torch.device(options.get("device", "cpu"))
    module.to(device)
    patch = patch.to(device)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not _fast_holds(geometry):
        method = "naive"
    job = OcclusionJob(
        module,
        layer,
        geometry,
        load_image,
        measurements,
        patch,
        config,
        corners,
        image_size,
        device,
        options.get("progress", True),
        grids,
        options.get("done", 0),
        options.get("checkpoint"),
        method,
    )
    with torch.inference_mode():
        if method == "naive":
            naive(job)
        else:
            fast(job)
    return grids


def _fast_holds(geometry: LayerGeometry) -> bool:
    """Whether the crop and incremental methods' locality assumption holds for the layer."""
    return geometry.is_local and all(float(s).is_integer() and s > 0 for s in geometry.stride)


def _image_size(load_image, measurements, known: tuple[int, int] | None) -> tuple[int, int]:
    """The images' (height, width): ``known``, else read from the first image."""
    if len(measurements) == 0:
        raise DissectError("no top image to occlude: the selected units have no top images.")
    if known is not None:
        return int(known[0]), int(known[1])
    height, width = load_image(int(measurements.image[0])).shape[-2:]
    return int(height), int(width)
