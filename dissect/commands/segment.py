"""``dissect segment DIR``: each unit's top images, segmented to the region the unit responds to."""

from __future__ import annotations

import argparse

from ..config import PICTURES, SegmentConfig
from .common import add_segment_arguments, split_ints, split_names

HELP = "segment every unit's top images (dimmed; on request outline, crop, grid) into DIR/segments"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config = SegmentConfig()
    parser.add_argument("directory", metavar="DIR", help="a dissection directory (dissect run)")
    add_segment_arguments(parser, config)
    parser.add_argument(
        "--pictures",
        default=",".join(config.pictures),
        help=f"comma-separated, some of {','.join(PICTURES)} (default: %(default)s, what the "
        "report shows)",
    )


def run(args: argparse.Namespace) -> int:
    from ..dissection import Dissection
    from ..segment import FOLDERS, write_segments

    dissection = Dissection(args.directory)
    table = write_segments(
        dissection,
        split_names(args.layers),
        split_ints(args.units),
        args.top,
        pictures=split_names(args.pictures) or (),
        peak_fraction=args.peak_fraction,
        rule=args.rule,
        rf_size=args.rf_size,
        align=args.align,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
        dtype=args.dtype,
    )
    units = table.groupby(["layer", "unit"]).ngroups
    folder = dissection.path(FOLDERS[args.rule])
    print(f"segmented {len(table)} top images of {units} unit(s) -> {folder}")
    return 0
