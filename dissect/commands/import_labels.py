"""``dissect import DIR FILE...``: import annotators' answers and aggregate them into labels."""

from __future__ import annotations

import argparse

from ..annotation.formats import IMPORT_FORMATS
from ..config import ImportConfig

HELP = "import crowd answers (MTurk results, Label Studio JSON, plain CSV) into DIR/labels.csv"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="a dissection directory (dissect run)")
    parser.add_argument("files", metavar="FILE", nargs="+", help="answer files")
    parser.add_argument(
        "--format",
        default=ImportConfig().format,
        choices=IMPORT_FORMATS,
        help="format of the files (auto: by content)",
    )


def run(args: argparse.Namespace) -> int:
    from ..annotation import import_answers, read_raw
    from ..annotation.aggregate import answer_weights
    from ..dissection import Dissection

    labels = import_answers(args.directory, args.files, args.format)
    print(
        f"{len(labels)} unit(s) labelled from {int(labels['n_annotators'].sum())} answer(s) "
        f"-> {args.directory}/labels.csv"
    )
    raw = read_raw(Dissection(args.directory))
    dropped = int((answer_weights(raw) == 0).sum())
    if dropped:
        print(
            f"{dropped} answer(s) kept a sentinel image (a picture of another unit) and were left "
            f"out; ask for revised answers (sentinels per annotator: {args.directory}/"
            "annotators.csv)"
        )
    return 0
