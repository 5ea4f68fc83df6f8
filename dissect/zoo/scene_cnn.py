"""The built-in CNNs: a small AlexNet-style network trained on the synthetic world.

Layers, in order: ``conv1 relu1 pool1 conv2 relu2 pool2 conv3 relu3 conv4 relu4 conv5 relu5
pool5``, then the classifier ``avgpool dropout fc``. Trained by ``python -m dissect.zoo.train``
(with batch normalisation, folded into the convolutions before saving). Two trainings of the
same architecture ship: MODEL ``scene-cnn`` classifies the scene (8 classes, the paper's
Places-CNN) and ``object-cnn`` tells which of the 11 object classes are present (one logit each,
the paper's ImageNet-CNN).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..datasets.synthetic.scenes import OBJECTS, SCENES

#: The committed state dict of the trained scene classifier (``scene-cnn``).
WEIGHTS_PATH = Path(__file__).parent / "weights" / "scene_cnn.pt"
#: The committed state dict of the trained object-presence network (``object-cnn``).
OBJECT_WEIGHTS_PATH = Path(__file__).parent / "weights" / "object_cnn.pt"
#: Input normalisation (the synthetic world's channel statistics are close to 0.5 +- 0.25).
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
#: Output channels of conv1..conv5.
WIDTHS = (48, 96, 128, 128, 96)


class SceneCNN(nn.Module):
    """AlexNet-style convolutions and a global-average-pooling classifier.

    As in AlexNet, conv1 (7 x 7, stride 4) and two 3 x 3 / 2 max-pools bring a 112-pixel input
    to 7 x 7 feature maps for conv3..conv5 (stride 16); the classifier averages pool5 and
    applies one linear layer, which keeps conv5 units spatially selective.

    Parameters
    ----------
    classes : int
        Number of outputs (scene classes, or object classes for presence logits).
    batch_norm : bool
        Put a BatchNorm2d (``bn1`` .. ``bn5``) after each convolution; used for training only,
        see :func:`fold_batch_norm`.
    """

    def __init__(self, classes: int = len(SCENES), batch_norm: bool = False):
        super().__init__()
        c1, c2, c3, c4, c5 = WIDTHS
        layers = [
            ("conv1", nn.Conv2d(3, c1, 7, stride=4, padding=3)),
            ("pool1", nn.MaxPool2d(3, stride=2, padding=1)),
            ("conv2", nn.Conv2d(c1, c2, 5, padding=2)),
            ("pool2", nn.MaxPool2d(3, stride=2, padding=1)),
            ("conv3", nn.Conv2d(c2, c3, 3, padding=1)),
            ("conv4", nn.Conv2d(c3, c4, 3, padding=1)),
            ("conv5", nn.Conv2d(c4, c5, 3, padding=1)),
            ("pool5", nn.MaxPool2d(3, stride=2, padding=1)),
        ]
        for name, layer in layers:
            if name.startswith("conv"):
                number = name[len("conv") :]
                setattr(self, name, layer)
                if batch_norm:
                    setattr(self, f"bn{number}", nn.BatchNorm2d(layer.out_channels))
                setattr(self, f"relu{number}", nn.ReLU())
            else:
                setattr(self, name, layer)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(c5, classes)
        self._order = [name for name, _ in self.named_children() if name not in _CLASSIFIER]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output of ``pool5``: (N, 96, 4, 4) for a 112-pixel input (conv5 is 7 x 7)."""
        for name in self._order:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x)).flatten(1)
        return self.fc(self.dropout(x))


_CLASSIFIER = ("avgpool", "dropout", "fc")


def fold_batch_norm(trained: SceneCNN) -> SceneCNN:
    """A plain :class:`SceneCNN` computing what ``trained`` (with batch norm, in eval mode) does.

    Each ``bnK`` is folded into ``convK``: ``w' = w * g / s``, ``b' = (b - mu) * g / s + beta``
    with ``s = sqrt(var + eps)``.
    """
    plain = SceneCNN(trained.fc.out_features, batch_norm=False)
    state = {}
    for number in range(1, 6):
        conv, norm = getattr(trained, f"conv{number}"), getattr(trained, f"bn{number}")
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        state[f"conv{number}.weight"] = conv.weight * scale.view(-1, 1, 1, 1)
        state[f"conv{number}.bias"] = (conv.bias - norm.running_mean) * scale + norm.bias
    state["fc.weight"] = trained.fc.weight
    state["fc.bias"] = trained.fc.bias
    plain.load_state_dict({key: value.detach().clone() for key, value in state.items()})
    return plain


def scene_cnn() -> SceneCNN:
    """The architecture of the built-in ``scene-cnn`` model, untrained.

    Load the trained network with ``dissect.load_model("scene-cnn")``.
    """
    return SceneCNN(len(SCENES))


def object_cnn() -> SceneCNN:
    """The architecture of the built-in ``object-cnn`` model (one logit per object), untrained.

    Load the trained network with ``dissect.load_model("object-cnn")``.
    """
    return SceneCNN(len(OBJECTS))
