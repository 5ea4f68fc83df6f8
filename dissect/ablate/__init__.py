"""What a unit does for the network: ablate units and concept groups, score every class.

``config.py`` (parameters), ``sets.py`` (units, concept groups, the random-group null),
``copies.py`` (the hook that stacks ablated copies after the layer), ``sums.py`` (mergeable,
order-independent sums), ``listener.py`` (the pass's listener: the stacked tails of each batch),
``run.py`` (the plans, and the resumable, sharded pass on :mod:`dissect.passes`), ``tables.py``
(means, standard errors, p-values), ``stage.py`` (:func:`ablate` and its files), ``finding.py``
(the summary the demo prints).
"""

from .config import MODES, AblationConfig
from .finding import ablation_finding, describe_finding
from .sets import DEFAULT_DRAWS, GROUP_KINDS, AblationSet
from .stage import OUTPUTS, ablate
from .sums import AblationSums, TreeSum

__all__ = [
    "DEFAULT_DRAWS",
    "GROUP_KINDS",
    "MODES",
    "OUTPUTS",
    "AblationConfig",
    "AblationSet",
    "AblationSums",
    "TreeSum",
    "ablate",
    "ablation_finding",
    "describe_finding",
]
