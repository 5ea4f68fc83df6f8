"""Top-1 accuracy of any model on labelled DATA (``dissect evaluate``): check model and
preprocessing before dissecting."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .datasets import open_data
from .device import pick_device
from .errors import DissectError
from .images import ImageSource, Preprocess, make_loader, warn_skipped
from .models import LoadedModel, load_model


def class_map(model_classes: Sequence[str] | None, data_classes: Sequence[str]) -> list[int]:
    """Model output index of each data class: matched by name when the model names its classes.

    A model without class names is assumed to use the data's class order.
    """
    if model_classes is None:
        return list(range(len(data_classes)))
    position = {name: i for i, name in enumerate(model_classes)}
    unknown = [name for name in data_classes if name not in position]
    if unknown:
        raise DissectError(
            f"DATA class(es) {', '.join(map(repr, unknown))} are not among the model's classes "
            f"({', '.join(model_classes)}); name the class folders after the model's classes."
        )
    return [position[name] for name in data_classes]


def evaluate(
    model: str | nn.Module | LoadedModel,
    data: str | ImageSource,
    *,
    batch_size: int = 64,
    limit: int | None = None,
    preprocess: Preprocess | None = None,
    device: str = "auto",
    progress: bool = True,
) -> float:
    """Top-1 accuracy of ``model`` on a DATA source with image-level labels.

    Parameters
    ----------
    model : str, nn.Module or LoadedModel
        A MODEL spec, an in-memory module, or a loaded model.
    data : str or ImageSource
        A labelled source: the synthetic world, a Broden directory with scenes, or a folder with
        one sub-folder per class (matched to the model's classes by name when it has them).
    batch_size : int
        Images per forward.
    limit : int, optional
        Evaluate only the first ``limit`` images.
    preprocess : Preprocess, optional
        Default: the model's own.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    float
        Fraction of readable images whose highest-scoring class is the true one.
    """
    loaded = load_model(model)
    source = open_data(data)
    if source.classes is None:
        raise DissectError(
            f"DATA {source.spec!r} has no image-level labels; use synthetic:N[:SEED], a Broden "
            "directory with a scene column, or a folder with one sub-folder per class."
        )
    if batch_size < 1 or (limit is not None and limit < 1):
        raise DissectError("--batch-size and --limit must be at least 1.")
    targets = torch.tensor(class_map(loaded.classes, source.classes))
    count = len(source) if limit is None else min(limit, len(source))
    run_on = pick_device(device)
    module = loaded.module.to(run_on).eval()
    loader = make_loader(source, preprocess or loaded.preprocess, range(count), batch_size)
    correct = seen = 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
            warn_skipped(source, batch.skipped)
            if not len(batch.indices):
                continue
            labels = targets[[source.label(int(i)) for i in batch.indices]]
            predicted = module(batch.images.to(run_on)).argmax(1).cpu()
            correct += int((predicted == labels).sum())
            seen += len(labels)
    if not seen:
        raise DissectError(f"no readable image in DATA {source.spec!r}; nothing to evaluate.")
    return correct / seen
