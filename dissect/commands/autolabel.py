"""``dissect autolabel DIR``: label every unit by IoU with the concept masks of its data."""

from __future__ import annotations

import argparse

from .common import add_detector_arguments, split_names, taxonomy_from_args

HELP = (
    "label units automatically by IoU of their thresholded maps with the dense concept masks "
    "of DATA (Broden, synthetic:N); writes iou/ and the iou labels of labels.csv"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the dissection directory")
    parser.add_argument("--layers", help="comma-separated layers (default: every dissected one)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward (16)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--workers", type=int, default=0, help="image-loading processes (0)")
    add_detector_arguments(parser, crowd=False)
    parser.add_argument(
        "--restart",
        action="store_true",
        help="ignore a checkpoint left by an interrupted run and start over",
    )


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..iou import autolabel

    taxonomy = taxonomy_from_args(args)
    labels = autolabel(
        args.directory,
        split_names(args.layers),
        taxonomy=taxonomy,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        restart=args.restart,
    )
    if not distributed.is_main():
        return 0
    for layer, rows in labels.groupby("layer", sort=False):
        found = rows[rows["iou"] >= args.min_iou]
        print(
            f"{layer}: {len(found)} of {len(rows)} units detect a concept (IoU >= {args.min_iou}), "
            f"{found['label'].nunique()} distinct"
        )
    print(f"-> {args.directory}/labels.csv, {args.directory}/iou/")
    return 0
