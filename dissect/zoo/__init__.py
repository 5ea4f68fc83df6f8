"""The built-in models: each one's architecture, training recipe and committed weights.

A built-in MODEL name (``scene-cnn``, ``object-cnn``, the segmenter
``world-fcn``) maps to a :class:`BuiltinModel`: a factory
for the untrained architecture, the weights file beside this module, and the preprocessing it was
trained with. ``python -m dissect.zoo.train`` reproduces the weights (see ``data/README.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..datasets.synthetic import IMAGE_SIZE
from ..datasets.synthetic.scenes import OBJECTS, SCENES
from ..images import Preprocess
from .scene_cnn import MEAN, OBJECT_WEIGHTS_PATH, STD, WEIGHTS_PATH, object_cnn, scene_cnn
from .world_fcn import FCN_WEIGHTS_PATH, concept_table, world_fcn

#: What the built-in networks dissect by default.
DEFAULT_LAYERS = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5")


@dataclass(frozen=True)
class BuiltinModel:
    """A named model shipped with dissect.

    Attributes
    ----------
    name : str
        The MODEL spec that selects it.
    factory : callable
        Returns the architecture, untrained.
    weights : Path or None
        State-dict file loaded into the architecture (``weights_only=True``).
    preprocess : Preprocess
        Input size and normalisation the model was trained with.
    classes : tuple of str or None
        Output class names.
    presence_category : str or None
        None for a classifier (one of ``classes`` per image). For a multi-label model, the
        concept category (``object``) whose presence each output predicts, one logit per
        concept of that category named in ``classes``.
    concepts : callable or None
        For a segmenter: returns its concepts table (``index,name,category,head``).
    description : str
        One line for listings.
    layers : tuple of str
        The layers ``dissect run`` dissects by default: every convolution and pooling layer
        (the paper's conv1..conv5 and their pools), kept explicit so that the study's results
        do not move with the block-output rule other networks get.
    """

    name: str
    factory: Callable[[], nn.Module]
    weights: Path | None
    preprocess: Preprocess
    classes: tuple[str, ...] | None = None
    presence_category: str | None = None
    concepts: Callable[[], object] | None = None
    description: str = ""
    layers: tuple[str, ...] = DEFAULT_LAYERS


_BUILTINS = {
    entry.name: entry
    for entry in (
        BuiltinModel(
            "scene-cnn",
            scene_cnn,
            WEIGHTS_PATH,
            Preprocess(IMAGE_SIZE, MEAN, STD),
            classes=tuple(SCENES),
            description="AlexNet-style scene classifier trained on the synthetic world",
        ),
        BuiltinModel(
            "object-cnn",
            object_cnn,
            OBJECT_WEIGHTS_PATH,
            Preprocess(IMAGE_SIZE, MEAN, STD),
            classes=tuple(kind.name for kind in OBJECTS),
            presence_category="object",
            description="the same network trained on the synthetic world to tell which objects "
            "are present (multi-label)",
        ),
        BuiltinModel(
            "world-fcn",
            world_fcn,
            FCN_WEIGHTS_PATH,
            Preprocess(IMAGE_SIZE, MEAN, STD),
            concepts=concept_table,
            description="fully convolutional segmenter of the synthetic world's objects, parts, "
            "materials and colours",
        ),
    )
}


def builtin_models() -> dict[str, BuiltinModel]:
    """Every built-in model by its MODEL name."""
    return dict(_BUILTINS)
