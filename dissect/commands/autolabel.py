"""``dissect autolabel DIR``: label every unit by IoU with the concept masks of its data."""

from __future__ import annotations

import argparse
import sys

from ..config import IoUConfig, ResumeConfig
from ..directory import IOU_CHECKPOINT
from ..errors import interrupted_status
from .common import (
    add_align_argument,
    add_detector_arguments,
    add_device_argument,
    add_permutations_argument,
    add_resume_arguments,
    add_speed_arguments,
    rule_from_args,
    split_names,
)
from .segmenter_args import add_segmenter_arguments, finish, predicted_source

HELP = (
    "label units automatically by IoU of their thresholded maps with the dense concept masks "
    "of DATA (Broden, synthetic:N); writes iou/ and the iou labels of labels.csv"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the dissection directory")
    config = IoUConfig()
    parser.add_argument("--layers", help="comma-separated layers (default: every dissected one)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=config.batch_size,
        help=f"images per forward ({config.batch_size})",
    )
    add_device_argument(parser, config.device)
    add_speed_arguments(parser, config.workers, config.dtype)
    add_permutations_argument(parser, config.permutations, "each adds one counting pass per batch")
    add_align_argument(parser, config.align)
    add_detector_arguments(parser, crowd=False)
    parser.add_argument(
        "--fdr",
        type=_rate,
        metavar="Q",
        help="count as detectors only labels with a Benjamini-Hochberg q-value at most Q over "
        "their layer's units (e.g. 0.05: at most 5%% false detectors expected; needs "
        "--permutations); q-values are written to labels.csv either way",
    )
    add_resume_arguments(parser, "partial counts")
    add_segmenter_arguments(parser)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate like 0.05, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a false discovery rate in (0, 1), got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..dissection import Dissection, open_dissected_data
    from ..errors import DissectError
    from ..iou import autolabel
    from ..semantics import detectors

    rule = rule_from_args(args)
    config = IoUConfig(
        args.batch_size,
        args.device,
        args.workers,
        args.permutations,
        dtype=args.dtype,
        align=args.align,
    )
    if args.fdr and not config.permutations:
        raise DissectError(
            "--fdr needs p-values, which --permutations 0 turns off; drop one of the two."
        )
    source = None
    if args.segmenter:
        opened = Dissection(args.directory)
        source = predicted_source(args, open_dissected_data(opened), args.batch_size, args.device)
    else:
        predicted_source(args, None, args.batch_size, args.device)  # refuses --concepts alone
    try:
        labels = autolabel(
            args.directory,
            split_names(args.layers),
            source=source,
            taxonomy=rule.types(),
            config=config,
            resume=ResumeConfig(checkpoint_seconds=args.checkpoint_seconds),
            restart=args.restart,
        )
    except KeyboardInterrupt as error:
        print(
            f"dissect autolabel: interrupted; progress is saved in {args.directory}/"
            f"{IOU_CHECKPOINT}. Run the same command again to resume.",
            file=sys.stderr,
        )
        return interrupted_status(error)
    if not distributed.is_main():
        return 0
    found = detectors(labels.assign(source="iou"), rule=rule)
    for layer, rows in labels.groupby("layer", sort=False):
        mine = found[found["layer"] == layer]
        print(
            f"{layer}: {len(mine)} of {len(rows)} units detect a concept ({rule.describe()}), "
            f"{mine['label'].nunique()} distinct"
        )
    print(
        f"maps placed by --align {config.align} -> {args.directory}/labels.csv, "
        f"{args.directory}/iou/"
    )
    finish(args, args.directory, source, list(labels["layer"].unique()))
    return 0
