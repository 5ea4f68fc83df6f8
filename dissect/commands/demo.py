"""``dissect demo``: the whole study on the built-in scene CNN and synthetic world."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DemoConfig
from .common import add_device_argument

HELP = (
    "run the whole study on the built-in scene CNN and synthetic world; prints the finding and "
    "where the report is"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config = DemoConfig()
    parser.add_argument("--out", default=config.out, help="directory to write (%(default)s)")
    parser.add_argument("--quick", action="store_true", help="a smaller study (200 images)")
    parser.add_argument("--images", type=int, help="images to dissect (1000; quick: 200)")
    parser.add_argument(
        "--seed", type=int, default=config.seed, help=f"seed of the synthetic world ({config.seed})"
    )
    add_device_argument(parser, config.device)
    parser.add_argument(
        "--compare-with",
        default=config.compare_with,
        metavar="MODEL",
        help="a second network, dissected the same way and compared with scene-cnn in "
        f"OUT/compare (dissect compare; default {config.compare_with}, 'none' for no "
        "comparison)",
    )


def run(args: argparse.Namespace) -> int:
    from ..demo import describe, run_demo

    other = None if args.compare_with.lower() == "none" else args.compare_with
    summary = run_demo(
        args.out, args.quick, args.images, args.seed, args.device, compare_with=other
    )
    root = Path(args.out).resolve()
    print(f"\nFinished in {summary['seconds']:.0f} s.\n{describe(summary)}")
    print(f"\nOpen the report: {(root / 'report' / 'index.html').as_uri()}")
    if other:
        print(f"The comparison: {(root / 'compare' / 'index.html').as_uri()}")
    return 0
