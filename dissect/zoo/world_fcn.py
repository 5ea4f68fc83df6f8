"""``world-fcn``: a small fully convolutional network that segments the synthetic world.

In the spirit of Long et al.'s FCN ("Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015): a classifier made of convolutions only (its last stage a 1 x 1 "fully connected"
convolution), per-class scores at the coarsest stride upsampled by bilinear interpolation and
summed with scores read off finer stages (skip connections at strides 8, 4 and 1, as FCN-8s adds
pool4 and pool3), so coarse semantics and fine boundaries meet. One output, (B, 62, H, W), holds
four heads side by side, because a pixel is an object, a part, a material and a colour at once:
object (``none`` + 11), part (``none`` + 28), material (10), colour (11). Each head is read by
argmax over its channels (:func:`concept_table` says which channel is which).

Trained by ``python -m dissect.zoo.train --task segment`` (:mod:`dissect.zoo.segment_train`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..datasets.synthetic.scenes import OBJECTS, PARTS
from ..datasets.synthetic.textures import COLORS, MATERIALS

#: The committed state dict of ``world-fcn``.
FCN_WEIGHTS_PATH = Path(__file__).parent / "weights" / "world_fcn.pt"
#: Channels of each head, in output order; ``none`` rows mark "no concept of this head".
HEADS = {
    "object": ("none", *(kind.name for kind in OBJECTS)),
    "part": ("none", *(f"{obj} {part}" for obj, part in PARTS)),
    "material": tuple(MATERIALS),
    "color": tuple(COLORS),
}
#: Output channels in all.
CHANNELS = sum(len(names) for names in HEADS.values())
#: Widths of the stages at strides 1, 2, 4, 8, 16.
WIDTHS = (24, 32, 64, 96, 128)


def concept_table():
    """The concepts table of ``world-fcn``: ``index,name,category,head`` per output channel.

    A ``none`` channel has an empty name: a pixel whose argmax falls there has no concept of
    that head. Names are the synthetic world's concept names.
    """
    import pandas as pd

    rows = [
        (head, "" if name == "none" and head in ("object", "part") else name)
        for head, names in HEADS.items()
        for name in names
    ]
    return pd.DataFrame(
        {
            "index": range(len(rows)),
            "name": [name for _, name in rows],
            "category": [head for head, _ in rows],
            "head": [head for head, _ in rows],
        }
    )


def _block(inputs: int, outputs: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(outputs),
        nn.ReLU(),
    )


class WorldFCN(nn.Module):
    """FCN with skip connections; output (B, 62, H, W) scores at the input's size.

    Stages ``stage1`` (stride 1) .. ``stage5`` (stride 16); ``fc`` is the convolutionalised
    classifier on stage 5 (a 1 x 1 convolution); ``score16``, ``score8``, ``score4`` and
    ``score1`` read class scores off ``fc``, stage 4, stage 3 and stage 1.
    """

    def __init__(self, channels: int = CHANNELS):
        super().__init__()
        w1, w2, w3, w4, w5 = WIDTHS
        self.stage1 = nn.Sequential(_block(3, w1, 1), nn.Conv2d(w1, w1, 1), nn.ReLU())
        self.stage2 = _block(w1, w2, 2)
        self.stage3 = _block(w2, w3, 2)
        self.stage4 = nn.Sequential(_block(w3, w4, 2), _block(w4, w4, 1))
        self.stage5 = nn.Sequential(_block(w4, w5, 2), _block(w5, w5, 1))
        self.fc = nn.Sequential(nn.Conv2d(w5, w5, 1), nn.ReLU())
        self.score16 = nn.Conv2d(w5, channels, 1)
        self.score8 = nn.Conv2d(w4, channels, 1)
        self.score4 = nn.Conv2d(w3, channels, 1)
        self.score1 = nn.Conv2d(w1, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.stage1(x)
        s3 = self.stage3(self.stage2(s1))
        s4 = self.stage4(s3)
        scores = self.score16(self.fc(self.stage5(s4)))
        for skip, score in ((s4, self.score8), (s3, self.score4), (s1, self.score1)):
            scores = _upsample(scores, skip.shape[-2:]) + score(skip)
        return scores


def _upsample(scores: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)


def world_fcn() -> WorldFCN:
    """The architecture of the built-in ``world-fcn`` segmenter, untrained."""
    return WorldFCN()
