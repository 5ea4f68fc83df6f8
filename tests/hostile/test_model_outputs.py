"""Networks that produce NaN units or need particular input sizes."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import torch
from torch import nn

from dissect.cli import main
from dissect.images import Preprocess
from dissect.streaming import run_dissection


class _FirstChannelNaN(nn.Module):
    def forward(self, x):
        return torch.cat([torch.full_like(x[:, :1], math.nan), x[:, 1:]], dim=1)


def _nan_unit_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 3, 3), _FirstChannelNaN())


def test_unit_with_only_nan_values_has_no_mean(tmp_path, image_folder):
    dissection = run_dissection(
        _nan_unit_net(), str(image_folder), tmp_path / "out", ["1"], topk=2,
        preprocess=Preprocess(16), progress=False,
    )  # fmt: skip
    units = dissection.units().set_index("unit")
    assert np.isnan(units.loc[0, "mean_activation"])  # used to be written as 0.0
    assert np.isfinite(units.loc[[1, 2], "mean_activation"]).all()


def test_image_size_the_network_cannot_take_says_which_it_can(tmp_path, capsys):
    """A U-Net-like network needs sides that are multiples of 32: say so, with the size to use."""
    source = tmp_path / "unet.py"
    source.write_text(
        textwrap.dedent(
            """
            import torch.nn.functional as F
            from torch import nn

            class Net(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = nn.Conv2d(3, 4, 3, padding=1)

                def forward(self, x):
                    y = self.conv(x)
                    coarse = F.interpolate(F.avg_pool2d(y, 32), scale_factor=32.0)
                    return y + coarse
            """
        )
    )
    assert main(["layers", f"{source}:Net", "--image-size", "100"]) == 2
    err = capsys.readouterr().err
    assert "multiples of 32; use --image-size 128" in err and "Traceback" not in err
