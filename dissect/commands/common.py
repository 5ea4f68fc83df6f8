"""Arguments shared by several subcommands."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..config import (
    ALIGNMENTS,
    AUTO,
    DTYPES,
    FDR,
    RULES,
    DetectorRule,
    ResumeConfig,
    SegmentConfig,
    image_hw,
)
from ..errors import DissectError
from ..taxonomy import DEFAULT_TAXONOMY, Taxonomy

if TYPE_CHECKING:
    from ..images import Preprocess
    from ..models import LoadedModel


def split_names(text: str | None) -> list[str] | None:
    """``"conv3,conv5"`` -> ``["conv3", "conv5"]``; None stays None."""
    if text is None:
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def split_ints(text: str | None, flag: str = "--units") -> list[int] | None:
    """``"0,3,17"`` -> ``[0, 3, 17]``; None stays None; anything else is a clear error."""
    names = split_names(text)
    if names is None:
        return None
    try:
        return [int(name) for name in names]
    except ValueError as error:
        raise DissectError(
            f"{flag} takes comma-separated unit numbers like 0,3,17: {text!r}."
        ) from error


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL, --weights, --allow-download and preprocessing flags."""
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="built-in name (scene-cnn, object-cnn); torchvision:NAME[:WEIGHTS] or "
        "timm:NAME[.TAG] (pip install 'dissect[torchvision]' / 'dissect[timm]'); file.py:callable "
        "or package.module:callable; any factory with literal arguments, e.g. "
        "'torchvision:resnet18(num_classes=365)'; a torch.export .pt2 file; or an .onnx file "
        "(pip install 'dissect[onnx]')",
    )
    parser.add_argument(
        "--weights",
        help="weights for MODEL's architecture: a state dict, a checkpoint holding one "
        "(state_dict, model, module. prefixes, Places365 .pth.tar) or .safetensors; read "
        "without running anything in the file",
    )
    parser.add_argument(
        "--allow-download",
        action="store_true",
        help="let torchvision:/timm: MODELs download weights missing from the local cache "
        "(TORCH_HOME, the Hugging Face cache); off by default",
    )
    parser.add_argument(
        "--image-size",
        type=image_size,
        help="input side N (N x N), or H,W, in pixels (default: the model's own, else 224)",
    )
    parser.add_argument(
        "--mean", type=floats3, help="normalisation mean as R,G,B (default ImageNet's)"
    )
    parser.add_argument(
        "--std", type=floats3, help="normalisation std as R,G,B (default ImageNet's)"
    )
    parser.add_argument(
        "--bgr",
        action="store_true",
        help="feed channels in B,G,R order (OpenCV/Caffe-trained models); --mean/--std stay R,G,B",
    )


def load_model_from_args(args: argparse.Namespace) -> LoadedModel:
    """MODEL with --weights and --allow-download."""
    from ..models import load_model

    return load_model(args.model, args.weights, getattr(args, "allow_download", False))


def preprocess_from_args(args: argparse.Namespace, loaded: LoadedModel) -> Preprocess:
    """The model's preprocessing with any --image-size, --mean, --std, --bgr overrides.

    A pretrained model's resize before the crop (torchvision's 256 for a 224 crop) keeps its
    ratio to the crop at another --image-size.
    """
    from dataclasses import replace

    base = loaded.preprocess
    resize = base.resize
    if args.image_size and resize:
        resize = round(resize * min(image_hw(args.image_size)) / min(base.size))
    return replace(
        base,
        image_size=args.image_size or base.image_size,
        mean=args.mean or base.mean,
        std=args.std or base.std,
        bgr=args.bgr or base.bgr,
        resize=resize,
    )


def layers_from_args(
    items: list[str] | None, loaded: LoadedModel, preprocess: Preprocess
) -> tuple[list[str], str]:
    """The layers ``--layers`` picks (names, globs, ``type:``), or the model's default.

    Returns
    -------
    (list of str, str)
        The layer names and, in words, why these (the pattern or the default rule).
    """
    from ..block_outputs import model_default_layers
    from ..layer_select import select_layers

    if items:
        return select_layers(loaded.module, items), f"--layers {','.join(items)}"
    chosen = model_default_layers(loaded, preprocess.size)
    return chosen.layers, f"default: {chosen.rule}"


def image_size(text: str) -> int | tuple[int, int]:
    """``"224"`` -> 224 (224 x 224); ``"240,320"`` -> (240, 320) (height, width)."""
    try:
        values = [int(value) for value in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected N or H,W in pixels, like 224 or 240,320, got {text!r}"
        ) from None
    if len(values) not in (1, 2) or min(values) < 8:
        raise argparse.ArgumentTypeError(
            f"expected N or H,W in pixels, each at least 8, like 224 or 240,320, got {text!r}"
        )
    return values[0] if len(values) == 1 else (values[0], values[1])


def floats3(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected three numbers like 0.5,0.5,0.5, got {text!r}"
        ) from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers (R,G,B), got {text!r}")
    return values


def add_detector_arguments(parser: argparse.ArgumentParser, crowd: bool = True) -> None:
    """--min-precision (when ``crowd``), --min-iou, --max-p and --mapping: which units count as
    detectors, and of which type; every command that takes them reads them the same way (see
    :func:`dissect.semantics.detectors`); defaults from :class:`dissect.config.DetectorRule`."""
    rule = DetectorRule()
    if crowd:
        parser.add_argument(
            "--min-precision",
            type=float,
            default=rule.min_precision,
            help=f"crowd labels count as detectors from this precision ({rule.min_precision})",
        )
    parser.add_argument(
        "--min-iou",
        type=float,
        default=rule.min_iou,
        help=f"automatic labels count as detectors from this IoU ({rule.min_iou})",
    )
    parser.add_argument(
        "--max-p",
        type=_probability,
        default=rule.max_p,
        help="automatic labels count as detectors only with a permutation p-value at most this "
        "(default: p-values not used; the smallest is 1/(permutations+1))",
    )
    parser.add_argument(
        "--mapping",
        metavar="CSV",
        help="your own dataset category -> semantic type mapping, a CSV with columns "
        "category,type (applied to every label's dataset category, else its own category)",
    )


def add_counting_fdr_argument(parser: argparse.ArgumentParser) -> None:
    """``--fdr Q|none`` of the report and compare: the significance rule's level."""
    parser.add_argument(
        "--fdr",
        type=_fdr_or_none,
        metavar="Q|none",
        help="count as detectors only labels with a Benjamini-Hochberg q-value at most Q (default:"
        f" {FDR} where every automatic label has a q-value, else the IoU rule alone; none: the "
        "IoU rule alone); the page says which rule counted",
    )


def _fdr_or_none(text: str) -> float | str:
    if text == "none":
        return text
    try:
        value = float(text)
    except ValueError:
        message = f"expected a rate like 0.05 or none, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a false discovery rate in (0, 1), got {text!r}")
    return value


def significance_from_args(args: argparse.Namespace) -> bool:
    """False where ``--fdr none`` asked for the IoU rule alone."""
    return getattr(args, "fdr", None) != "none"


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 0.05, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a p-value in (0, 1], got {text!r}")
    return value


def taxonomy_from_args(args: argparse.Namespace) -> Taxonomy:
    """The default taxonomy, or the user's --mapping added to it."""
    return Taxonomy.from_csv(args.mapping) if args.mapping else DEFAULT_TAXONOMY


def rule_from_args(args: argparse.Namespace) -> DetectorRule:
    """The detector rule of --min-precision (where the command has it), --min-iou, --max-p and
    --mapping."""
    return DetectorRule(
        min_precision=getattr(args, "min_precision", DetectorRule.min_precision),
        min_iou=args.min_iou,
        max_p=args.max_p,
        fdr=None if getattr(args, "fdr", None) == "none" else getattr(args, "fdr", None),
        taxonomy=taxonomy_from_args(args),
    )


def add_device_argument(parser: argparse.ArgumentParser, default: str = AUTO) -> None:
    """--device, the same for every command."""
    parser.add_argument("--device", default=default, help="cpu, cuda, cuda:N or auto (default)")


def add_speed_arguments(
    parser: argparse.ArgumentParser, workers: int | str | None, dtype: str | None
) -> None:
    """--workers (unless ``workers`` is None) and --dtype, with the stage's defaults.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The subcommand's parser.
    workers : int, "auto" or None
        The default of --workers (None: no such flag).
    dtype : str or None
        The default of --dtype (None: the one ``dissect run`` used).
    """
    if workers is not None:
        parser.add_argument(
            "--workers",
            type=_workers,
            default=workers,
            metavar="auto|N",
            help="image-decoding processes: auto (as many as the free cores allow beside the "
            "device, 0 where they would not help), or N (0: decode in this process); the "
            f"results are the same either way ({workers})",
        )
    default = "the one dissect run used" if dtype is None else dtype
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=dtype,
        help="number format of the forward (torch.autocast; statistics, thresholds and IoU "
        f"counts stay float32): bfloat16/float16 are faster on GPUs ({default})",
    )


def _workers(text: str) -> int | str:
    if text == AUTO:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected auto or a number of processes, got {text!r}"
        ) from None


def add_resume_arguments(parser: argparse.ArgumentParser, saved: str) -> None:
    """--restart and --checkpoint-seconds of a pass that saves ``saved`` (partial counts, ...)."""
    seconds = ResumeConfig().checkpoint_seconds
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard the checkpoint left by an interrupted run and start over",
    )
    parser.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=seconds,
        metavar="S",
        help=f"save {saved} every S seconds and on Ctrl-C / SIGTERM ({seconds:g}); the same "
        "command started again resumes from them",
    )


def add_segment_arguments(parser: argparse.ArgumentParser, defaults: SegmentConfig) -> None:
    """Which units' top images to segment, and how (defaults from ``defaults``)."""
    parser.add_argument("--layers", help="comma-separated layers (default: all dissected)")
    parser.add_argument("--units", help="comma-separated unit numbers (default: all)")
    parser.add_argument(
        "--top",
        type=int,
        default=defaults.top,
        help=f"top images per unit (default: {defaults.top if defaults.top else 'all kept'})",
    )
    parser.add_argument(
        "--rule",
        choices=list(RULES),
        default=defaults.rule,
        help="threshold: the upsampled map above T (NetDissect's, default); disk: a disk of the "
        "layer's empirical receptive field around every map cell above --peak-fraction of the "
        "image's max (Zhou et al.'s; needs dissect rf or --rf-size)",
    )
    parser.add_argument(
        "--peak-fraction",
        type=float,
        default=defaults.peak_fraction,
        help="threshold rule: threshold each map at this fraction of its own peak (default: the "
        "unit's T); disk rule: cells from this fraction of the image's max "
        f"({defaults.disk_fraction})",
    )
    parser.add_argument(
        "--rf-size",
        type=float,
        default=defaults.rf_size,
        help="disk rule: receptive-field size in px (default: the layer's mean from dissect rf)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.batch_size,
        help=f"images per forward ({defaults.batch_size})",
    )
    add_align_argument(parser, defaults.align)
    add_device_argument(parser, defaults.device)
    add_speed_arguments(parser, defaults.workers, defaults.dtype)


def add_align_argument(parser: argparse.ArgumentParser, default: str | None) -> None:
    """``--align``: where upsampled unit maps are placed (see :mod:`dissect.alignment`)."""
    parser.add_argument(
        "--align",
        choices=list(ALIGNMENTS),
        default=default,
        help="where each feature cell of an upsampled unit map sits: theoretical (the centre of "
        "its theoretical receptive field), resize (a plain resize of the map, NetDissect-Lite's)"
        ", empirical (theoretical shifted by the mean centroid of the layer's occlusion maps; "
        f"needs dissect rf first) (default: {default or 'theoretical'})",
    )


def add_permutations_argument(parser: argparse.ArgumentParser, default: int, when: str) -> None:
    """``--permutations``: P re-pairings of the permutation null; ``when`` ends the help."""
    parser.add_argument(
        "--permutations",
        type=int,
        default=default,
        help=f"P, random re-pairings of images for each label's p-value ({default}: smallest p "
        f"{1 / (default + 1):.2g}; {when}; 0 for none)",
    )
