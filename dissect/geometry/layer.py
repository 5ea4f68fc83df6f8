"""Where a layer's feature positions sit in the input image: :class:`LayerGeometry`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class LayerGeometry:
    """Where a layer's feature positions sit in the input image.

    Attributes
    ----------
    name : str
        Module name.
    kind : str
        Module class name.
    output_shape : tuple of int
        Output shape for one image: (C, H, W) for spatial layers, (C,) otherwise.
    rf : tuple of int
        Theoretical receptive field (height, width) in input pixels; the whole input for
        non-spatial layers.
    stride : tuple of float
        Input pixels between neighbouring feature positions (y, x); 0 for non-spatial layers.
    offset : tuple of float
        Input coordinate (y, x) of the receptive-field centre of feature position (0, 0).
    rf_clipped : bool
        True when the receptive field is larger than the largest probe canvas, so ``rf`` is a
        lower bound.
    is_global : bool
        Every position depends on the whole image (see the module docstring); ``rf`` is the
        image size.
    global_reason : str
        The operation that made it global.
    problem : str
        Why the geometry could not be measured (then ``stride`` and ``offset`` are those of a
        plain resize); empty when it was.
    resampled : bool
        The layer comes after a resampling (upsampling) of activations: supports alternate
        around ``offset + i * stride``, and ``rf`` holds them all.
    extra_tokens : int or None
        For a token layer (B, N, C) read as C units over its patch grid: the leading tokens
        (class, register) left out of the grid; None for other layers.
    channels_last : bool
        The layer returns (B, H, W, C) maps, read as C units over H x W (``output_shape`` is
        (C, H, W)); hooks must be told (:class:`dissect.hooks.LayerTrace`'s ``channels_last``).
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    rf: tuple[int, int]
    stride: tuple[float, float]
    offset: tuple[float, float]
    rf_clipped: bool = False
    is_global: bool = False
    global_reason: str = ""
    problem: str = ""
    resampled: bool = False
    extra_tokens: int | None = None
    channels_last: bool = False

    @property
    def is_local(self) -> bool:
        """Whether each position depends exactly on its receptive-field box, the same way for
        every position (what the fast occlusion methods need)."""
        return self.is_spatial and not (self.is_global or self.problem or self.resampled)

    @property
    def is_spatial(self) -> bool:
        """Whether the output has spatial positions (C, H, W)."""
        return len(self.output_shape) == 3

    def center(self, y: float, x: float) -> tuple[float, float]:
        """Input pixel (y, x) at the centre of feature position (y, x)."""
        return (self.offset[0] + y * self.stride[0], self.offset[1] + x * self.stride[1])

    def to_dict(self) -> dict:
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict) -> LayerGeometry:
        tuples = ("output_shape", "rf", "stride", "offset")
        known = {field.name for field in fields(cls)}
        return cls(
            **{
                key: tuple(value) if key in tuples else value
                for key, value in values.items()
                if key in known
            }
        )
