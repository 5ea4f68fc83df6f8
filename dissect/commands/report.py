"""``dissect report DIR``: the static HTML report of whatever stages have been run."""

from __future__ import annotations

import argparse

from ..config import ReportConfig
from .common import (
    add_counting_fdr_argument,
    add_detector_arguments,
    rule_from_args,
    significance_from_args,
)

HELP = "write DIR/report/index.html: run summary, semantic types per layer, every unit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the dissection directory")
    add_detector_arguments(parser)
    add_counting_fdr_argument(parser)
    top = ReportConfig().top
    parser.add_argument(
        "--top", type=int, default=top, help=f"segmented top images per unit ({top})"
    )


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    index = write_report(
        args.directory,
        rule=rule_from_args(args),
        top=args.top,
        significance=significance_from_args(args),
    )
    print(f"report -> {index} (open it in a browser; zip the report folder to share it)")
    return 0
