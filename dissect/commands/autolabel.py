"""``dissect autolabel DIR``: label every unit by IoU with the concept masks of its data."""

from __future__ import annotations

import argparse
import sys

from ..errors import interrupted_status
from .common import add_detector_arguments, split_names, taxonomy_from_args
from .segmenter_args import add_segmenter_arguments, finish, predicted_source

CHECKPOINT_FOLDER = "iou/.checkpoint"  # dissect.iou.CHECKPOINT_FOLDER (not imported: heavy)

HELP = (
    "label units automatically by IoU of their thresholded maps with the dense concept masks "
    "of DATA (Broden, synthetic:N); writes iou/ and the iou labels of labels.csv"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="the dissection directory")
    parser.add_argument("--layers", help="comma-separated layers (default: every dissected one)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward (16)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--workers", type=int, default=0, help="image-loading processes (0)")
    parser.add_argument(
        "--permutations",
        type=int,
        default=None,
        help="P, random re-pairings of images for each label's p-value (19: smallest p 0.05; "
        "each adds one counting pass per batch; 0 for none)",
    )
    add_detector_arguments(parser, crowd=False)
    parser.add_argument(
        "--fdr",
        type=_rate,
        metavar="Q",
        help="count as detectors only labels with a Benjamini-Hochberg q-value at most Q over "
        "their layer's units (e.g. 0.05: at most 5%% false detectors expected; needs "
        "--permutations); q-values are written to labels.csv either way",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard the checkpoint left by an interrupted run and start over",
    )
    parser.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="save partial counts every S seconds and on Ctrl-C / SIGTERM (60); the same "
        "command started again resumes from them",
    )
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
    from ..dissection import Dissection
    from ..errors import DissectError
    from ..iou import autolabel
    from ..iou.significance import DEFAULT_PERMUTATIONS
    from ..semantics import detectors

    taxonomy = taxonomy_from_args(args)
    permutations = DEFAULT_PERMUTATIONS if args.permutations is None else args.permutations
    if args.fdr and not permutations:
        raise DissectError(
            "--fdr needs p-values, which --permutations 0 turns off; drop one of the two."
        )
    source = None
    if args.segmenter:
        opened = Dissection(args.directory)
        source = predicted_source(args, opened.open_data(), args.batch_size, args.device)
    else:
        predicted_source(args, None, args.batch_size, args.device)  # refuses --concepts alone
    try:
        labels = autolabel(
            args.directory,
            split_names(args.layers),
            source=source,
            taxonomy=taxonomy,
            batch_size=args.batch_size,
            device=args.device,
            workers=args.workers,
            restart=args.restart,
            permutations=permutations,
            checkpoint_seconds=args.checkpoint_seconds,
        )
    except KeyboardInterrupt as error:
        print(
            f"dissect autolabel: interrupted; progress is saved in {args.directory}/"
            f"{CHECKPOINT_FOLDER}. Run the same command again to resume.",
            file=sys.stderr,
        )
        return interrupted_status(error)
    if not distributed.is_main():
        return 0
    rule = f"IoU >= {args.min_iou}" + (f", p <= {args.max_p}" if args.max_p else "")
    rule += f", q <= {args.fdr} (FDR)" if args.fdr else ""
    found = detectors(labels.assign(source="iou"), min_iou=args.min_iou, taxonomy=taxonomy,
                      max_p=args.max_p, fdr=args.fdr)  # fmt: skip
    for layer, rows in labels.groupby("layer", sort=False):
        mine = found[found["layer"] == layer]
        print(
            f"{layer}: {len(mine)} of {len(rows)} units detect a concept ({rule}), "
            f"{mine['label'].nunique()} distinct"
        )
    print(f"-> {args.directory}/labels.csv, {args.directory}/iou/")
    finish(args, args.directory, source, list(labels["layer"].unique()))
    return 0
