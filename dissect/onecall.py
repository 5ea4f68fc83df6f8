"""``dissect.dissect(model, data, out)``: the pass, its labels and statistics in one call.

For notebooks: it calls the stages a user would call one by one (:func:`~dissect.streaming.
run_dissection`, with ``iou=True`` the IoU labels of the same pass when the data have concept
masks, then :func:`~dissect.semantics.write_statistics`) and returns the directory as a
:class:`~dissect.notebook.NotebookDissection`, which shows itself inline.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .datasets import open_data
from .datasets.masks import SegmentedSource
from .labels import read_labels
from .models import load_model
from .notebook import NotebookDissection
from .semantics import write_statistics
from .streaming import run_dissection

if TYPE_CHECKING:
    from torch import nn

    from .images import ImageSource
    from .models import LoadedModel


def dissect(
    model: str | nn.Module | LoadedModel,
    data: str | ImageSource,
    out: str | Path,
    layers: Sequence[str] | None = None,
    *,
    iou: bool = True,
    topk: int = 20,
    progress: bool = True,
    **options,
) -> NotebookDissection:
    """Dissect ``model`` over ``data`` into ``out``, label the units where masks exist.

    Parameters
    ----------
    model : str, nn.Module or LoadedModel
        A MODEL spec (``"scene-cnn"``, ``"net.py:make"`` with ``weights=``, a ``.pt2``), or the
        module itself.
    data : str or ImageSource
        A DATA spec (a folder of images, a Broden directory, ``"synthetic:200"``) or a source.
    out : path-like
        The dissection directory to write (an identical earlier pass is kept, an interrupted
        one resumes).
    layers : sequence of str, optional
        Layers to dissect (default: as ``dissect run``'s, the block outputs, one per resolution
        stage; every conv and pool layer of the built-in ``scene-cnn`` and ``object-cnn``).
    iou : bool
        Label every unit by IoU with the data's concept masks in the same pass and write the
        per-layer statistics (``layer_types.csv``, ``concepts.csv``); data without masks are
        dissected without labels, with a warning.
    topk : int
        Top images kept per unit.
    progress : bool
        Show progress bars.
    **options
        Any other keyword of :func:`~dissect.streaming.run_dissection` (``weights``,
        ``batch_size``, ``preprocess``, ``device``, ``seed``, ...).

    Returns
    -------
    NotebookDissection
        The directory, opened; it shows a summary inline, ``.labels()``, ``.units()``,
        ``.unit(layer, u)`` and ``.plot_types()``.
    """
    loaded = load_model(model, options.pop("weights", None))
    source = open_data(data)
    labelled = iou and isinstance(source, SegmentedSource)
    if iou and not labelled:
        warnings.warn(
            f"DATA {source.spec!r} has no concept masks: dissected without IoU labels "
            "(label units by crowd annotation instead, see dissect.export_annotation).",
            stacklevel=2,
        )
    run_dissection(
        loaded, source, out, layers, topk=topk, progress=progress, iou=labelled, **options
    )
    if labelled and not read_labels(out).empty:
        write_statistics(out)
    return NotebookDissection(out, model=loaded)


def open_dissection(
    directory: str | Path, model: str | nn.Module | LoadedModel | None = None
) -> NotebookDissection:
    """Open a dissection directory for a notebook (``model``: for :meth:`~NotebookDissection.unit`
    when the manifest cannot name it, an in-memory module)."""
    return NotebookDissection(directory, model=model)
