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
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..device import pick_device
from ..dissection import Dissection, layer_file_name
from ..errors import DissectError
from ..hooks import LayerTrace
from ..images import ImageSource, Preprocess, make_loader
from ..io import read_csv, write_csv
from ..lock import writes
from ..models import LoadedModel
from ..upsample import upsample_maps
from .pictures import crop, crop_box, dim_outside, image_grid, outline, write_png
from .rules import RULES, disk_masks, peak_thresholds, threshold_masks

#: Pictures made for every top image, in the order files are written.
KINDS = ("segmented", "outline", "crop")
#: Everything :func:`write_segments` can write: the pictures of each top image, a grid per unit.
PICTURES = (*KINDS, "grid")
#: Written by default: what the report shows (the rest on request, ``--pictures``).
DEFAULT_PICTURES = ("segmented",)
#: Top images per unit written by default (the report shows the first 5).
DEFAULT_TOP = 10
#: Folder of the pictures of each rule.
FOLDERS = {"threshold": "segments", "disk": "segments_disk"}
#: Cells of the disk rule: at least this fraction of the image's maximum, unless told otherwise.
DISK_FRACTION = 0.5


@dataclass
class UnitSegments:
    """One unit's top images with the region it responds to.

    Attributes
    ----------
    layer : str
        Layer name.
    unit : int
        Unit number.
    indices : ndarray
        (K,) dataset index of each top image, best first.
    scores : ndarray
        (K,) the unit's peak activation on each.
    images : ndarray
        (K, H, W, 3) uint8: the images as the network saw them.
    maps : ndarray
        (K, H, W) float32 activation maps upsampled to the input.
    thresholds : ndarray
        (K,) the threshold applied to each map.
    masks : ndarray
        (K, H, W) bool: the region above threshold.
    """

    layer: str
    unit: int
    indices: np.ndarray
    scores: np.ndarray
    images: np.ndarray
    maps: np.ndarray
    thresholds: np.ndarray
    masks: np.ndarray

    def segmented(self, dim: float = 0.25) -> np.ndarray:
        """(K, H, W, 3) images with the rest dimmed (see :func:`dim_outside`)."""
        return np.stack(
            [dim_outside(i, m, dim) for i, m in zip(self.images, self.masks, strict=True)]
        )

    def outlined(self, color: tuple[int, int, int] = (255, 255, 0)) -> np.ndarray:
        """(K, H, W, 3) images with the region's outline (see :func:`outline`)."""
        return np.stack(
            [outline(i, m, color) for i, m in zip(self.images, self.masks, strict=True)]
        )

    def crops(self, margin: int = 0) -> list[np.ndarray]:
        """The tight crop around the region of each top image (sizes differ)."""
        return [crop(i, m, margin) for i, m in zip(self.images, self.masks, strict=True)]

    def grid(self, dim: float = 0.25, columns: int | None = None) -> np.ndarray:
        """The segmented top images side by side, as one uint8 image."""
        return image_grid(list(self.segmented(dim)), columns)


def top_maps(
    module: torch.nn.Module,
    source: ImageSource,
    preprocess: Preprocess,
    layer: str,
    index: np.ndarray,
    units: Sequence[int],
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = True,
    channels_last: bool = False,
) -> np.ndarray:
    """Recompute the activation maps of units on their top images.

    Each distinct image runs through the network once (stopped at ``layer``), in batches, and
    serves every unit that has it among its top images.

    Parameters
    ----------
    module : nn.Module
        The dissected network, in eval mode.
    source : ImageSource
        The dissected images.
    preprocess : Preprocess
        The dissection's preprocessing.
    layer : str
        Layer name.
    index : ndarray
        (len(units), K) dataset indices of the top images of each unit; -1 marks an empty slot.
    units : sequence of int
        The unit of each row of ``index``.
    batch_size : int
        Images per forward.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    progress : bool
        Show a progress bar.
    channels_last : bool
        The layer returns (B, H, W, C) maps (see :class:`dissect.geometry.LayerGeometry`).

    Returns
    -------
    ndarray
        (len(units), K, h, w) float32 maps of each row's unit (zeros in empty slots): only
        these are kept, not the whole layer's output.
    """
    torch_device = pick_device(device)
    module.to(torch_device)
    units = np.asarray(units, dtype=np.int64)
    wanted = np.unique(index[index >= 0])
    # Slots of each image: positions in the flattened index, found by binary search.
    order = np.argsort(index.ravel(), kind="stable")
    sorted_index = index.ravel()[order]
    maps: np.ndarray | None = None
    loader = make_loader(source, preprocess, wanted.tolist(), batch_size)
    bar = tqdm(total=len(wanted), unit="img", desc=f"maps {layer}", disable=not progress)
    with (
        torch.inference_mode(),
        LayerTrace(
            module, [layer], stop=True, channels_last=[layer] if channels_last else []
        ) as trace,
    ):
        for batch in loader:
            if batch.skipped:
                image, reason = batch.skipped[0]
                raise DissectError(
                    f"top image {source.image_id(image)!r} can no longer be read ({reason}); "
                    "restore it or run dissect run again."
                )
            acts = trace(batch.images.to(torch_device))[layer].float().cpu().numpy()
            if maps is None:
                maps = np.zeros((*index.shape, *acts.shape[2:]), dtype=np.float32)
            for image, act in zip(batch.indices.tolist(), acts, strict=True):
                start, stop = np.searchsorted(sorted_index, [image, image + 1])
                rows, ranks = np.divmod(order[start:stop], index.shape[1])
                maps[rows, ranks] = act[units[rows]]
            bar.update(len(batch.indices))
    bar.close()
    if maps is None:
        raise DissectError(f"layer {layer!r} has no top images to segment.")
    return maps


def iter_segments(
    dissection: Dissection,
    layer: str,
    units: Sequence[int] | None = None,
    top: int | None = None,
    *,
    peak_fraction: float | None = None,
    rule: str = "threshold",
    rf_size: float | None = None,
    model: str | torch.nn.Module | LoadedModel | None = None,
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = True,
) -> Iterator[UnitSegments]:
    """Segment the top images of units of one layer.

    Parameters
    ----------
    dissection : Dissection
        An opened dissection directory.
    layer : str
        A dissected layer.
    units : sequence of int, optional
        Units to segment (default: all).
    top : int, optional
        How many top images per unit (default: all the dissection kept).
    peak_fraction : float, optional
        ``threshold`` rule: threshold each map at this fraction of its own peak instead of the
        unit's threshold T; ``disk`` rule: draw the cells at least this fraction of the map's
        maximum (default 0.5).
    rule : str
        ``threshold`` (NetDissect's, default) or ``disk`` (Zhou et al.'s), see the module
        docstring.
    rf_size : float, optional
        ``disk`` rule: the receptive-field size in pixels (default: the layer's mean empirical
        size from ``receptive_fields_layers.csv``).
    model : str, nn.Module or LoadedModel, optional
        The dissected model (default: loaded again from the manifest's MODEL spec); required
        when the dissection was run on an in-memory module.
    batch_size : int
        Images per forward when recomputing the maps.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    progress : bool
        Show progress bars.

    Yields
    ------
    UnitSegments
        One per unit, in the order of ``units``; a unit's empty top-K slots (fewer images than
        K in the data) are left out.
    """
    if not dissection.geometry(layer).is_spatial:
        raise DissectError(
            f"layer {layer!r} has no spatial map (output {dissection.geometry(layer).output_shape})"
            "; segment a convolution or pooling layer."
        )
    units = dissection.check_units(layer, units)
    if top is not None and top < 1:
        raise DissectError(f"--top must be at least 1, got {top}.")
    if rule not in RULES:
        raise DissectError(f"--rule must be one of {', '.join(RULES)}, got {rule!r}.")
    if peak_fraction is not None:
        peak_thresholds(np.zeros((1, 1)), peak_fraction)  # validates before any work
    if rule == "disk":
        rf_size = layer_rf_size(dissection, layer) if rf_size is None else rf_size
        disk_masks(np.zeros((0, 1, 1)), [0.0], [0.0], 1, rf_size, 1.0)  # validates rf_size
    topk = dissection.topk(layer)
    index = topk["index"][units, :top]
    scores = topk["score"][units, :top]
    unit_thresholds = dissection.thresholds(layer)[units]
    loaded = dissection.load_model(model)
    source = dissection.open_data()
    preprocess = dissection.preprocess
    geometry = dissection.geometry(layer)
    maps = top_maps(
        loaded.module, source, preprocess, layer, index, units, batch_size, device, progress,
        geometry.channels_last,
    )  # fmt: skip

    @functools.lru_cache(maxsize=256)
    def display(image: int) -> np.ndarray:
        return preprocess.display(source.read_rgb(image))

    size = preprocess.image_size
    centres_y = [geometry.center(y, 0)[0] for y in range(maps.shape[2])]
    centres_x = [geometry.center(0, x)[1] for x in range(maps.shape[3])]
    for row, unit in enumerate(tqdm(units, desc=f"segment {layer}", disable=not progress)):
        keep = index[row] >= 0
        upsampled = upsample_maps(torch.from_numpy(maps[row][keep][:, None]), geometry, size)[
            :, 0
        ].numpy()
        if rule == "disk":
            fraction = DISK_FRACTION if peak_fraction is None else peak_fraction
            thresholds = peak_thresholds(maps[row][keep], fraction).astype(np.float32)
            masks = disk_masks(maps[row][keep], centres_y, centres_x, size, rf_size, fraction)
        elif peak_fraction is None:
            thresholds = np.full(len(upsampled), unit_thresholds[row], dtype=np.float32)
        else:
            thresholds = peak_thresholds(upsampled, peak_fraction).astype(np.float32)
        if rule == "threshold":
            masks = threshold_masks(upsampled, thresholds)
        yield UnitSegments(
            layer=layer,
            unit=int(unit),
            indices=index[row][keep],
            scores=scores[row][keep],
            images=np.stack([display(int(image)) for image in index[row][keep]]),
            maps=upsampled,
            thresholds=thresholds,
            masks=masks,
        )


def layer_rf_size(dissection: Dissection, layer: str) -> float:
    """The layer's mean empirical receptive-field size (half-max rule) from ``dissect rf``.

    Raises
    ------
    DissectError
        If the layer's receptive fields have not been measured, or none of its units has a size.
    """
    path = dissection.path("receptive_fields_layers.csv")
    sizes = read_csv(path, dtype={"layer": str}) if path.is_file() else None
    found = sizes[sizes["layer"] == layer]["rf_empirical_mean"] if sizes is not None else []
    if len(found) == 0 or not np.isfinite(float(found.iloc[0])):
        raise DissectError(
            f"the disk rule needs the empirical receptive field of layer {layer!r}: run dissect "
            f"rf {dissection.directory} --layers {layer} first, or give --rf-size PIXELS."
        )
    return float(found.iloc[0])


@writes("dissection")
def write_segments(
    dissection: Dissection,
    layers: Sequence[str] | None = None,
    units: Sequence[int] | None = None,
    top: int | None = DEFAULT_TOP,
    *,
    pictures: Sequence[str] = DEFAULT_PICTURES,
    **options,
) -> pd.DataFrame:
    """Write every unit's segmented top images under ``segments/<layer>/``.

    Per unit and top image, ``segments/<layer>/unit<NNNN>/<rank>_segmented.png`` (what the
    report shows) and, when asked for in ``pictures``, ``_outline.png`` and ``_crop.png``;
    ``grid`` adds ``segments/<layer>/unit<NNNN>_grid.png`` with the segmented images side by
    side. ``segments/<layer>/segments.csv`` lists the top images (rows of units segmented
    earlier and not now are kept). The disk rule writes the same under
    ``segments_disk/``. Each file is written atomically as its unit finishes, so an
    interruption loses at most one unit.

    Parameters
    ----------
    dissection : Dissection
        An opened dissection directory.
    layers : sequence of str, optional
        Layers (default: all dissected ones).
    units : sequence of int, optional
        Units of each layer (default: all).
    top : int, optional
        Top images per unit (default 10; None: all kept).
    pictures : sequence of str
        Which of ``segmented``, ``outline``, ``crop``, ``grid`` to write (default: segmented).
    **options
        ``peak_fraction``, ``rule``, ``rf_size``, ``model``, ``batch_size``, ``device``,
        ``progress``: see :func:`iter_segments`.

    Returns
    -------
    DataFrame
        ``layer, unit, rank, image_index, image, score, threshold, coverage, crop_top,
        crop_left, crop_bottom, crop_right, rule``: one row per top image segmented.
    """
    pictures = (pictures,) if isinstance(pictures, str) else tuple(pictures)
    unknown = sorted(set(pictures) - set(PICTURES))
    if unknown or not pictures:
        raise DissectError(
            f"--pictures takes some of {','.join(PICTURES)}, got {','.join(pictures) or 'none'}."
        )
    kinds = [kind for kind in KINDS if kind in pictures]
    layers = dissection.check_layers(layers)
    options["model"] = dissection.load_model(options.get("model"))
    rule = options.get("rule", "threshold")
    tables = []
    for layer in layers:
        folder = dissection.path(FOLDERS.get(rule, "segments"), layer_file_name(layer))
        rows = []
        for segments in iter_segments(dissection, layer, units, top, **options):
            unit_folder = folder / f"unit{segments.unit:04d}"
            made = {
                "segmented": segments.segmented() if "segmented" in kinds else None,
                "outline": segments.outlined() if "outline" in kinds else None,
                "crop": segments.crops() if "crop" in kinds else None,
            }
            for rank in range(1, len(segments.indices) + 1):
                for kind in kinds:
                    write_png(unit_folder / f"{rank:02d}_{kind}.png", made[kind][rank - 1])
                mask = segments.masks[rank - 1]
                rows.append(
                    {
                        "layer": layer,
                        "unit": segments.unit,
                        "rank": rank,
                        "image_index": int(segments.indices[rank - 1]),
                        "score": float(segments.scores[rank - 1]),
                        "threshold": float(segments.thresholds[rank - 1]),
                        "coverage": float(mask.mean()),
                        **dict(zip(_BOX, crop_box(mask), strict=True)),
                        "rule": rule,
                    }
                )
            for rank in range(len(segments.indices) + 1, _highest_rank(unit_folder) + 1):
                for kind in KINDS:
                    (unit_folder / f"{rank:02d}_{kind}.png").unlink(missing_ok=True)
            if "grid" in pictures:
                write_png(folder / f"unit{segments.unit:04d}_grid.png", segments.grid())
        table = pd.DataFrame(rows)
        images = dissection.images().set_index("index")["path"]
        table.insert(4, "image", images.reindex(table["image_index"]).to_numpy())
        table["run_id"] = dissection.run_id
        write_csv(folder / "segments.csv", _merge_rows(folder / "segments.csv", table))
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


_BOX = ("crop_top", "crop_left", "crop_bottom", "crop_right")


def _highest_rank(folder: Path) -> int:
    """The highest rank of the pictures already in a unit's folder (0 if none)."""
    names = (re.match(r"(\d+)_", path.name) for path in folder.glob("*.png"))
    return max((int(name[1]) for name in names if name), default=0)


def _merge_rows(path: Path, table: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus the rows of units it does not have from an earlier ``segments.csv``."""
    if not path.is_file():
        return table
    old = read_csv(path, dtype={"layer": str, "run_id": str})
    kept = old[~old["unit"].isin(set(table["unit"]))]
    if "run_id" in kept:  # rows of another run are dropped, not kept
        run = table["run_id"].iloc[0] if len(table) else ""
        kept = kept[kept["run_id"].fillna(run) == run]
    return pd.concat([kept, table], ignore_index=True).sort_values(["unit", "rank"], kind="stable")
