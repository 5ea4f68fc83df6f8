"""Concept masks predicted by a segmentation network, for images without masks.

``PredictedSource`` (``source.py``) gives any image source predicted masks; ``SegmenterConcepts``
(``concepts.py``) reads a segmenter's concepts table and its output; ``evaluate_segmenter``
(``evaluate.py``) scores masks against true ones; ``metrics.py`` holds the confusion-matrix maths.
"""

from .concepts import SegmenterConcepts
from .evaluate import evaluate_segmenter
from .source import PredictedSource

__all__ = ["PredictedSource", "SegmenterConcepts", "evaluate_segmenter"]
