"""dissect: network dissection of trained CNNs (Zhou et al., ICLR 2015)."""

__version__ = "0.1.0"

from .annotation import export_annotation, import_answers  # noqa: E402
from .data import Preprocess, open_data  # noqa: E402
from .datasets.broden import BrodenDataset, export_broden  # noqa: E402
from .datasets.synthetic import SyntheticWorld, open_synthetic  # noqa: E402
from .dissection import Dissection, run_dissection  # noqa: E402
from .errors import DissectError  # noqa: E402
from .geometry import LayerGeometry, geometry_table, layer_geometry  # noqa: E402
from .hooks import LayerTrace  # noqa: E402
from .iou import autolabel, compute_iou, read_iou  # noqa: E402
from .models import load_model  # noqa: E402
from .receptive_field import OcclusionConfig, load_maps, receptive_fields  # noqa: E402
from .report import write_report  # noqa: E402
from .scene_cnn import scene_cnn  # noqa: E402
from .segment import iter_segments, write_segments  # noqa: E402
from .semantics import Taxonomy, concept_table, layer_type_table, write_statistics  # noqa: E402
from .train import evaluate  # noqa: E402

__all__ = [
    "BrodenDataset",
    "SyntheticWorld",
    "evaluate",
    "export_broden",
    "open_synthetic",
    "scene_cnn",
    "Dissection",
    "DissectError",
    "LayerGeometry",
    "LayerTrace",
    "Preprocess",
    "__version__",
    "export_annotation",
    "import_answers",
    "iter_segments",
    "write_segments",
    "geometry_table",
    "layer_geometry",
    "load_model",
    "open_data",
    "run_dissection",
    "Taxonomy",
    "autolabel",
    "compute_iou",
    "concept_table",
    "layer_type_table",
    "read_iou",
    "write_report",
    "write_statistics",
    "OcclusionConfig",
    "load_maps",
    "receptive_fields",
]
