"""``dissect evaluate MODEL DATA``: top-1 accuracy on images with class labels, mean average
precision of a model that tells which objects are present (``object-cnn``), or, for a segmenter
(``world-fcn``, or any MODEL with ``--concepts``), mean IoU and pixel accuracy per category."""

from __future__ import annotations

import argparse

from ..config import EvaluateConfig
from .common import (
    add_device_argument,
    add_model_arguments,
    load_model_from_args,
    preprocess_from_args,
)

HELP = (
    "top-1 accuracy of MODEL on DATA with image-level labels, or mAP of a presence model such as "
    "object-cnn on DATA with masks (check model and preprocessing)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "data",
        metavar="DATA",
        help="synthetic:N[:SEED], a Broden directory with scenes (or objects, for a presence "
        "model), or a folder with one sub-folder per class",
    )
    config = EvaluateConfig()
    parser.add_argument(
        "--batch-size",
        type=int,
        default=config.batch_size,
        help=f"images per forward ({config.batch_size})",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N images")
    add_device_argument(parser, config.device)
    parser.add_argument(
        "--concepts",
        metavar="CSV",
        help="MODEL is a segmenter with this concepts table (index,name,category[,head]): "
        "score its masks against DATA's",
    )


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate

    loaded = load_model_from_args(args)
    if args.concepts or loaded.segmenter_concepts is not None:
        return _segmenter(args, loaded)
    fraction = evaluate(
        loaded,
        args.data,
        batch_size=args.batch_size,
        limit=args.limit,
        preprocess=preprocess_from_args(args, loaded),
        device=args.device,
    )
    metric = "accuracy" if loaded.presence_category is None else "mAP"
    print(f"{metric}: {fraction:.4f}")
    return 0


def _segmenter(args: argparse.Namespace, loaded) -> int:
    """Per category: classes scored, mean IoU, pixel accuracy."""
    from ..datasets import open_data
    from ..errors import DissectError
    from ..segmenter import PredictedSource, evaluate_segmenter

    truth = open_data(args.data)
    if not hasattr(truth, "segmentation"):
        raise DissectError(
            f"DATA {truth.spec!r} has no concept masks to score a segmenter against; use "
            "synthetic:N[:SEED] or a Broden directory."
        )
    predicted = PredictedSource(
        truth, loaded, args.concepts, batch_size=args.batch_size, device=args.device
    )
    table = evaluate_segmenter(predicted, truth, limit=args.limit)
    for row in table.itertuples(index=False):
        print(
            f"{row.category}: mean IoU {row.mean_iou:.4f} over {row.classes} classes, "
            f"pixel accuracy {row.pixel_accuracy:.4f}"
        )
    return 0
