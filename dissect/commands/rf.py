"""``dissect rf DIR``: empirical receptive fields of units by occlusion, beside theoretical ones."""

from __future__ import annotations

import argparse

from ..config import DISCREPANCIES, OcclusionConfig, RfOptions
from .common import add_device_argument, add_resume_arguments, split_ints, split_names

HELP = (
    "measure each unit's empirical receptive field by sliding a noise occluder over its top "
    "images; write receptive_fields.csv, per-layer maps, a per-layer table and plots"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="a dissection directory (dissect run)")
    parser.add_argument("--layers", help="comma-separated layers (default: all dissected)")
    parser.add_argument("--units", help="comma-separated unit numbers (default: all)")
    config, options = OcclusionConfig(), RfOptions()
    parser.add_argument(
        "--top", type=int, default=config.top, help=f"top images per unit ({config.top})"
    )
    parser.add_argument(
        "--occluder",
        type=int,
        default=config.occluder,
        help=f"occluder side in pixels ({config.occluder})",
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=config.stride,
        help=f"occluder grid step in pixels ({config.stride})",
    )
    parser.add_argument(
        "--discrepancy",
        choices=list(DISCREPANCIES),
        default=config.discrepancy,
        help=f"|change| of the unit at its peak or summed over its whole map "
        f"(default {config.discrepancy})",
    )
    parser.add_argument(
        "--fraction",
        type=float,
        default=config.fraction,
        help="empirical size: area where the averaged map is >= this fraction of its max "
        f"({config.fraction})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=config.batch_size,
        help=f"occluded images per forward ({config.batch_size})",
    )
    parser.add_argument(
        "--seed", type=int, default=config.seed, help=f"seed of the noise occluder ({config.seed})"
    )
    add_device_argument(parser, options.device)
    add_resume_arguments(parser, "the finished occluded passes of the layer in flight")
    parser.add_argument(
        "--plot-units",
        type=int,
        default=options.plot_units,
        help=f"units per layer shown in the map plot ({options.plot_units})",
    )


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from .. import distributed
    from ..directory import layer_file_name, read_table
    from ..dissection import Dissection
    from ..plots import save_figure
    from ..plots.receptive_field import plot_rf_maps, plot_rf_sizes
    from ..rf import (
        LAYERS_CSV,
        UNITS_CSV,
        layer_summary,
        load_maps,
        receptive_fields,
    )

    dissection = Dissection(args.directory)
    config = OcclusionConfig(
        top=args.top,
        occluder=args.occluder,
        stride=args.stride,
        discrepancy=args.discrepancy,
        fraction=args.fraction,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    layers = dissection.check_layers(split_names(args.layers))
    table = receptive_fields(
        dissection,
        layers,
        split_ints(args.units),
        config,
        device=args.device,
        restart=args.restart,
        checkpoint_seconds=args.checkpoint_seconds,
    )
    if not distributed.is_main():
        return 0
    for layer in layers:
        stored = load_maps(dissection, layer)
        shown = slice(0, max(args.plot_units, 0))
        figure = plot_rf_maps(
            stored["maps"][shown],
            stored["units"][shown].tolist(),
            tuple(int(v) for v in stored["rf_theoretical"]),
            stored["rf_empirical"][shown],
            layer=layer,
        )
        save_figure(figure, dissection.path("plots", f"rf_{layer_file_name(layer)}.png"))
    summary = read_table(dissection.directory, LAYERS_CSV)
    save_figure(plot_rf_sizes(summary), dissection.path("plots", "rf_sizes.png"))
    summary = layer_summary(table[table["layer"].isin(layers)])
    with pd.option_context("display.width", 200):
        print(summary.drop(columns="silent_units").to_string(index=False))
    for row in summary[summary["n_silent"] > 0].itertuples():
        print(
            f"{row.layer}: occlusion never changed unit(s) {row.silent_units.replace(' ', ', ')} "
            "on their top images (zero discrepancy everywhere: dead or saturated units); they "
            "have no size and are left out of the means"
        )
    print(
        f"-> {dissection.path(UNITS_CSV)}, {dissection.path(LAYERS_CSV)}, "
        f"plots in {dissection.path('plots')}"
    )
    return 0
