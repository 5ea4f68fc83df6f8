"""``dissect ablate``: what each unit and concept group of a layer does for each class.

Outputs, in the dissection directory (layer names with ``/`` become ``_`` in file names):

- ``ablation/<layer>.npz``: ``units`` (U,), ``classes`` (C,), and (U, C) arrays ``logit_drop``,
  ``prob_drop``, ``accuracy_drop`` with ``_se``; ``n_images`` and ``base_accuracy`` per class;
  ``mode``, ``run_id``.
- ``ablation/<layer>.csv``: one row per (ablation set, class), the random groups included.
- ``ablation.csv``: per unit, the classes it matters most for, beside its label.
- ``ablation_classes.csv``: per class, the 5 units whose ablation hurts it most.
- ``ablation_groups.csv``: per (concept group, class), the drops, the null's mean and spread and
  the p-values.
- ``plots/ablation_<layer>.png`` (units x classes, ordered by label) and
  ``plots/ablation_groups_<layer>.png`` (per class, the label groups that hurt it most).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import distributed
from ..datasets import open_data
from ..directory import (
    ABLATION,
    ABLATION_CLASSES,
    ABLATION_GROUPS,
    ABLATION_UNITS,
    layer_file_name,
    read_table,
)
from ..dissection import Dissection, load_dissected_model
from ..images import ImageSource
from ..io import write_csv, write_npz
from ..labels import read_labels
from ..models import LoadedModel
from .config import AblationConfig
from .listener import LayerPlan
from .run import PassOptions, ablation_checkpoint, plan_layer, run_pass
from .sums import AblationSums
from .tables import class_summary, group_table, measures, set_table, unit_summary

#: Files ``dissect ablate`` writes at the top of the dissection directory.
OUTPUTS = (ABLATION_UNITS, ABLATION_CLASSES, ABLATION_GROUPS)


def ablate(
    directory: str | Path | Dissection,
    data: str | ImageSource,
    layers: Sequence[str] | None = None,
    config: AblationConfig | None = None,
    *,
    model: str | torch.nn.Module | LoadedModel | None = None,
    **options: Any,
) -> pd.DataFrame | None:
    """Ablate units and concept groups of dissected layers and score every class on ``data``.

    Parameters
    ----------
    directory : path-like or Dissection
        The dissection directory (its labels make the concept groups; ``dissect autolabel``).
    data : str or ImageSource
        Held-out data with class labels (``synthetic:N[:SEED]``, a Broden directory with
        scenes, a folder with one sub-folder per class).
    layers : sequence of str, optional
        Dissected layers to ablate (default: every dissected one).
    config : AblationConfig, optional
        Units, mode, groups, null draws, batch size, seed, memory for the copies.
    model : str, nn.Module or LoadedModel, optional
        The dissected model (default: loaded again from the manifest).
    **options
        How the pass runs (:class:`~dissect.ablate.run.PassOptions`): ``device`` (``cpu``,
        ``cuda``, ``cuda:N`` or ``auto``, the default), ``progress`` (bool, default True),
        ``restart`` (bool: discard a checkpoint of an interrupted run and start over),
        ``resume`` (a :class:`~dissect.config.ResumeConfig`) or its ``checkpoint_seconds``
        (save the sums every this many seconds, 60 by default, and on Ctrl-C / SIGTERM).

    Returns
    -------
    DataFrame or None
        On rank 0, every (set, class) row of every layer (the ``ablation/<layer>.csv`` tables);
        None on the other ranks.
    """
    config = config or AblationConfig()
    dissection = directory if isinstance(directory, Dissection) else Dissection(directory)
    layers = dissection.check_layers(layers)
    source = open_data(data)
    loaded = load_dissected_model(dissection, model)
    plans = [plan_layer(dissection, layer, config) for layer in layers]
    sums = run_pass(dissection, loaded, source, plans, config, pass_options(options))
    if sums is None:
        return None
    everything = write_outputs(
        dissection, plans, sums, [str(name) for name in source.classes], config
    )
    ablation_checkpoint(dissection, {}).remove(distributed.world_size())
    return everything


def pass_options(options: dict[str, Any]) -> PassOptions:
    """The :class:`PassOptions` of :func:`ablate`'s keyword arguments (an unknown one is a
    ``TypeError``, as in any call)."""
    options = dict(options)
    seconds = options.pop("checkpoint_seconds", None)
    unknown = sorted(set(options) - {field.name for field in dataclasses.fields(PassOptions)})
    if unknown:
        raise TypeError(f"ablate() got unexpected keyword argument(s) {unknown}")
    made = PassOptions(**options)
    if seconds is not None:
        made = dataclasses.replace(
            made, resume=dataclasses.replace(made.resume, checkpoint_seconds=seconds)
        )
    return made


def write_outputs(
    dissection: Dissection,
    plans: Sequence[LayerPlan],
    sums: dict[str, AblationSums],
    classes: list[str],
    config: AblationConfig,
) -> pd.DataFrame:
    """Every file of the stage, from the merged sums; returns every (set, class) row."""
    tables = []
    for plan in plans:
        values = measures(sums[plan.layer])
        table = set_table(plan.layer, plan.sets, classes, values)
        table["run_id"] = dissection.run_id
        write_layer(dissection, plan.layer, table, values, config)
        tables.append(table)
    everything = pd.concat(tables, ignore_index=True)
    write_summaries(dissection, everything, [plan.layer for plan in plans])
    from ..plots.ablation import write_ablation_plots

    labels = read_labels(dissection.directory)
    write_ablation_plots(dissection.directory, everything, group_table(everything), labels)
    return everything


def write_layer(
    dissection: Dissection,
    layer: str,
    table: pd.DataFrame,
    values: dict[str, np.ndarray],
    config: AblationConfig,
) -> None:
    """``ablation/<layer>.csv`` and ``ablation/<layer>.npz`` (the single units)."""
    name = layer_file_name(layer)
    write_csv(dissection.path(ABLATION, f"{name}.csv"), table)
    units = table.loc[table["kind"] == "unit", "name"].drop_duplicates().astype(int).to_numpy()
    # the single units are the first sets of a plan
    arrays = {key: values[key][: len(units)] for key in values if values[key].ndim == 2}
    write_npz(
        dissection.path(ABLATION, f"{name}.npz"),
        units=units.astype(np.int64),
        classes=np.array(table["class"].drop_duplicates().tolist()),
        n_images=values["n_images"],
        base_accuracy=values["base_accuracy"],
        mode=np.array(config.mode),
        run_id=np.array(dissection.run_id),
        **arrays,
    )


def write_summaries(dissection: Dissection, table: pd.DataFrame, layers: Sequence[str]) -> None:
    """``ablation.csv``, ``ablation_classes.csv`` and ``ablation_groups.csv`` (the rows of other
    layers, from earlier runs on the same dissection, are kept)."""
    labels = read_labels(dissection.directory)
    fresh = {
        ABLATION_UNITS: unit_summary(table, labels),
        ABLATION_CLASSES: class_summary(table),
        ABLATION_GROUPS: group_table(table).drop(columns="units"),
    }
    for file_name, frame in fresh.items():
        frame = frame.assign(run_id=dissection.run_id)
        old = read_table(dissection.directory, file_name)
        if old is not None:
            keep = ~old["layer"].isin(layers) & (old["run_id"] == dissection.run_id)
            frame = pd.concat([old[keep], frame], ignore_index=True)
        write_csv(dissection.path(file_name), frame)
