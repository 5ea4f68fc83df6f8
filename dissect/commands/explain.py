"""``dissect explain DIR IMAGE``: the units of each layer that explain one image."""

from __future__ import annotations

import argparse

from ..config import ExplainConfig
from .common import (
    add_detector_arguments,
    add_device_argument,
    add_speed_arguments,
    rule_from_args,
    split_names,
)

HELP = (
    "the units of each layer that respond most to one image (relative to their threshold), "
    "with their labels and the image segmented by each: figure, index.html, explain.csv"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config = ExplainConfig()
    parser.add_argument("directory", metavar="DIR", help="the dissection directory")
    parser.add_argument(
        "image", metavar="IMAGE", help="an image file, or an image index of the dissected data"
    )
    parser.add_argument("--layers", help="comma-separated layers (default: all with a map)")
    parser.add_argument(
        "--top", type=int, default=config.top, help=f"units per layer ({config.top})"
    )
    parser.add_argument("--out", help="output folder (default DIR/explain/<image name>)")
    add_device_argument(parser, config.device)
    add_speed_arguments(parser, None, config.dtype)
    add_detector_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..explain import write_explanation

    explanation, index = write_explanation(
        args.directory,
        args.image,
        args.out,
        layers=split_names(args.layers),
        top=args.top,
        rule=rule_from_args(args),
        device=args.device,
        dtype=args.dtype,
    )
    shown = explanation.table[["layer", "rank", "unit", "score", "label", "detector"]]
    print(shown.to_string(index=False))
    print(f"-> {index}")
    return 0
