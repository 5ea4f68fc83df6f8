"""Segmentation scores: confusion matrices, per-class IoU, mean IoU and pixel accuracy."""

from __future__ import annotations

import numpy as np


def confusion(predicted: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) int64 counts of (true class, predicted class) over the pixels.

    Pixels whose true class is negative (unlabelled) are left out.

    Examples
    --------
    >>> confusion(np.array([0, 1, 1]), np.array([0, 1, -1]), 2)
    array([[1, 0],
           [0, 1]])
    """
    truth = np.asarray(truth, dtype=np.int64).reshape(-1)
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)
    keep = truth >= 0
    pairs = truth[keep] * classes + predicted[keep]
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


def class_iou(matrix: np.ndarray) -> np.ndarray:
    """IoU of every class from a confusion matrix; NaN for a class absent from both."""
    hits = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - hits
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, hits / union, np.nan)


def mean_iou(matrix: np.ndarray, skip: tuple[int, ...] = ()) -> float:
    """Mean IoU over the classes present in truth or prediction, leaving out ``skip`` (``none``)."""
    iou = class_iou(matrix)
    keep = np.ones(len(iou), dtype=bool)
    keep[list(skip)] = False
    values = iou[keep]
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def pixel_accuracy(matrix: np.ndarray) -> float:
    """The fraction of labelled pixels whose predicted class is the true one."""
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float("nan")
