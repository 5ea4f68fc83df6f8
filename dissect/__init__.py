"""dissect: network dissection of trained CNNs (Zhou et al., ICLR 2015)."""

__version__ = "0.1.0"

from .errors import DissectError  # noqa: E402

__all__ = ["DissectError", "__version__"]
