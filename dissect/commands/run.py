"""``dissect run MODEL DATA``: one pass that keeps every unit's top images and threshold."""

from __future__ import annotations

import argparse

from ..dissection import run_dissection
from ..models import load_model
from .common import add_model_arguments, preprocess_from_args, split_names

HELP = "dissect layers of MODEL over DATA: top-K images and activation threshold of every unit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "data",
        metavar="DATA",
        help="a folder of images, a Broden directory, or synthetic:N[:SEED]",
    )
    parser.add_argument(
        "--layers", help="comma-separated layer names (default: every conv and pool layer)"
    )
    parser.add_argument("--out", required=True, help="the dissection directory to write")
    parser.add_argument("--topk", type=int, default=50, help="top images kept per unit (50)")
    parser.add_argument(
        "--quantile",
        type=float,
        default=0.005,
        help="top fraction of activations above a unit's threshold T (0.005)",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward (64)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument("--workers", type=int, default=0, help="image-loading processes (0)")


def run(args: argparse.Namespace) -> int:
    loaded = load_model(args.model, args.weights)
    dissection = run_dissection(
        loaded,
        args.data,
        args.out,
        split_names(args.layers),
        topk=args.topk,
        quantile=args.quantile,
        batch_size=args.batch_size,
        preprocess=preprocess_from_args(args, loaded),
        device=args.device,
        seed=args.seed,
        workers=args.workers,
    )
    manifest = dissection.manifest
    print(
        f"dissected {len(dissection.layers)} layer(s) over {manifest['n_images']} images "
        f"({manifest['n_skipped']} skipped) in {manifest['seconds']:.1f} s -> {args.out}"
    )
    return 0
