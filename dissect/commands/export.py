"""``dissect export DIR --format F``: an annotation package of segmented top images."""

from __future__ import annotations

import argparse

from ..annotation.formats import EXPORT_FORMATS
from ..config import ExportConfig
from .common import add_segment_arguments, split_ints, split_names

HELP = "export segmented top images for annotation (MTurk, Label Studio or an offline page)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config = ExportConfig()
    parser.add_argument("directory", metavar="DIR", help="a dissection directory (dissect run)")
    parser.add_argument(
        "--format", required=True, choices=EXPORT_FORMATS, help="annotation service"
    )
    parser.add_argument(
        "--base-url",
        help="web address where annotation/images/ will be served (mturk, labelstudio)",
    )
    parser.add_argument(
        "--sentinels",
        type=int,
        help="images of other units mixed into each unit's task to check the answers "
        "(default: 1 per 12 top images, at least 1; 0 for none)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=config.seed,
        help=f"seed of the sentinels' choice and places ({config.seed})",
    )
    add_segment_arguments(parser, config.segment)


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
        sentinels=args.sentinels,
        seed=args.seed,
        peak_fraction=args.peak_fraction,
        rule=args.rule,
        rf_size=args.rf_size,
        align=args.align,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        dtype=args.dtype,
    )
    n_sentinels = int(tasks["sentinel"].sum())
    if args.format == "html":
        where = (
            f"open {dissection.path('annotation', 'html', 'annotate.html')} in a browser; it "
            "shows the pictures in annotation/images, so move the annotation folder as a whole"
        )
    else:
        where = f"upload annotation/images to {args.base_url}"
    print(
        f"exported {tasks['task'].nunique()} unit(s), {len(tasks) - n_sentinels} images + "
        f"{n_sentinels} sentinel(s) -> {dissection.path('annotation', args.format)} ({where}; "
        "keep annotation/private for dissect import)"
    )
    return 0
