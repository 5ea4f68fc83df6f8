"""``dissect run MODEL DATA``: one pass that keeps every unit's top images and threshold.

With ``--iou`` the same pass also labels every unit by IoU with the data's concept masks.

Under ``torchrun --nproc_per_node=N -m dissect run ...`` the images are sharded over the N
processes and merged into the same directory a single process writes. An interrupted run (Ctrl-C,
SIGTERM, SIGKILL) resumes from ``DIR/.checkpoint`` when started again with the same arguments.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..config import ALIGN, IoUConfig, ResumeConfig, RunConfig
from ..directory import CHECKPOINT_DIR
from ..errors import interrupted_status
from .common import (
    add_align_argument,
    add_device_argument,
    add_model_arguments,
    add_permutations_argument,
    add_speed_arguments,
    layers_from_args,
    load_model_from_args,
    preprocess_from_args,
    split_names,
)
from .segmenter_args import add_segmenter_arguments, finish, predicted_source

HELP = "dissect layers of MODEL over DATA: top-K images and activation threshold of every unit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config, resume = RunConfig(), ResumeConfig()
    add_model_arguments(parser)
    parser.add_argument(
        "data",
        metavar="DATA",
        help="a folder of images, a Broden directory, synthetic:N[:SEED], or ade20k:PATH, "
        "voc:PATH, coco-panoptic:PATH, cityscapes:PATH",
    )
    parser.add_argument(
        "--layers",
        help="comma-separated layer names, globs (layer*, features.*) or types (type:Conv2d); "
        "default: the block outputs, one per resolution stage (dissect layers MODEL shows them)",
    )
    parser.add_argument("--out", required=True, help="the dissection directory to write")
    parser.add_argument(
        "--topk", type=int, default=config.topk, help=f"top images kept per unit ({config.topk})"
    )
    parser.add_argument(
        "--quantile",
        type=float,
        default=config.quantile,
        help=f"top fraction of activations above a unit's threshold T ({config.quantile})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=config.batch_size,
        help=f"images per forward ({config.batch_size})",
    )
    add_device_argument(parser, config.device)
    parser.add_argument(
        "--seed", type=int, default=config.seed, help=f"random seed ({config.seed})"
    )
    add_speed_arguments(parser, config.workers, config.dtype)
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=resume.checkpoint_every,
        metavar="N",
        help=f"save partial state every N images per process ({resume.checkpoint_every}); "
        "a run started again with the same arguments resumes from it",
    )
    parser.add_argument(
        "--iou",
        action="store_true",
        help="also label every unit by IoU with the concept masks of DATA (Broden, "
        "synthetic:N) in the same pass: writes iou/ and the iou labels of labels.csv, with "
        "p-, z- and q-values of the permutation null, as dissect autolabel does",
    )
    add_permutations_argument(parser, IoUConfig.permutations, "with --iou, in the same pass")
    add_align_argument(parser, None)
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard the checkpoint of an earlier, unfinished run in --out and start over",
    )
    add_segmenter_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..datasets import open_data
    from ..errors import DissectError
    from ..streaming import run_dissection

    started = time.perf_counter()
    if args.segmenter and not args.iou:
        raise DissectError("--segmenter predicts masks for --iou labels: add --iou.")
    if args.align and not args.iou:
        raise DissectError("--align places the unit maps of --iou labels: add --iou.")
    loaded = load_model_from_args(args)
    preprocess = preprocess_from_args(args, loaded)
    layers, _ = layers_from_args(split_names(args.layers), loaded, preprocess)
    data = predicted_source(args, open_data(args.data), args.batch_size, args.device)
    try:
        dissection = run_dissection(
            loaded,
            data,
            args.out,
            layers,
            config=RunConfig(
                topk=args.topk,
                quantile=args.quantile,
                batch_size=args.batch_size,
                device=args.device,
                seed=args.seed,
                workers=args.workers,
                dtype=args.dtype,
            ),
            preprocess=preprocess,
            iou=args.iou,
            align=args.align or ALIGN,
            permutations=args.permutations,
            resume=ResumeConfig(checkpoint_every=args.checkpoint_every),
            restart=args.restart,
        )
    except KeyboardInterrupt as error:
        print(
            f"dissect run: interrupted; progress is saved in {args.out}/{CHECKPOINT_DIR}. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        return interrupted_status(error)
    if not distributed.is_main():
        return 0
    manifest = dissection.manifest
    for layer in dissection.layers:
        geometry = dissection.geometry(layer)
        if geometry.problem:
            print(f"layer {layer}: {geometry.problem}", file=sys.stderr)
    probe = manifest.get("probe_seconds", 0.0)
    print(
        f"dissected {len(dissection.layers)} layer(s) over {manifest['n_images']} images "
        f"({manifest['n_skipped']} skipped) in {time.perf_counter() - started:.1f} s "
        f"(pass {manifest['seconds']:.1f} s, geometry probe {probe:.1f} s"
        + (", the rest labelling by IoU" if args.iou else "")
        + f") -> {args.out}"
    )
    if args.iou:
        print(f"labelled the units by IoU in the same pass -> {args.out}/labels.csv")
        finish(args, args.out, data)
    return 0
