"""``dissect data export DATA OUTDIR`` and ``dissect data import --from FORMAT SRC OUTDIR``: write a
dataset with concept masks in Broden's layout."""

from __future__ import annotations

import argparse

from ..specs import DATASET_FORMATS

HELP = (
    "dataset tools: export DATA as a Broden directory; import ADE20K, VOC, COCO panoptic or "
    "Cityscapes into one"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export",
        help="write DATA's images and concept masks to OUTDIR in the Broden layout",
        description="Write DATA's images and concept masks to OUTDIR in NetDissect's Broden "
        "layout (index.csv, label.csv, category.csv, c_<category>.csv, images/).",
    )
    export.add_argument("data", metavar="DATA", help="any DATA with concept masks")
    export.add_argument("outdir", metavar="OUTDIR", help="the directory to write")
    imported = actions.add_parser(
        "import",
        help="convert a dataset in its own layout to the Broden layout",
        description="Convert ADE20K (ADEChallengeData2016), Pascal VOC (or another dataset of "
        "index PNGs in VOC's layout, e.g. Pascal-Context), COCO panoptic or Cityscapes (gtFine) "
        "into NetDissect's Broden layout, with each class's concept category.",
    )
    imported.add_argument("--from", dest="kind", required=True, choices=DATASET_FORMATS)
    imported.add_argument("src", metavar="SRC", help="the dataset's folder")
    imported.add_argument("outdir", metavar="OUTDIR", help="the directory to write")
    imported.add_argument("--split", default="val", help="train, val (default) or test")
    imported.add_argument(
        "--annotations", help="voc: folder of index PNGs under SRC (SegmentationClass)"
    )
    imported.add_argument(
        "--classes", help="voc: class list, '<index> <name>' per line (default: VOC's 20)"
    )


def run(args: argparse.Namespace) -> int:
    from ..datasets import open_data
    from ..datasets.broden import export_broden

    if args.action == "import":
        from ..datasets.formats import open_format

        options = {
            key: value
            for key, value in (("annotations", args.annotations), ("classes", args.classes))
            if value
        }
        source = open_format(args.kind, args.src, args.split, **options)
    else:
        source = open_data(args.data)
    outdir = export_broden(source, args.outdir)
    print(f"exported {len(source)} images of {source.spec} -> {outdir}")
    return 0
