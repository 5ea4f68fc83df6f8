"""How well a segmenter's masks match true ones (``dissect evaluate SEGMENTER DATA``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..datasets.masks import SegmentedSource
from ..errors import DissectError
from ..images import ImageReadError
from .source import PredictedSource


def evaluate_segmenter(
    predicted: PredictedSource,
    truth: SegmentedSource,
    *,
    limit: int | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Per category, mean IoU over its classes and pixel accuracy of the predicted masks.

    Predicted concepts are matched to the true ones by (category, name). A class's IoU is
    counted over all images at their own size (a pixel holds a class when any of its masks of
    that category does); the category's mean IoU averages the classes the segmenter knows that
    occur in the truth or the prediction. Pixel accuracy: the share of pixels where the first
    predicted map of the category equals the first true one (0 = none on both sides counts).

    Parameters
    ----------
    predicted : PredictedSource
        The segmenter on ``truth``'s images.
    truth : SegmentedSource
        Images with true masks (the synthetic world, a Broden directory).
    limit : int, optional
        Only the first ``limit`` images.
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    DataFrame
        ``category,classes,mean_iou,pixel_accuracy`` (classes: those scored in the mean).
    """
    to_true, categories = _matched(predicted, truth)
    counts = {c: np.zeros((3, len(to_true)), dtype=np.int64) for c in categories}
    hits = {c: np.zeros(2, dtype=np.int64) for c in categories}
    count = len(truth) if limit is None else min(limit, len(truth))
    for index in tqdm(range(count), desc="evaluate", disable=not progress):
        try:
            real, guessed = truth.segmentation(index).pixel, predicted.segmentation(index).pixel
        except ImageReadError:
            continue
        for category in categories:
            truths = real.get(category, [])
            if truths:
                guesses = [to_true[m] for m in guessed.get(category, [])]
                _add(counts[category], guesses, truths, to_true)
                first = guesses[0] if guesses else np.zeros_like(truths[0])
                hits[category] += (int((first == truths[0]).sum()), truths[0].size)
    rows = []
    of_number = predicted.concept_categories()
    for category in categories:
        inter, guess, real_area = counts[category]
        union = guess + real_area - inter
        known = [n for n in np.flatnonzero(to_true) if of_number[int(n)] == category]
        iou = [inter[n] / union[n] for n in known if union[n] > 0]
        rows.append(
            {
                "category": category,
                "classes": len(iou),
                "mean_iou": float(np.mean(iou)) if iou else float("nan"),
                "pixel_accuracy": hits[category][0] / max(hits[category][1], 1),
            }
        )
    return pd.DataFrame(rows)


def _matched(predicted: PredictedSource, truth: SegmentedSource) -> tuple[np.ndarray, list[str]]:
    """Predicted concept number -> true number (0: unknown there), and the shared categories."""
    true_number = {
        (category, name): int(number)
        for number, name, category in truth.concepts[["number", "name", "category"]].values
    }
    mine = predicted.concepts
    to_true = np.zeros(int(mine["number"].max()) + 1, dtype=np.int64)
    for number, name, category in mine[["number", "name", "category"]].values:
        to_true[int(number)] = true_number.get((category, name), 0)
    shared = {category for category, _ in true_number}
    categories = [c for c in dict.fromkeys(mine["category"]) if c in shared]
    if not categories:
        names = ", ".join(dict.fromkeys(mine["category"]))
        raise DissectError(
            f"no category of the segmenter's concepts ({names}) has masks in DATA "
            f"{truth.spec!r}; nothing to compare."
        )
    return to_true, categories


def _add(counts: np.ndarray, guesses: list, truths: list, to_true: np.ndarray) -> None:
    """Add one image's intersections, predicted and true areas, indexed by predicted number."""
    numbers = np.flatnonzero(to_true)
    for column, number in zip(numbers, to_true[numbers], strict=True):
        guess = np.zeros(truths[0].shape, dtype=bool)
        for m in guesses:
            guess |= m == number
        real = np.zeros(truths[0].shape, dtype=bool)
        for m in truths:
            real |= m == number
        counts[:, column] += (int((guess & real).sum()), int(guess.sum()), int(real.sum()))
