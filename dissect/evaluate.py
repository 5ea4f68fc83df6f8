"""Check a model and its preprocessing on labelled DATA before dissecting (``dissect evaluate``):
top-1 accuracy of a classifier, mean average precision of a multi-label (presence) model."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import EvaluateConfig
from .datasets import open_data
from .datasets.masks import SegmentedSource
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


def presence_numbers(
    model_classes: Sequence[str] | None, source: ImageSource, category: str
) -> list[int]:
    """Concept number, in ``source``, of each output of a model that predicts presence.

    Parameters
    ----------
    model_classes : sequence of str
        The model's output names: concept names of ``category``.
    source : ImageSource
        A source with concept masks (the synthetic world, a Broden directory).
    category : str
        The concept category the outputs name (``object``).

    Returns
    -------
    list of int
    """
    if not isinstance(source, SegmentedSource):
        raise DissectError(
            f"the model tells which {category} concepts an image holds; DATA {source.spec!r} has "
            f"no {category} masks. Use synthetic:N[:SEED] or a Broden directory."
        )
    concepts = source.concepts[source.concepts["category"] == category]
    number = dict(zip(concepts["name"], concepts["number"], strict=True))
    unknown = [name for name in model_classes or () if name not in number]
    if unknown or not model_classes:
        raise DissectError(
            f"the model's class(es) {', '.join(map(repr, unknown or ['(none)']))} are not "
            f"{category} concepts of DATA {source.spec!r}."
        )
    return [int(number[name]) for name in model_classes]


def _presence(source: SegmentedSource, index: int, numbers: list[int], category: str) -> np.ndarray:
    """(len(numbers),) float32: 1 where image ``index`` holds the concept in any pixel."""
    segmentation = source.segmentation(index)
    found = set(segmentation.image.get(category, []))
    for labels in segmentation.pixel.get(category, []):
        found.update(np.unique(labels).tolist())
    return np.array([number in found for number in numbers], dtype=np.float32)


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Average precision of each column of ``scores`` for the binary ``targets``.

    The area under the precision-recall curve as a step function,
    ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds, highest first (tied scores
    form one threshold): the definition of scikit-learn's ``average_precision_score``.

    Parameters
    ----------
    scores : ndarray
        (N, C) scores, higher meaning more likely present.
    targets : ndarray
        (N, C), 1 (present) or 0.

    Returns
    -------
    ndarray
        (C,) float64; NaN for a class with no positive image.

    Examples
    --------
    >>> average_precision(np.array([[0.9], [0.8], [0.7]]), np.array([[1], [0], [1]]))
    array([0.83333333])
    """
    result = np.full(scores.shape[1], np.nan)
    for column in range(scores.shape[1]):
        order = np.argsort(-scores[:, column], kind="stable")
        ranked, hits = scores[order, column], np.cumsum(targets[order, column] > 0)
        if not len(hits) or hits[-1] == 0:
            continue
        last = np.append(np.flatnonzero(np.diff(ranked)), len(ranked) - 1)
        precision, recall = hits[last] / (last + 1), hits[last] / hits[-1]
        result[column] = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    return result


def evaluate(
    model: str | nn.Module | LoadedModel,
    data: str | ImageSource,
    *,
    batch_size: int = EvaluateConfig.batch_size,
    limit: int | None = None,
    preprocess: Preprocess | None = None,
    device: str = EvaluateConfig.device,
    progress: bool = True,
) -> float:
    """How well ``model`` predicts the labels of a DATA source: accuracy or mAP.

    A classifier is scored by top-1 accuracy on image-level labels. A model that predicts the
    presence of concepts (``presence_category`` set, as ``object-cnn``) is scored by mean
    average precision over its classes, an image holding a concept when any pixel of its
    masks does (classes without a positive image are left out of the mean).

    Parameters
    ----------
    model : str, nn.Module or LoadedModel
        A MODEL spec, an in-memory module, or a loaded model.
    data : str or ImageSource
        A classifier: a labelled source, the synthetic world, a Broden directory with scenes, or
        a folder with one sub-folder per class (matched to the model's classes by name when it
        has them). A presence model: a source with masks of its category (the synthetic world,
        a Broden directory), concepts matched to the model's classes by name.
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
        A classifier: the fraction of readable images whose highest-scoring class is the true
        one. A presence model: the mean average precision over its classes.
    """
    loaded = load_model(model)
    source = open_data(data)
    if batch_size < 1 or (limit is not None and limit < 1):
        raise DissectError("--batch-size and --limit must be at least 1.")
    batches = _outputs(loaded, source, batch_size, limit, preprocess, device, progress)
    category = loaded.presence_category
    if category is not None:
        numbers = presence_numbers(loaded.classes, source, category)
        scores, truths = [], []
        for indices, outputs in batches:
            scores.append(outputs.float().numpy())
            truths.extend(_presence(source, int(i), numbers, category) for i in indices)
        ap = average_precision(np.concatenate(scores), np.stack(truths))
        if np.isnan(ap).all():
            raise DissectError(
                f"no image of DATA {source.spec!r} holds any of the model's classes."
            )
        return float(np.nanmean(ap))
    if source.classes is None:
        raise DissectError(
            f"DATA {source.spec!r} has no image-level labels; use synthetic:N[:SEED], a Broden "
            "directory with a scene column, or a folder with one sub-folder per class."
        )
    targets = torch.tensor(class_map(loaded.classes, source.classes))
    correct = seen = 0
    for indices, outputs in batches:
        labels = targets[[source.label(int(i)) for i in indices]]
        correct += int((outputs.argmax(1) == labels).sum())
        seen += len(labels)
    return correct / seen


def _outputs(
    loaded: LoadedModel,
    source: ImageSource,
    batch_size: int,
    limit: int | None,
    preprocess: Preprocess | None,
    device: str,
    progress: bool,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(image indices, model outputs on the CPU) per batch of readable images, in order."""
    count = len(source) if limit is None else min(limit, len(source))
    run_on = pick_device(device)
    module = loaded.module.to(run_on).eval()
    loader = make_loader(source, preprocess or loaded.preprocess, range(count), batch_size)
    seen = 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
            warn_skipped(source, batch.skipped)
            if len(batch.indices):
                seen += len(batch.indices)
                yield batch.indices, module(batch.images.to(run_on)).cpu()
    if not seen:
        raise DissectError(f"no readable image in DATA {source.spec!r}; nothing to evaluate.")
