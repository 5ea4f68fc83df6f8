"""``dissect stats DIR``: semantic types per layer and units per concept, with plots."""

from __future__ import annotations

import argparse

from ..plots.semantics import write_semantic_plots
from ..semantics import DEFAULT_TAXONOMY, MIN_IOU, MIN_PRECISION, Taxonomy, write_statistics

HELP = "per-layer semantic-type statistics from labels.csv: layer_types.csv, concepts.csv, plots"


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
        help="your own category -> semantic type mapping, a CSV with columns category,type "
        "(added to the default Broden mapping)",
    )


def run(args: argparse.Namespace) -> int:
    taxonomy = Taxonomy.from_csv(args.mapping) if args.mapping else DEFAULT_TAXONOMY
    types, concepts = write_statistics(
        args.directory,
        min_precision=args.min_precision,
        min_iou=args.min_iou,
        taxonomy=taxonomy,
    )
    write_semantic_plots(args.directory, types, concepts, taxonomy)
    summary = types.pivot_table(
        index="layer", columns="category", values="n_units", aggfunc="sum", sort=False
    ).reindex(columns=taxonomy.keys)
    print(summary.to_string())
    print(
        f"{int(types['n_units'].sum())} detector units, {len(concepts)} layer-concept pairs -> "
        f"{args.directory}/layer_types.csv, concepts.csv, plots/"
    )
    return 0
