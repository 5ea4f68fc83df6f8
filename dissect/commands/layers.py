"""``dissect layers MODEL``: every named layer with its shape and receptive-field geometry."""

from __future__ import annotations

import argparse

from .common import add_model_arguments, preprocess_from_args

HELP = "list every named layer: type, output shape, stride, offset and theoretical receptive field"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..geometry import geometry_table
    from ..models import load_model

    loaded = load_model(args.model, args.weights)
    size = args.image_size or preprocess_from_args(args, loaded).image_size
    height, width = (size, size) if isinstance(size, int) else size
    table = geometry_table(loaded.module, image_size=(height, width))
    with pd.option_context("display.max_rows", None, "display.width", 250):
        print(f"# {args.model} at {height}x{width} px (height x width)")
        print(table.to_string(index=False))
    return 0
