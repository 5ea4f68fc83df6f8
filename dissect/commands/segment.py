"""``dissect segment DIR``: each unit's top images, segmented to the region the unit responds to."""

from __future__ import annotations

import argparse

from ..dissection import Dissection
from ..segment import write_segments
from .common import split_ints, split_names

HELP = "segment every unit's top images (dimmed / outline / crop, and a grid) into DIR/segments"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="a dissection directory (dissect run)")
    parser.add_argument("--layers", help="comma-separated layers (default: all dissected)")
    parser.add_argument("--units", help="comma-separated unit numbers (default: all)")
    parser.add_argument("--top", type=int, help="top images per unit (default: all kept)")
    parser.add_argument(
        "--peak-fraction",
        type=float,
        help="threshold each map at this fraction of its own peak (default: the unit's T)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward (32)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def run(args: argparse.Namespace) -> int:
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
