"""``dissect layers MODEL``: every named layer with its shape and receptive-field geometry.

It also says where the weights came from, the preprocessing (a pretrained model's own, from its
weights' metadata), which layers ``dissect run`` dissects by default and why, and, with
``--layers``, which layers the names, globs and ``type:`` filters pick (column ``dissect``).
"""

from __future__ import annotations

import argparse

from .common import (
    add_model_arguments,
    layers_from_args,
    load_model_from_args,
    preprocess_from_args,
    split_names,
)

HELP = "list every named layer: type, output shape, stride, offset and theoretical receptive field"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--layers",
        help="show which layers these names, globs (layer*, features.*) or types "
        "(type:Bottleneck) pick, as dissect run --layers would (default: the default layers)",
    )


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..geometry import geometry_table

    loaded = load_model_from_args(args)
    preprocess = preprocess_from_args(args, loaded)
    height, width = preprocess.size
    chosen, why = layers_from_args(split_names(args.layers), loaded, preprocess)
    table = geometry_table(loaded.module, image_size=(height, width))
    marks = {name: "yes" for name in chosen}
    table.insert(1, "dissect", [marks.get(name, "") for name in table["layer"]])
    with pd.option_context("display.max_rows", None, "display.width", 250):
        print(f"# {args.model} at {height}x{width} px (height x width)")
        print(f"# weights: {loaded.source or 'as built'}")
        print(f"# preprocessing: {preprocess.describe()}")
        print(f"# dissected ({why}): {', '.join(chosen)}")
        print(table.to_string(index=False))
    return 0
