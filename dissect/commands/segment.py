"""``dissect segment DIR``: each unit's top images, segmented to the region the unit responds to."""

from __future__ import annotations

import argparse

from .common import add_segment_arguments, split_ints, split_names

HELP = "segment every unit's top images (dimmed / outline / crop, and a grid) into DIR/segments"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="a dissection directory (dissect run)")
    add_segment_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..dissection import Dissection
    from ..segment import write_segments

    dissection = Dissection(args.directory)
    table = write_segments(
        dissection,
        split_names(args.layers),
        split_ints(args.units),
        args.top,
        peak_fraction=args.peak_fraction,
        batch_size=args.batch_size,
        device=args.device,
    )
    units = table.groupby(["layer", "unit"]).ngroups
    print(f"segmented {len(table)} top images of {units} unit(s) -> {dissection.path('segments')}")
    return 0
