"""``dissect export DIR --format F``: an annotation package of segmented top images."""

from __future__ import annotations

import argparse

from ..annotation.formats import EXPORT_FORMATS
from .common import add_segment_arguments, split_ints, split_names

HELP = "export segmented top images for annotation (MTurk, Label Studio or an offline page)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="a dissection directory (dissect run)")
    parser.add_argument(
        "--format", required=True, choices=EXPORT_FORMATS, help="annotation service"
    )
    parser.add_argument(
        "--base-url",
        help="web address where annotation/images/ will be served (mturk, labelstudio)",
    )
    add_segment_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..annotation import export_annotation
    from ..dissection import Dissection

    dissection = Dissection(args.directory)
    tasks = export_annotation(
        dissection,
        args.format,
        split_names(args.layers),
        split_ints(args.units),
        args.top,
        base_url=args.base_url,
        peak_fraction=args.peak_fraction,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(
        f"exported {tasks['task'].nunique()} unit(s), {len(tasks)} images -> "
        f"{dissection.path('annotation', args.format)} (upload annotation/images; keep "
        "annotation/private for dissect import)"
    )
    return 0
