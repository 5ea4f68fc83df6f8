"""``dissect autolabel DIR``: label every unit by IoU with the concept masks of its data."""

from __future__ import annotations

import argparse
import sys

from ..config import IoUConfig, ResumeConfig
from ..directory import IOU_CHECKPOINT
from .common import add_detector_arguments, add_device_argument, rule_from_args, split_names

HELP = (
    "label units automatically by IoU of their thresholded maps with the dense concept masks "
    "of DATA (Broden, synthetic:N); writes iou/ and the iou labels of labels.csv"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the dissection directory")
    config, resume = IoUConfig(), ResumeConfig()
    parser.add_argument("--layers", help="comma-separated layers (default: every dissected one)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=config.batch_size,
        help=f"images per forward ({config.batch_size})",
    )
    add_device_argument(parser, config.device)
    parser.add_argument(
        "--workers",
        type=int,
        default=config.workers,
        help=f"image-loading processes ({config.workers})",
    )
    parser.add_argument(
        "--permutations",
        type=int,
        default=config.permutations,
        help=f"P, random re-pairings of images for each label's p-value ({config.permutations}: "
        f"smallest p {1 / (config.permutations + 1):.2g}; each adds one counting pass per "
        "batch; 0 for none)",
    )
    add_detector_arguments(parser, crowd=False)
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard the checkpoint left by an interrupted run and start over",
    )
    parser.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=resume.checkpoint_seconds,
        metavar="S",
        help=f"save partial counts every S seconds and on Ctrl-C / SIGTERM "
        f"({resume.checkpoint_seconds:g}); the same "
        "command started again resumes from them",
    )


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..iou import autolabel
    from ..semantics import detectors

    rule = rule_from_args(args)
    config = IoUConfig(args.batch_size, args.device, args.workers, args.permutations)
    try:
        labels = autolabel(
            args.directory,
            split_names(args.layers),
            taxonomy=rule.types(),
            config=config,
            resume=ResumeConfig(checkpoint_seconds=args.checkpoint_seconds),
            restart=args.restart,
        )
    except KeyboardInterrupt:
        print(
            f"dissect autolabel: interrupted; progress is saved in {args.directory}/"
            f"{IOU_CHECKPOINT}. Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    if not distributed.is_main():
        return 0
    found = detectors(labels.assign(source="iou"), rule=rule)
    for layer, rows in labels.groupby("layer", sort=False):
        mine = found[found["layer"] == layer]
        print(
            f"{layer}: {len(mine)} of {len(rows)} units detect a concept ({rule.describe()}), "
            f"{mine['label'].nunique()} distinct"
        )
    print(f"-> {args.directory}/labels.csv, {args.directory}/iou/")
    return 0
