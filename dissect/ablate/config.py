"""The parameters of an ablation pass, in one frozen dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import DissectError
from .sets import DEFAULT_DRAWS, GROUP_KINDS

#: How an ablated unit is silenced: set to 0, or to its dataset mean from the dissection pass.
MODES = ("zero", "mean")


@dataclass(frozen=True)
class AblationConfig:
    """What ``dissect ablate`` measures.

    Parameters
    ----------
    units : str or tuple of int
        Units ablated one at a time: ``all``, ``labelled`` (the detectors), ``none``, or numbers.
    mode : str
        ``zero``, or ``mean``: every position of the unit set to its dataset mean
        (``mean_activation`` of ``units.csv``, the mean over every image and position of the
        dissection pass).
    groups : tuple of str
        Concept groups to ablate, among ``label`` and ``type``; empty for none.
    draws : int
        Random groups of each group size for the null (at least 100 for p-values to 0.01).
    batch_size : int
        Images per forward.
    seed : int
        Seeds the random groups.
    copies_mib : float, optional
        Memory for the ablated copies of one forward; default: as much as the input batch.
    """

    units: str | tuple[int, ...] = "all"
    mode: str = "zero"
    groups: tuple[str, ...] = GROUP_KINDS
    draws: int = DEFAULT_DRAWS
    batch_size: int = 32
    seed: int = 0
    copies_mib: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DissectError(f"--mode must be zero or mean, got {self.mode!r}.")
        unknown = [kind for kind in self.groups if kind not in GROUP_KINDS]
        if unknown:
            raise DissectError(
                f"--groups takes label, type (comma-separated) or none, got {','.join(unknown)}."
            )
        if self.batch_size < 1 or self.draws < 0:
            raise DissectError("--batch-size must be at least 1 and --draws at least 0.")
        if self.copies_mib is not None and self.copies_mib <= 0:
            raise DissectError("--copies-mib must be positive.")

    def to_dict(self) -> dict:
        values = asdict(self)
        values["units"] = self.units if isinstance(self.units, str) else list(self.units)
        values["groups"] = list(self.groups)
        return values
