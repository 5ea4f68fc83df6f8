"""Pretrained models by name: ``torchvision:NAME[:WEIGHTS]`` and ``timm:NAME[.TAG]``.

Both take literal arguments (``torchvision:resnet18(num_classes=365)``, see
:mod:`dissect.models.specs`). Weights come, in this order, from ``--weights FILE`` (the
architecture is then built untrained and the file loaded), or from the local cache each library
uses: torchvision's files in ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch`` by default),
timm's in the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``) or, for older timm weights, torch's. Nothing is downloaded unless
``allow_download`` (``--allow-download``); a file that is not there is one line saying where it
was looked for and how to get it. Every file is read by
:func:`dissect.models.weights.read_state_dict`
(``weights_only=True`` or safetensors): nothing in it runs. ``torchvision:NAME:none`` builds the
architecture untrained.

The preprocessing comes from the weights' metadata: torchvision's ``weights.transforms()``
(resize, crop, interpolation, mean, std; the architecture's ``DEFAULT`` weights when the file is
the user's own) and timm's ``pretrained_cfg`` (``input_size``, ``crop_pct``, ``interpolation``,
``mean``, ``std``).
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import DissectError
from ..images import Preprocess
from .specs import FactoryCall, where
from .weights import load_weights, read_state_dict

#: The library each prefix needs, and the extra that installs it.
PREFIXES = {"torchvision": "torchvision", "timm": "timm"}


@dataclass
class HubModel:
    """A model built by torchvision or timm, with what its weights say about its inputs."""

    module: nn.Module
    preprocess: Preprocess
    classes: tuple[str, ...] | None
    source: str


def load_hub_model(
    call: FactoryCall, weights: str | None, allow_download: bool, spec: str
) -> HubModel:
    """Build ``torchvision:...`` or ``timm:...`` with its weights and preprocessing.

    Parameters
    ----------
    call : FactoryCall
        The parsed spec.
    weights : str or None
        A weights file of the user's (``--weights``); the library's own weights otherwise.
    allow_download : bool
        Download the library's weights when they are not in the local cache.
    spec : str
        The MODEL spec, for messages.

    Returns
    -------
    HubModel
    """
    prefix = call.target.split(":", 1)[0]
    library = _import_library(prefix, spec)
    if prefix == "torchvision":
        return _torchvision(library, call, weights, allow_download, spec)
    return _timm(library, call, weights, allow_download, spec)


def _import_library(prefix: str, spec: str) -> object:
    try:
        if prefix == "torchvision":
            import torchvision.models as library
        else:
            import timm as library
    except ImportError as error:
        raise DissectError(f"MODEL {spec!r} needs {prefix}: {install_command(prefix)}.") from error
    except Exception as error:  # noqa: BLE001 - a torchvision built for another torch
        raise DissectError(
            f"MODEL {spec!r}: {prefix} is installed but does not load with torch "
            f"{torch.__version__} ({where(error)}); install the {prefix} release built for it."
        ) from error
    return library


def install_command(prefix: str) -> str:
    """How to install torchvision or timm without moving the torch already installed."""
    pinned = f"pip install torchvision 'torch=={torch.__version__.split('+')[0]}'"
    if prefix == "torchvision":
        return f"{pinned} (the pin keeps your torch)"
    return f"pip install 'dissect[timm]' && pip install --no-deps timm && {pinned}"


def _torchvision(
    models: object, call: FactoryCall, weights: str | None, allow_download: bool, spec: str
) -> HubModel:
    _, name, *rest = call.target.split(":")
    if name not in models.list_models():
        raise DissectError(
            f"MODEL {spec!r}: torchvision has no model {name!r}"
            f"{_close(name, models.list_models())}."
        )
    enum = models.get_model_weights(name)
    wanted = rest[0] if rest else None
    if wanted is not None and wanted != "none" and wanted not in enum.__members__:
        raise DissectError(
            f"MODEL {spec!r}: {name} has no weights {wanted!r}; it has "
            f"{', '.join(enum.__members__)} (or 'none' for an untrained network)."
        )
    chosen = None if weights or wanted == "none" else enum[wanted or "DEFAULT"]
    with _torchvision_cache(allow_download, f"{name} {chosen}"):
        try:
            module = models.get_model(name, weights=chosen, **call.kwargs)
        except DissectError:
            raise
        except Exception as error:  # noqa: BLE001 - a builder refusing its arguments
            raise DissectError(
                f"MODEL {spec!r}: torchvision's {name}{call.describe()} failed with "
                f"{where(error)}. With your own weights, pass --weights FILE (the model is then "
                f"built untrained, with your arguments)."
            ) from error
    if weights:
        load_weights(module, weights)
    meta = chosen or enum.DEFAULT
    classes = meta.meta.get("categories") if chosen else None
    if classes is not None and len(classes) != _outputs(module):
        classes = None
    source = f"weights {weights}" if weights else f"torchvision {chosen}" if chosen else "untrained"
    return HubModel(module, _torchvision_preprocess(meta), _tuple(classes), source)


def _torchvision_preprocess(weights: object) -> Preprocess:
    transform = weights.transforms()
    crop = getattr(transform, "crop_size", [224])
    resize = getattr(transform, "resize_size", None)
    mode = getattr(transform, "interpolation", None)
    return Preprocess(
        crop[0] if len(crop) == 1 else tuple(crop),
        tuple(getattr(transform, "mean", Preprocess.mean)),
        tuple(getattr(transform, "std", Preprocess.std)),
        resize=resize[0] if resize else None,
        interpolation=getattr(mode, "value", "bilinear"),
    )


@contextlib.contextmanager
def _torchvision_cache(allow_download: bool, what: str) -> Iterator[None]:
    """torchvision's weight loading, pointed at the local cache and the safe reader."""
    from torchvision.models import _api

    def fetch(url: str, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        return read_state_dict(_cached_or_downloaded(url, folder, allow_download, what))

    original = _api.load_state_dict_from_url
    _api.load_state_dict_from_url = fetch
    try:
        yield
    finally:
        _api.load_state_dict_from_url = original


def _cached_or_downloaded(url: str, folder: Path, allow_download: bool, what: str) -> Path:
    path = folder / Path(urlparse(url).path).name
    if path.is_file():
        return path
    if not allow_download:
        raise DissectError(
            f"the weights of {what} are not in the local cache ({path} not found; TORCH_HOME "
            f"moves it): rerun with --allow-download, or download {url} into {folder}, or pass "
            "--weights FILE."
        )
    folder.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(path.name)
    torch.hub.download_url_to_file(url, str(path), match.group(1) if match else None)
    return path


def _timm(
    timm: object, call: FactoryCall, weights: str | None, allow_download: bool, spec: str
) -> HubModel:
    name = call.target.split(":", 1)[1]
    architecture = name.split(".", 1)[0]
    if not timm.is_model(architecture):
        raise DissectError(
            f"MODEL {spec!r}: timm has no model {architecture!r}"
            f"{_close(architecture, timm.list_models())}."
        )
    state, source = None, f"weights {weights}"
    if not weights:
        try:
            config = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
        except RuntimeError as error:
            tags = ", ".join(timm.list_pretrained(f"{architecture}.*")) or "none"
            raise DissectError(
                f"MODEL {spec!r}: {error} Pretrained tags: {tags}; or pass --weights FILE."
            ) from error
        path = _timm_file(config.to_dict(), allow_download, name)
        state, source = read_state_dict(path), f"timm {name} ({path.name})"
    try:
        overlay = {"state_dict": state} if state is not None else None
        module = timm.create_model(
            name, pretrained=state is not None, pretrained_cfg_overlay=overlay, **call.kwargs
        )
    except Exception as error:  # noqa: BLE001 - a builder refusing its arguments or weights
        raise DissectError(
            f"MODEL {spec!r}: timm's {name}{call.describe()} failed with {where(error)}."
        ) from error
    if isinstance(getattr(module, "pretrained_cfg", None), dict):
        module.pretrained_cfg.pop("state_dict", None)  # not a second copy of the weights
    if weights:
        load_weights(module, weights)
    data = timm.data.resolve_data_config(model=module)
    height, width = data["input_size"][1:]
    crop_pct = data.get("crop_pct") or 1.0
    preprocess = Preprocess(
        (height, width),
        tuple(data["mean"]),
        tuple(data["std"]),
        resize=math.floor(min(height, width) / crop_pct),
        interpolation=data.get("interpolation") or "bilinear",
    )
    return HubModel(module, preprocess, None, source)


def _timm_file(config: dict, allow_download: bool, name: str) -> Path:
    """The weights file of a timm pretrained config, from the caches (or downloaded)."""
    hub_id = config.get("hf_hub_id")
    if hub_id:
        cache = Path(os.environ.get("HF_HUB_CACHE") or Path(_hf_home()) / "hub")
        names = [config.get("hf_hub_filename")] if config.get("hf_hub_filename") else []
        names += ["model.safetensors", "pytorch_model.bin"]
        from huggingface_hub import try_to_load_from_cache

        for filename in names:
            found = try_to_load_from_cache(hub_id, filename, cache_dir=cache)
            if isinstance(found, str):
                return Path(found)
        if not allow_download:
            raise DissectError(
                f"the weights of timm {name} are not in the local Hugging Face cache "
                f"({cache}, repo {hub_id}; HF_HOME or HF_HUB_CACHE move it): rerun with "
                f"--allow-download, or run huggingface-cli download {hub_id} {names[0]}, or "
                "pass --weights FILE."
            )
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(hub_id, names[0], cache_dir=cache))
    if config.get("url"):
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        return _cached_or_downloaded(config["url"], folder, allow_download, f"timm {name}")
    raise DissectError(f"timm {name} names no weights file; pass --weights FILE.")


def _hf_home() -> str:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface"
    return os.environ.get("HF_HOME") or str(default)


def _outputs(module: nn.Module) -> int | None:
    last = [child for child in module.modules() if isinstance(child, nn.Linear)]
    return last[-1].out_features if last else None


def _tuple(classes: list[str] | None) -> tuple[str, ...] | None:
    return tuple(classes) if classes else None


def _close(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=4, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""
