"""``dissect compare DIR_A DIR_B [DIR...] --out DIR``: networks side by side, layer by layer."""

from __future__ import annotations

import argparse

from ..config import CompareConfig
from .common import (
    add_counting_fdr_argument,
    add_detector_arguments,
    rule_from_args,
    significance_from_args,
    split_names,
)

HELP = (
    "compare labelled dissections of several networks per layer: semantic types, detectors, "
    "concepts, objects covered, receptive fields (CSV, plots, index.html)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config = CompareConfig()
    parser.add_argument(
        "directories", metavar="DIR", nargs="+", help="two or more dissection directories"
    )
    parser.add_argument("--out", required=True, help="folder for the tables, plots and page")
    parser.add_argument("--names", help="comma-separated network names (default: MODEL specs)")
    parser.add_argument(
        "--match",
        action="append",
        metavar="A:B",
        help="compare layer A of the first network with layer B of the second (one name per "
        "network, colon-separated); repeat for each row (default: layers of the same name)",
    )
    parser.add_argument(
        "--reference",
        choices=["zhou2015", "none"],
        default=config.reference,
        help=f"published distribution drawn beside ours (default {config.reference}: "
        "Places205- and "
        "ImageNet-AlexNet)",
    )
    parser.add_argument(
        "--share",
        choices=["units", "detectors"],
        default=config.share,
        help=f"bar heights as a share of each layer's units or of its detectors "
        f"(default {config.share})",
    )
    add_detector_arguments(parser)
    add_counting_fdr_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..compare import compare_dissections, parse_match, write_comparison
    from ..reference import zhou2015_types

    comparison = compare_dissections(
        args.directories,
        names=split_names(args.names),
        match=parse_match(args.match, len(args.directories)) if args.match else None,
        rule=rule_from_args(args),
        significance=significance_from_args(args),
    )
    reference = zhou2015_types() if args.reference == "zhou2015" else None
    index = write_comparison(comparison, args.out, reference=reference, share=args.share)
    shown = comparison.layers.pivot(index="row", columns="network", values="detectors")
    print(f"detector units per layer; {comparison.counted.text}")
    print(shown.reindex(index=comparison.rows, columns=comparison.networks).to_string())
    print(f"-> {args.out}/types.csv, layers.csv, objects.csv, plots/; open {index}")
    return 0
