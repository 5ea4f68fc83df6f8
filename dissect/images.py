"""Images in, tensors out: the ImageSource interface, reading files, preprocessing, batches.

Every source is a random-access, deterministic list of images: index ``i`` always names the same
image, so shards and resumed runs agree. The sources themselves (folders, Broden, the synthetic
world) and ``open_data(spec)`` live in :mod:`dissect.datasets`.
"""

from __future__ import annotations

import abc
import dataclasses
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import AUTO, check_workers, image_hw
from .errors import DissectError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Resampling filters a :class:`Preprocess` may name.
RESAMPLING = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class ImageReadError(Exception):
    """An image that cannot be read; the pass skips it and records ``str(error)``."""


class ImageSource(abc.ABC):
    """A deterministic, random-access collection of RGB images.

    Subclasses implement ``__len__``, ``image_id`` and ``read_rgb``. Sources with image-level
    labels set ``classes`` and implement ``label``; sources with dense concept masks (Broden, the
    synthetic world) also implement the concept-mask API of :mod:`dissect.datasets`.
    """

    #: The DATA spec that reopens this source (written to the manifest).
    spec: str = ""
    #: Names of the image-level classes, or None when the source has no labels.
    classes: Sequence[str] | None = None

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def image_id(self, index: int) -> str:
        """A stable name for image ``index`` (a relative path, or a generated id)."""

    @abc.abstractmethod
    def read_rgb(self, index: int) -> np.ndarray:
        """Return image ``index`` as (H, W, 3) uint8; raise ImageReadError if unreadable."""

    def label(self, index: int) -> int:
        """Return the class index of image ``index`` (only for labelled sources)."""
        raise DissectError(f"DATA {self.spec!r} has no image-level labels.")


def to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode (grey, palette, RGBA, 16-bit) to (H, W, 3) uint8."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Integers up to their maximum; floats (mode F, as scientific TIFFs hold them) in [0, 1]
        # as they usually are, or up to their maximum when larger. NaN reads as black.
        array = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0)
        top = array.max()
        top = 1.0 if image.mode == "F" and top <= 1.0 else (top or 1.0)
        image = Image.fromarray((np.clip(array / top, 0.0, 1.0) * 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_image_file(path: Path) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8, upright; raise ImageReadError naming the problem.

    The EXIF orientation of a photo is applied (``PIL.ImageOps.exif_transpose``), so the pixels
    are those a viewer shows. An image with more pixels than PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, twice it for an outright refusal) is not decoded: it is
    reported as unreadable, like a corrupt file, and the pass skips it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return to_rgb(ImageOps.exif_transpose(image))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageReadError(
            f"image too large to decode safely (PIL's decompression-bomb limit is "
            f"{Image.MAX_IMAGE_PIXELS} pixels): {error}"
        ) from error
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise ImageReadError(f"cannot read image: {error}") from error


#: How many times the output's area a covering resize may take before only the crop is resampled.
_MAX_COVER = 16


@dataclass(frozen=True)
class Preprocess:
    """Resize the image to cover ``image_size``, centre-crop it to that size, normalise.

    Attributes
    ----------
    image_size : int or (int, int)
        Side of the square network input, or its (height, width), in pixels (a square given as
        a pair is kept as its side).
    mean, std : tuple of float
        Per-channel normalisation applied to values in [0, 1], in R, G, B order.
    bgr : bool
        Feed the channels in B, G, R order (networks trained with OpenCV / Caffe); ``mean`` and
        ``std`` are still given as R, G, B.
    resize : int or None
        Resize the shorter side to this many pixels before the centre crop (torchvision's
        ``Resize(256)`` then ``CenterCrop(224)``; timm's ``crop_pct``); None resizes just enough
        to cover ``image_size``.
    interpolation : str
        PIL resampling filter of the resize: ``bilinear``, ``bicubic``, ``nearest``,
        ``lanczos``, ``box`` or ``hamming``.
    """

    image_size: int | tuple[int, int] = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    bgr: bool = False
    resize: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int):
            height, width = (int(value) for value in self.image_size)
            object.__setattr__(self, "image_size", height if height == width else (height, width))
        if self.interpolation not in RESAMPLING:
            raise DissectError(
                f"interpolation {self.interpolation!r} is not one of {', '.join(RESAMPLING)}."
            )

    @property
    def size(self) -> tuple[int, int]:
        """The network input's (height, width) in pixels."""
        return image_hw(self.image_size)

    def display(self, rgb: np.ndarray) -> np.ndarray:
        """Return the resized, centre-cropped (H, W, 3) uint8 image the network sees."""
        return self._fit(rgb, RESAMPLING[self.interpolation])

    def display_labels(self, labels: np.ndarray) -> np.ndarray:
        """Resize and crop an (H, W) integer label map exactly like :meth:`display` (nearest)."""
        return self._fit(np.asarray(labels, dtype=np.int32), Image.Resampling.NEAREST)

    def _fit(self, array: np.ndarray, resample: Image.Resampling) -> np.ndarray:
        height, width = array.shape[:2]
        out_h, out_w = self.size
        if (height, width) == (out_h, out_w) and self.resize is None:
            return array
        # The smallest scale at which the image covers the output (for a square: the shorter
        # side to the output side), then the centre crop.
        scale = max(out_h / height, out_w / width, (self.resize or 0) / min(height, width))
        new_h, new_w = max(out_h, round(height * scale)), max(out_w, round(width * scale))
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        image = Image.fromarray(array)
        if new_h * new_w > _MAX_COVER * out_h * out_w:
            # A far longer image than the output (a 30000x1 strip would cover 224x224 at 1.5
            # gigapixels): resample only the part the crop keeps, at the same scale (PIL's box
            # in source pixels). Ordinary images keep the plain resize, pixel for pixel as ever.
            x_step, y_step = width / new_w, height / new_h
            box = (left * x_step, top * y_step, (left + out_w) * x_step, (top + out_h) * y_step)
            box = (*box[:2], min(width, box[2]), min(height, box[3]))
            return np.asarray(image.resize((out_w, out_h), resample, box=box), dtype=array.dtype)
        resized = np.asarray(image.resize((new_w, new_h), resample), dtype=array.dtype)
        return resized[top : top + out_h, left : left + out_w]

    def tensor(self, rgb: np.ndarray) -> torch.Tensor:
        """Return the normalised (3, H, W) float32 tensor (the input size) for an image."""
        scale = np.float32(255.0) * np.asarray(self.std, dtype=np.float32)
        shift = np.asarray(self.mean, dtype=np.float32) / np.asarray(self.std, dtype=np.float32)
        array = self.display(rgb).astype(np.float32) / scale - shift
        if self.bgr:
            array = array[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size
            if isinstance(self.image_size, int)
            else list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "bgr": self.bgr,
            # only when set, so that the manifests of runs without them stay as they were
            **({"resize": self.resize} if self.resize is not None else {}),
            **({"interpolation": self.interpolation} if self.interpolation != "bilinear" else {}),
        }

    @classmethod
    def from_dict(cls, values: dict) -> Preprocess:
        """The inverse of :meth:`to_dict` (a manifest's ``preprocess``)."""
        size = values["image_size"]
        return cls(
            size if isinstance(size, int) else tuple(size),
            tuple(values["mean"]),
            tuple(values["std"]),
            bool(values.get("bgr", False)),
            values.get("resize"),
            values.get("interpolation", "bilinear"),
        )

    def describe(self) -> str:
        """One line for people: ``resize 256, crop 224, bilinear, mean ..., std ...``."""
        height, width = self.size
        crop = f"{height}" if height == width else f"{height}x{width} (HxW)"
        resize = f"resize shorter side to {self.resize}, " if self.resize else "resize to cover, "
        numbers = ",".join(f"{value:g}" for value in self.mean)
        spread = ",".join(f"{value:g}" for value in self.std)
        order = ", BGR" if self.bgr else ""
        return (
            f"{resize}centre crop {crop}, {self.interpolation}, mean {numbers}, std {spread}{order}"
        )


class TensorDataset(torch.utils.data.Dataset):
    """Preprocessed images of a source, for a DataLoader; unreadable images come back as None."""

    def __init__(self, source: ImageSource, preprocess: Preprocess, indices: Sequence[int]):
        self.source = source
        self.preprocess = preprocess
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, str]:
        index = self.indices[position]
        try:
            return index, self.preprocess.tensor(self.source.read_rgb(index)), ""
        except ImageReadError as error:
            return index, None, str(error)


@dataclass
class Batch:
    """A batch of readable images plus the images of this batch that were skipped."""

    indices: torch.Tensor
    images: torch.Tensor
    skipped: list[tuple[int, str]]

    def pin_memory(self) -> Batch:
        """This batch with its images in page-locked memory (the DataLoader's ``pin_memory``)."""
        return dataclasses.replace(self, images=self.images.pin_memory())


def collate(items: list[tuple[int, torch.Tensor | None, str]]) -> Batch:
    """Stack readable images; keep (index, reason) for unreadable ones."""
    good = [(index, image) for index, image, _ in items if image is not None]
    skipped = [(index, reason) for index, image, reason in items if image is None]
    if good:
        indices = torch.tensor([index for index, _ in good], dtype=torch.int64)
        images = torch.stack([image for _, image in good])
    else:
        indices = torch.zeros(0, dtype=torch.int64)
        images = torch.zeros(0)
    return Batch(indices, images, skipped)


def make_loader(
    source: ImageSource,
    preprocess: Preprocess,
    indices: Sequence[int],
    batch_size: int,
    workers: int | str = 0,
    device: torch.device | None = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``indices`` of ``source`` in order, yielding :class:`Batch` objects.

    ``workers`` processes decode the images (``auto``: :func:`dissect.device.auto_workers` for
    ``device``); the batches come in the same order with the same bytes as with 0. For a CUDA
    ``device`` they come in pinned memory, so their copy to it can overlap the forward.
    """
    return data_loader(
        TensorDataset(source, preprocess, indices), batch_size, collate, workers, device
    )


def data_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    collate_fn: Callable[[list], Batch],
    workers: int | str = 0,
    device: torch.device | None = None,
) -> torch.utils.data.DataLoader:
    """The DataLoader of every pass: ``dataset`` in order, ``batch_size`` items per batch put
    together by ``collate_fn``, decoded by ``workers`` processes (``auto``: as many as help on
    ``device``, see :func:`dissect.device.auto_workers`), pinned for a CUDA ``device``."""
    from . import distributed
    from .device import auto_workers

    check_workers(workers)
    device = device or torch.device("cpu")
    if workers == AUTO:
        batches = -(-len(dataset) // batch_size)
        workers = auto_workers(device, batches, distributed.local_world_size())
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        generator=torch.Generator(),  # workers' seeds: the caller's global RNG is left alone
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
    )


def warn_skipped(source: ImageSource, skipped: list[tuple[int, str]]) -> None:
    """Warn once per unreadable image, naming it."""
    for index, reason in skipped:
        warnings.warn(f"skipped image {source.image_id(index)!r}: {reason}", stacklevel=2)
