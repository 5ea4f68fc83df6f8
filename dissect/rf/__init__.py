"""Empirical receptive fields by occlusion (Zhou et al., ICLR 2015, section 3.2).

For a unit and each of its top images, a patch of random pixel noise (the *occluder*, ``occluder``
px square) is pasted at every position of a grid with step ``stride`` px (top-left corners
``0, stride, 2 * stride, ...`` until a patch reaches the last pixel; that last one is clipped
by the border where the stride does not fit the image evenly). For each position the
*discrepancy* is measured:

- ``peak`` (default): ``|a_occluded - a_original|`` of the unit at its peak feature position
  (the ``y, x`` stored with the top image);
- ``map``: ``sum |a_occluded - a_original|`` over every position of the unit's feature map.

That gives a discrepancy map per image on the grid of occluder centres. Each map is re-centred on
the input pixel of the unit's peak (:meth:`LayerGeometry.center`): it is sampled at integer pixel
offsets ``-R..R`` from that pixel by bilinear interpolation between occluder centres (the outermost
centre's value between it and the border, nothing outside the image). The
re-centred maps are averaged over the unit's top images, each offset over the images that cover it
(offsets no image covers are mirrored from the opposite side of the peak, see
:func:`~dissect.rf.maps.average_maps`): that average is the unit's empirical receptive field. Its
size is measured by two rules, in input pixels, as the side of a square of the same area:

- half-max (``rf_empirical``, the paper's): the region where the map is at least ``fraction``
  (0.5) of its maximum; sensitive to a sharp maximum;
- mass (``rf_mass50``, ``rf_mass80``): the smallest region that holds 50% (80%) of the map's
  total discrepancy; steadier.

Both include the blur of the occluder itself (a unit that sees one pixel responds to every
occluder covering it). Units whose discrepancy is zero everywhere have no size and are counted
apart (``n_silent`` of the layer summary). ``rf_theoretical`` is the side of the square with the
area of the theoretical receptive field (``rf`` of the layer geometry, padding pixels counted).

Speed. The naive method (:func:`discrepancy_maps` with ``method="naive"``) runs one full forward
per occluder position, per image, per unit. The fast method computes the same numbers with

- one set of occluded passes per *image*, shared by every unit whose top images include it;
- the forward stopped at the measured layer;
- occluders that cannot touch the theoretical receptive field of any measured position of the
  image skipped (their discrepancy is exactly 0 for a convolution/pooling stack);
- each occluded pass restricted to what the occluder can change, in one of two ways:

  - ``crop`` (any network): the pass runs on a crop of the image, the union of the receptive
    fields of the measured positions the occluder touches (for each image, one crop around all
    its peaks or one per peak, whichever covers fewer pixels). The crop's corner is a multiple
    of the layer stride so its feature grid coincides with the image's, and it is flush with the
    image border wherever such a receptive field reaches past it, so zero padding is the same as
    on the whole image; only positions whose whole receptive field lies in the crop are read;
  - ``incremental`` (networks that reach the layer through a plain chain of convolutions, max
    pooling and point-wise modules, checked on the first image): the unoccluded activations of
    every step are kept, and each step recomputes only a window of outputs, reading the kept
    activations around it with the step's own padding: the outputs whose inputs the occluder
    changed *and* that the measured peak positions depend on (for each image, one window around
    all its peaks or one per peak, whichever costs fewer multiply-adds). Passes are batched by
    the side of their window at the costliest step and the extent of their peaks' box, and run
    at the largest window of their batch kind at every step, so each step handles all passes of
    a batch at once: one gather of the kept activations, one paste of the recomputed window,
    one convolution or pooling, in buffers reused from batch to batch. The last convolution
    computes the measured units' channels alone where nothing after it mixes channels (max
    pooling and point-wise modules other than batch norm; ungrouped);

  ``fast`` picks ``incremental`` when it applies and the crops would cover more than a quarter
  of the image on average, else ``crop``;
- occluded passes streamed in batches of ``batch_size`` whole-image equivalents, never built all
  at once: more passes per batch when they are smaller, as many as hold (channels counted, at
  their largest step, with a convolution's unfolded input) what ``batch_size`` whole-image
  forwards would, so the fast methods' peak memory stays at the naive method's.

All methods use the same seeded noise patch, so their maps agree to float32 round-off.

Resume. Results are written per layer, atomically (``receptive_fields/<layer>.npz``). While a layer
runs, its occluded passes follow a fixed order; every ``checkpoint_seconds`` and on interruption
the finished passes are saved to the process's :class:`~dissect.checkpoint.Checkpoint`
(``receptive_fields/.checkpoint/rank<r>.pt``); Ctrl-C and SIGTERM are deferred to the end of the
batch in flight, which is saved before the run stops. Each finished layer's rows go to
``receptive_fields.csv`` (and its summary) as soon as the layer is done. A rerun with the same
parameters skips finished layers and restarts a partial one after its last saved pass, so an
interruption loses at most the batch in flight; a checkpoint of other settings (layers, units,
occlusion parameters, processes, or a pass order of another version) is refused with one line
until ``restart`` discards it.

Layout: :mod:`~dissect.rf.occlusion` (parameters, noise occluder, grid),
:mod:`~dissect.rf.discrepancy` (the entry point of every method), :mod:`~dissect.rf.naive`,
:mod:`~dissect.rf.crop` and :mod:`~dissect.rf.incremental` (one method each; the chain of steps
the latter runs in :mod:`~dissect.rf.steps`),
:mod:`~dissect.rf.schedule` (batching the fast methods' passes), :mod:`~dissect.rf.maps`
(re-centring, averaging, sizes), :mod:`~dissect.rf.measure` (the measurement per layer,
resumed, written as each layer finishes); this module only re-exports.
"""

from ..config import DISCREPANCIES, METHODS, OcclusionConfig
from ..directory import RF_LAYERS as LAYERS_CSV
from ..directory import RF_MAPS as MAPS_FOLDER
from ..directory import RF_UNITS as UNITS_CSV
from .discrepancy import discrepancy_maps
from .maps import average_maps, layer_summary, map_radius, rf_mass_size, rf_size, theoretical_size
from .measure import load_maps, maps_path, receptive_fields
from .occlusion import Measurements, noise_patch, occluder_corners

__all__ = [
    "DISCREPANCIES",
    "LAYERS_CSV",
    "MAPS_FOLDER",
    "METHODS",
    "UNITS_CSV",
    "Measurements",
    "OcclusionConfig",
    "average_maps",
    "discrepancy_maps",
    "layer_summary",
    "load_maps",
    "map_radius",
    "maps_path",
    "noise_patch",
    "occluder_corners",
    "receptive_fields",
    "rf_mass_size",
    "rf_size",
    "theoretical_size",
]
