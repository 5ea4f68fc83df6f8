"""Resolve a MODEL into an ``nn.Module`` in eval mode, safely (see :mod:`dissect.models.load`).

Modules: ``load.py`` (:func:`load_model`, :class:`LoadedModel`), ``specs.py`` (factory specs and
their literal arguments), ``hub.py`` (``torchvision:`` and ``timm:`` names, local caches,
preprocessing from the weights' metadata), ``weights.py`` (weights files read without running
anything), ``export.py`` (``.pt2``), ``onnx.py``.
"""

from .load import LoadedModel, load_model
from .specs import FactoryCall, parse_call
from .weights import load_weights, read_state_dict

__all__ = [
    "FactoryCall",
    "LoadedModel",
    "load_model",
    "load_weights",
    "parse_call",
    "read_state_dict",
]
