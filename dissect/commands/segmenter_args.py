"""``--segmenter`` and friends: concept masks predicted for images that have none.

Shared by ``dissect run --iou``, ``dissect autolabel`` and ``dissect evaluate``; the commands
only wrap their data in a :class:`dissect.segmenter.PredictedSource`.
"""

from __future__ import annotations

import argparse

from ..errors import DissectError
from .common import floats3, image_size


def add_segmenter_arguments(parser: argparse.ArgumentParser, save: bool = True) -> None:
    """``--segmenter``, ``--segmenter-weights``, ``--concepts`` (and ``--save-masks``)."""
    group = parser.add_argument_group("concept masks predicted by a segmenter")
    group.add_argument(
        "--segmenter",
        metavar="SPEC",
        help="label with masks predicted by this segmentation network (any MODEL form, or "
        "world-fcn) whose output is per-pixel class scores (B, C, h, w)",
    )
    group.add_argument("--segmenter-weights", metavar="FILE", help="state dict for --segmenter")
    group.add_argument(
        "--segmenter-size",
        type=image_size,
        metavar="N|H,W",
        help="the segmenter's input size (default: its own, else 224); each whole image is "
        "resized to it",
    )
    group.add_argument("--segmenter-mean", type=floats3, metavar="R,G,B", help="its mean")
    group.add_argument("--segmenter-std", type=floats3, metavar="R,G,B", help="its std")
    group.add_argument(
        "--concepts",
        metavar="CSV",
        help="the segmenter's concepts table: index,name,category[,head], one row per output "
        "channel (a built-in segmenter brings its own)",
    )
    if save:
        group.add_argument(
            "--save-masks",
            metavar="DIR",
            help="also write the images and predicted masks to DIR in the Broden layout",
        )


def predicted_source(args: argparse.Namespace, source, batch_size: int, device: str):
    """``source`` wrapped in a PredictedSource when ``--segmenter`` is given, else itself."""
    if not getattr(args, "segmenter", None):
        if getattr(args, "concepts", None) or getattr(args, "save_masks", None):
            raise DissectError("--concepts and --save-masks need --segmenter SPEC.")
        return source
    from ..models import load_model
    from ..segmenter import PredictedSource

    model = load_model(args.segmenter, args.segmenter_weights)
    own = model.preprocess
    preprocess = type(own)(
        args.segmenter_size or own.image_size,
        args.segmenter_mean or own.mean,
        args.segmenter_std or own.std,
    )
    return PredictedSource(
        source,
        model,
        args.concepts,
        batch_size=batch_size,
        device=device,
        name=args.segmenter,
        preprocess=preprocess,
    )


def finish(args: argparse.Namespace, directory: str, source, layers=None) -> None:
    """Mark the IoU labels of ``layers`` (all) as predicted; write ``--save-masks`` if asked."""
    if not getattr(args, "segmenter", None):
        return
    from ..labels import mark_segmenter

    mark_segmenter(directory, args.segmenter, layers)
    print(f"labels from masks predicted by {args.segmenter} -> {directory}/labels.csv")
    if getattr(args, "save_masks", None):
        from ..datasets.broden import export_broden

        export_broden(source, args.save_masks)
        print(f"predicted masks of {len(source)} images -> {args.save_masks} (Broden layout)")
