"""dissect: network dissection of trained CNNs (Zhou et al., ICLR 2015).

The public API, importable from ``dissect`` itself; names load on first use, so that
``import dissect`` (and ``dissect --help``) stays instant and loads neither torch nor matplotlib.
The package reads in the order of the study:

- load model and data: ``models`` (MODEL specs, safe loading), ``zoo`` (built-in models, their
  recipe and weights), ``images`` (image files, preprocessing, batches), ``datasets`` (folders,
  Broden, the synthetic world), ``evaluate`` (accuracy of a model on labelled data);
- capture and stream statistics: ``hooks`` (tracing named layers), ``geometry`` (theoretical
  receptive field, stride, offset), ``running_stats`` (mergeable top-K and threshold),
  ``upsample`` (unit maps aligned with pixels);
- the dissection directory: ``dissection`` (the pass and the directory), ``checkpoint`` (resume),
  ``distributed`` (torchrun);
- label units: ``iou`` (automatic, by IoU with concept masks), ``annotation`` (crowd export and
  import), ``labels`` (labels.csv);
- ``rf`` (empirical receptive fields by occlusion), ``segment`` (segmented top images);
- ``taxonomy`` and ``semantics`` (semantic types per layer), ``plots``, ``report``, ``demo``;
- ``compare`` (networks side by side, with the paper's figures from ``reference``), ``explain``
  (the units that explain one image), ``ablate`` (what units and concept groups do for each
  class: ``from dissect.ablate import ablate``);
- ``cli`` and ``commands`` (one module per subcommand).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "export_annotation": "annotation",
    "import_answers": "annotation",
    "Preprocess": "images",
    "open_data": "datasets",
    "BrodenDataset": "datasets.broden",
    "export_broden": "datasets.broden",
    "SyntheticWorld": "datasets.synthetic",
    "open_synthetic": "datasets.synthetic",
    "AblationConfig": "ablate",
    "Comparison": "compare",
    "compare_dissections": "compare",
    "write_comparison": "compare",
    "Dissection": "dissection",
    "dissect": "onecall",
    "open_dissection": "onecall",
    "NotebookDissection": "notebook",
    "run_dissection": "streaming",
    "DissectError": "errors",
    "evaluate": "evaluate",
    "Explanation": "explain",
    "explain_image": "explain",
    "write_explanation": "explain",
    "LayerGeometry": "geometry",
    "geometry_table": "geometry",
    "layer_geometry": "geometry",
    "LayerTrace": "hooks",
    "autolabel": "iou",
    "compute_iou": "iou",
    "read_iou": "iou",
    "load_model": "models",
    "OcclusionConfig": "rf",
    "load_maps": "rf",
    "receptive_fields": "rf",
    "zhou2015_types": "reference",
    "write_report": "report",
    "scene_cnn": "zoo.scene_cnn",
    "iter_segments": "segment",
    "write_segments": "segment",
    "Taxonomy": "taxonomy",
    "concept_table": "semantics",
    "layer_type_table": "semantics",
    "write_statistics": "semantics",
}

#: Sub-packages and modules reachable as attributes (``dissect.plots.semantics``).
_SUBMODULES = {"annotation", "datasets", "plots", "reference", "rf", "zoo"}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
