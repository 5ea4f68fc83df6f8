"""``dissect report DIR``: the static HTML report of whatever stages have been run."""

from __future__ import annotations

import argparse

from ..report import write_report
from ..semantics import DEFAULT_TAXONOMY, MIN_IOU, MIN_PRECISION, Taxonomy

HELP = "write DIR/report/index.html: run summary, semantic types per layer, every unit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the dissection directory")
    parser.add_argument(
        "--min-precision",
        type=float,
        default=MIN_PRECISION,
        help=f"crowd labels count as detectors from this precision ({MIN_PRECISION})",
    )
    parser.add_argument(
        "--min-iou",
        type=float,
        default=MIN_IOU,
        help=f"automatic labels count as detectors from this IoU ({MIN_IOU})",
    )
    parser.add_argument(
        "--mapping",
        metavar="CSV",
        help="your own category -> semantic type mapping, a CSV with columns category,type",
    )
    parser.add_argument("--top", type=int, default=5, help="segmented top images per unit (5)")


def run(args: argparse.Namespace) -> int:
    taxonomy = Taxonomy.from_csv(args.mapping) if args.mapping else DEFAULT_TAXONOMY
    index = write_report(
        args.directory,
        min_precision=args.min_precision,
        min_iou=args.min_iou,
        taxonomy=taxonomy,
        top=args.top,
    )
    print(f"report -> {index} (open it in a browser; zip the report folder to share it)")
    return 0
