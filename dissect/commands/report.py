"""``dissect report DIR``: the static HTML report of whatever stages have been run."""

from __future__ import annotations

import argparse

from .common import add_detector_arguments, taxonomy_from_args

HELP = "write DIR/report/index.html: run summary, semantic types per layer, every unit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the dissection directory")
    add_detector_arguments(parser)
    parser.add_argument("--top", type=int, default=5, help="segmented top images per unit (5)")


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    taxonomy = taxonomy_from_args(args)
    index = write_report(
        args.directory,
        min_precision=args.min_precision,
        min_iou=args.min_iou,
        max_p=args.max_p,
        taxonomy=taxonomy,
        top=args.top,
    )
    print(f"report -> {index} (open it in a browser; zip the report folder to share it)")
    return 0
