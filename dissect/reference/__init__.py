"""Published figures to draw beside ours.

``zhou2015_types.csv`` is the semantic-type distribution of Zhou et al., *Object Detectors Emerge
in Deep Scene CNNs* (ICLR 2015), per layer of the two networks the paper compares: the share of
the crowd annotations of each type, computed from the annotations its authors released
(zhoubolei/cnnvisualizer, ``unit_annotation/``, the ``.mat`` files: three annotations per unit over
all units of pool1 (96), pool2 (256), conv3 (384), conv4 (384) and pool5 (256)). Columns:
``network,layer,n_units`` and one share per type key of :mod:`dissect.taxonomy` (``color`` is the
paper's "simple elements & colors"); each row sums to 1 up to rounding. From the same files,
pool5 units whose majority type is object and whose mean precision is at least 0.75 number 59
in Places205-AlexNet and 30 in ImageNet-AlexNet (:data:`ZHOU2015_POOL5_OBJECT_DETECTORS`).
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

#: Where the reference table comes from, for captions and pages.
ZHOU2015_SOURCE = (
    "Zhou et al., ICLR 2015: share of crowd annotations of each type per layer, from the "
    "released annotations (zhoubolei/cnnvisualizer, unit_annotation/)"
)
#: pool5 units with majority type object and mean precision >= 0.75, per network.
ZHOU2015_POOL5_OBJECT_DETECTORS = {"Places205-AlexNet": 59, "ImageNet-AlexNet": 30}
#: The scene network of the paper first, then the object network.
ZHOU2015_NETWORKS = ("Places205-AlexNet", "ImageNet-AlexNet")


def zhou2015_types() -> pd.DataFrame:
    """The paper's type distribution in the long form of :func:`dissect.compare.type_table`.

    Returns
    -------
    DataFrame
        ``network,layer,category,fraction,n_units``: one row per network, layer and type key,
        ``fraction`` the share of the layer's annotations of that type, ``n_units`` the layer's
        units times that share (rounded), layers in the paper's order.
    """
    import pandas as pd

    with resources.files(__name__).joinpath("zhou2015_types.csv").open("r") as handle:
        wide = pd.read_csv(handle)
    keys = [column for column in wide.columns if column not in ("network", "layer", "n_units")]
    long = wide.melt(
        id_vars=["network", "layer", "n_units"],
        value_vars=keys,
        var_name="category",
        value_name="fraction",
    )
    long["_network"] = long["network"].map({n: i for i, n in enumerate(ZHOU2015_NETWORKS)})
    long["_layer"] = long.groupby("network", sort=False)["layer"].transform(
        lambda layers: layers.map({name: i for i, name in enumerate(dict.fromkeys(layers))})
    )
    long["_type"] = long["category"].map({key: i for i, key in enumerate(keys)})
    long = long.sort_values(["_network", "_layer", "_type"], kind="stable")
    long["n_units"] = (long["n_units"] * long["fraction"]).round().astype(int)
    table = long[["network", "layer", "category", "fraction", "n_units"]].reset_index(drop=True)
    table.attrs["source"] = ZHOU2015_SOURCE
    return table
