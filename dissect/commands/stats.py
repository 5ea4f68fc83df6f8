"""``dissect stats DIR``: semantic types per layer and units per concept, with plots."""

from __future__ import annotations

import argparse

from .common import add_detector_arguments, rule_from_args

HELP = (
    "per-layer semantic-type statistics from labels.csv: layer_types.csv, concepts.csv, plots; "
    "agreement between annotators: layer_agreement.csv"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the dissection directory")
    add_detector_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..directory import read_table
    from ..plots.semantics import write_semantic_plots
    from ..semantics import AGREEMENT_FILE, write_statistics

    rule = rule_from_args(args)
    taxonomy = rule.types()
    types, concepts = write_statistics(args.directory, rule=rule)
    write_semantic_plots(args.directory, types, concepts, taxonomy)
    summary = types.pivot_table(
        index="layer", columns="category", values="n_units", aggfunc="sum", sort=False
    ).reindex(columns=taxonomy.keys)
    print(summary.to_string())
    print(
        f"{int(types['n_units'].sum())} detector units, {len(concepts)} layer-concept pairs -> "
        f"{args.directory}/layer_types.csv, concepts.csv, plots/"
    )
    table = read_table(args.directory, AGREEMENT_FILE)
    if table is not None:
        print("agreement between annotators (Fleiss' kappa):")
        print(table.to_string(index=False, float_format=lambda value: f"{value:.3f}"))
        print(f"-> {Path(args.directory) / AGREEMENT_FILE}")
    return 0
