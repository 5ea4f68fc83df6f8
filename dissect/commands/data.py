"""``dissect data export DATA OUTDIR``: write a dataset with concept masks in Broden's layout."""

from __future__ import annotations

import argparse

HELP = "dataset tools: export DATA (the synthetic world, a Broden directory) as a Broden directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export",
        help="write DATA's images and concept masks to OUTDIR in the Broden layout",
        description="Write DATA's images and concept masks to OUTDIR in NetDissect's Broden "
        "layout (index.csv, label.csv, category.csv, c_<category>.csv, images/).",
    )
    export.add_argument("data", metavar="DATA", help="synthetic:N[:SEED] or a Broden directory")
    export.add_argument("outdir", metavar="OUTDIR", help="the directory to write")


def run(args: argparse.Namespace) -> int:
    from ..datasets import open_data
    from ..datasets.broden import export_broden

    source = open_data(args.data)
    outdir = export_broden(source, args.outdir)
    print(f"exported {len(source)} images of {source.spec} -> {outdir}")
    return 0
