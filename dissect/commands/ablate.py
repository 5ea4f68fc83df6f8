"""``dissect ablate DIR DATA``: what each unit and concept group does for each class."""

from __future__ import annotations

import argparse
import sys

from ..directory import ABLATION_CHECKPOINT
from .common import add_device_argument, add_resume_arguments, split_names

HELP = (
    "ablate every unit (set to zero or its mean) and every concept group of dissected layers, "
    "against random groups of the same size, and measure each class's score and accuracy on "
    "labelled DATA: ablation.csv, ablation_classes.csv, ablation_groups.csv, ablation/"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the dissection directory")
    parser.add_argument(
        "data", metavar="DATA", help="held-out data with class labels (e.g. synthetic:1000:7)"
    )
    parser.add_argument("--layers", help="comma-separated layers (default: every dissected one)")
    parser.add_argument(
        "--units",
        default="all",
        help="units ablated one at a time: all (default), labelled (the detectors), none, or "
        "numbers like 0,3,17",
    )
    parser.add_argument(
        "--mode",
        choices=("zero", "mean"),
        default="zero",
        help="an ablated unit is set to 0 (default) or to its dataset mean (units.csv)",
    )
    parser.add_argument(
        "--groups",
        default="label,type",
        help="concept groups ablated at once: label (detectors sharing a label), type (all "
        "detectors of a semantic type), both (default: label,type) or none",
    )
    parser.add_argument(
        "--draws",
        type=int,
        default=100,
        help="random groups of each group's size for its p-value (100: smallest p 0.0099)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward (32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random groups (0)")
    parser.add_argument(
        "--copies-mib",
        type=float,
        help="memory for the ablated copies of one forward (default: the input batch's)",
    )
    add_device_argument(parser)
    add_resume_arguments(parser, "partial sums")


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..ablate import AblationConfig, ablate
    from ..ablate.sets import parse_units

    units = parse_units(args.units)
    groups = () if args.groups == "none" else tuple(split_names(args.groups) or ())
    config = AblationConfig(
        units=units if isinstance(units, str) else tuple(units),
        mode=args.mode,
        groups=groups,
        draws=args.draws,
        batch_size=args.batch_size,
        seed=args.seed,
        copies_mib=args.copies_mib,
    )
    try:
        table = ablate(
            args.directory,
            args.data,
            split_names(args.layers),
            config,
            device=args.device,
            restart=args.restart,
            checkpoint_seconds=args.checkpoint_seconds,
        )
    except KeyboardInterrupt:
        print(
            f"dissect ablate: interrupted; progress is saved in {args.directory}/"
            f"{ABLATION_CHECKPOINT}. Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    if not distributed.is_main() or table is None:
        return 0
    _print_summary(table)
    print(f"-> {args.directory}/ablation.csv, ablation_classes.csv, ablation_groups.csv, ablation/")
    return 0


def _print_summary(table) -> None:
    from ..ablate.tables import class_summary, group_table

    for kind, title in (("unit", "units"), ("label", "label groups")):
        best = class_summary(table, kind, top=1)
        for row in best.to_dict("records"):
            print(
                f"{row['layer']} {row['class']}: most hurt by {title[:-1]} {row['name']} "
                f"(drop of accuracy {row['accuracy_drop']:.3f}, of logit {row['logit_drop']:.3f})"
            )
    groups = group_table(table)
    if len(groups):
        significant = groups[groups["p_accuracy"] <= 0.05]
        print(
            f"{len(significant)} of {len(groups)} (concept group, class) pairs hurt the class "
            "more than random groups of the same size (p <= 0.05)"
        )
