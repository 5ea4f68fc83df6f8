"""The dissection directory on disk: one name per file, the manifest and run id, stale outputs.

Every stage reads and writes one directory (see data/README.md for the formats). This module
names each file once, reads the manifest (:func:`read_manifest`, :func:`current_run`), computes
the run id of a pass (:func:`run_digest`), keeps only the rows of the current run when a stage
adds to a table (:func:`keep_run_rows`) and moves the outputs of a replaced run aside
(:func:`retire_stale_outputs`). Light: no torch; :class:`dissect.dissection.Dissection` opens
a directory on top of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .lock import LOCK_FILE

if TYPE_CHECKING:
    import pandas as pd

# What ``dissect run`` writes.
MANIFEST = "manifest.json"
UNITS = "units.csv"
IMAGES = "images.csv"
#: Folder of ``<layer>.npz`` top images.
TOPK = "topk"
#: Folder of the checkpoints of a pass in progress (see :mod:`dissect.checkpoint`).
CHECKPOINT_DIR = ".checkpoint"
#: Where ``dissect run`` moves the later stages' outputs of the run it replaces.
STALE = "stale"
#: What ``dissect run`` itself writes; everything else in the directory is a later stage's output.
RUN_OUTPUTS = frozenset({MANIFEST, UNITS, IMAGES, TOPK, CHECKPOINT_DIR, STALE, LOCK_FILE})

# Labels (``dissect autolabel``, ``dissect import``).
LABELS = "labels.csv"
#: Folder of ``dissect autolabel``: ``<layer>.npz``, ``concepts.csv`` (the concept columns),
#: ``skipped.csv``.
IOU = "iou"
IOU_CONCEPTS = "concepts.csv"
IOU_SKIPPED = "skipped.csv"
#: Folder of the IoU pass's checkpoints (one file per rank).
IOU_CHECKPOINT = f"{IOU}/{CHECKPOINT_DIR}"

# Receptive fields (``dissect rf``).
RF_UNITS = "receptive_fields.csv"
RF_LAYERS = "receptive_fields_layers.csv"
#: Folder of the per-layer map files.
RF_MAPS = "receptive_fields"
#: Folder of rf's checkpoints (the finished passes of the layer in flight), one file per rank.
RF_CHECKPOINT = f"{RF_MAPS}/{CHECKPOINT_DIR}"

# Segmented top images (``dissect segment``): a folder per rule, a table per layer.
SEGMENT_FOLDERS = {"threshold": "segments", "disk": "segments_disk"}
SEGMENTS = "segments.csv"

# Statistics (``dissect stats``): per layer and type, per layer and detected concept.
LAYER_TYPES = "layer_types.csv"
#: Per layer and detected concept, at the top of the directory; not ``iou/concepts.csv``
#: (:data:`IOU_CONCEPTS`, the concept columns of the IoU arrays), which lives in its own folder.
CONCEPTS = "concepts.csv"
AGREEMENT = "layer_agreement.csv"

# Ablation (``dissect ablate``): three summaries, a folder of per-layer tables, the checkpoints.
ABLATION_UNITS = "ablation.csv"
ABLATION_CLASSES = "ablation_classes.csv"
ABLATION_GROUPS = "ablation_groups.csv"
ABLATION = "ablation"
#: Folder of the ablation pass's checkpoints (one file per rank).
ABLATION_CHECKPOINT = f"{ABLATION}/{CHECKPOINT_DIR}"

PLOTS = "plots"
REPORT = "report"


#: How each table is read back: the columns kept as text (a layer named ``0`` stays a name, a
#: run id of digits stays an id), and whether an empty cell reads as '' (text tables) instead of
#: NaN (tables with numbers that may be missing).
_LAYER_RUN = {"layer": str, "run_id": str}
TABLE_READING: dict[str, tuple[dict[str, type], bool]] = {
    f"{IOU}/{IOU_CONCEPTS}": ({}, False),
    RF_UNITS: (_LAYER_RUN, True),
    RF_LAYERS: ({**_LAYER_RUN, "silent_units": str}, True),
    AGREEMENT: ({"layer": str}, True),
    **{name: (_LAYER_RUN, False) for name in (ABLATION_UNITS, ABLATION_CLASSES, ABLATION_GROUPS)},
    #: ``<rule folder>/<layer>/segments.csv``, by its file name.
    SEGMENTS: (_LAYER_RUN, True),
}


def read_table(directory: str | Path, name: str) -> pd.DataFrame | None:
    """A table a stage wrote, read the one way it is read everywhere; None when it is absent.

    Parameters
    ----------
    directory : path-like
        The dissection directory.
    name : str
        Its path inside the directory: one of :data:`TABLE_READING` (``receptive_fields.csv``,
        ``iou/concepts.csv``, ``ablation_groups.csv``, ...), or a path ending in
        ``segments.csv``.

    Returns
    -------
    DataFrame or None
        Text restored as written (:func:`dissect.io.read_csv`).
    """
    from .io import read_csv

    path = Path(directory) / name
    if not path.is_file():
        return None
    text, missing_as_nan = TABLE_READING.get(name) or TABLE_READING[Path(name).name]
    return read_csv(path, dtype=text, keep_default_na=missing_as_nan)


def layer_file_name(layer: str) -> str:
    """A file name for a layer name (module paths may hold dots; ONNX names hold slashes)."""
    return layer.replace("/", "_")


def read_manifest(directory: str | Path) -> dict | None:
    """The directory's ``manifest.json`` as a dict; None when it is missing or unreadable."""
    try:
        manifest = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def current_run(directory: str | Path) -> str:
    """The run id in the directory's manifest (empty when it has none)."""
    manifest = read_manifest(directory)
    return str(manifest.get("run_id", "")) if manifest else ""


def run_digest(manifest: dict, tables: Sequence[bytes]) -> str:
    """The run id: a digest of what a pass computed (manifest without timing, and its tables).

    Two passes that computed the same statistics from the same model, data and parameters get
    the same id, so re-running an identical pass keeps the later stages valid; any difference
    gives another id. How the images were decoded (``workers``) is not part of it.
    """
    digest = hashlib.sha256()
    timing = ("created", "seconds", "probe_seconds", "world_size", "run_id")
    kept = {key: value for key, value in manifest.items() if key not in timing}
    if isinstance(kept.get("config"), dict):
        kept["config"] = {key: value for key, value in kept["config"].items() if key != "workers"}
    digest.update(json.dumps(kept, sort_keys=True, default=str).encode())
    for table in tables:
        digest.update(hashlib.sha256(table).digest())
    return digest.hexdigest()[:16]


def keep_run_rows(table: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """The rows of ``table`` that belong to run ``run_id``: those recording it, or none.

    A row written before run ids (no ``run_id`` column, or an empty cell) is kept; a row of
    another run is dropped, so a table a stage adds to never mixes runs.
    """
    if "run_id" not in table or not run_id:
        return table
    recorded = table["run_id"].astype(object).where(table["run_id"].notna(), "")
    return table[recorded.isin({"", run_id})]


def retire_stale_outputs(
    directory: str | Path, run_id: str, layers: Collection[str] | None = None
) -> Path | None:
    """Move the later stages' outputs of an earlier, different run aside; return where to.

    Called by ``dissect run`` before it writes ``run_id`` into ``directory``. When the directory
    holds a dissection with another run id (or one from before run ids), every entry that
    ``dissect run`` does not write itself (labels, ``iou/``, receptive fields, segments, the
    annotation package, statistics, plots, the report, ...) and the ``topk/<layer>.npz`` of
    layers not in ``layers`` move to ``stale/<old run id>/``: nothing is deleted (crowd answers
    are costly) and nothing stale looks current.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest is None and not (directory / MANIFEST).is_file():
        return None
    old = str((manifest or {}).get("run_id") or "unknown")
    if old == run_id:
        return None
    moving = [entry for entry in directory.iterdir() if entry.name not in RUN_OUTPUTS]
    if layers is not None and (directory / TOPK).is_dir():
        kept = {f"{layer_file_name(layer)}.npz" for layer in layers}
        moving += [path for path in (directory / TOPK).iterdir() if path.name not in kept]
    if not moving:
        return None
    target = directory / STALE / old
    suffix = 1
    while target.exists():
        suffix += 1
        target = directory / STALE / f"{old}-{suffix}"
    target.mkdir(parents=True)
    for entry in moving:
        place = target / entry.relative_to(directory)
        place.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(entry), str(place))
    return target
