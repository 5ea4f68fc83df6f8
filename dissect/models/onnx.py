"""ONNX files (``model.onnx``), converted to a torch module with onnx2torch (``dissect[onnx]``).

An ONNX file is a protobuf: reading it runs no code. onnx2torch turns its graph into a
``torch.fx.GraphModule`` whose layers are real ``nn.Conv2d``, ``nn.MaxPool2d``, ... named after
the ONNX nodes, so forward hooks work as on any module. onnx2torch imports torchvision for two
detection operators (NonMaxSuppression, RoiAlign); where torchvision is missing or cannot load
(a CUDA build next to a CPU torch), those two operators raise a clear error when a model uses
them, and every other model converts as usual.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

from torch import nn

from ..errors import DissectError
from .onnx_graph import check_external_data, constants_to_initializers

INSTALL = (
    "pip install 'dissect[onnx]' && pip install --no-deps onnx2torch (--no-deps keeps your torch)"
)


def load_onnx(path: Path) -> nn.Module:
    """Read an ONNX file and convert it to an ``nn.Module``.

    Parameters
    ----------
    path : Path
        The ``.onnx`` file.

    Returns
    -------
    nn.Module
        The converted network (a ``torch.fx.GraphModule``).

    Raises
    ------
    DissectError
        If the file is missing or unreadable, the ``onnx`` extra is not installed, or the graph
        holds an operator onnx2torch cannot convert.
    """
    name = str(path)
    if not path.is_file():
        raise DissectError(f"MODEL {name!r} does not exist.")
    onnx, convert = _import_converter(name)
    try:
        model = onnx.load(str(path), load_external_data=False)
        check_external_data(model, path)  # before onnx opens any file the model names
        from onnx.external_data_helper import load_external_data_for_model

        load_external_data_for_model(model, str(path.parent))
    except DissectError:
        raise
    except Exception as error:  # noqa: BLE001 - protobuf and onnx raise many types
        raise DissectError(
            f"MODEL {name!r} is not a readable ONNX file ({_first_line(error)}); export it "
            "again with torch.onnx.export."
        ) from error
    try:
        return convert(model)
    except DissectError:
        raise
    except Exception as error:  # noqa: BLE001 - any conversion failure
        moved = constants_to_initializers(model)
        if moved:  # Paddle's exporter keeps weights as Constant nodes; onnx2torch wants them
            try:
                return convert(model)
            except Exception:  # noqa: BLE001 - report the first failure
                pass
        cause = (
            f"; its weights are Constant nodes ({moved} of them, as paddle2onnx writes), which "
            "dissect moved into initializers without success"
            if moved
            else ""
        )
        raise DissectError(
            f"MODEL {name!r}: onnx2torch cannot convert it ({_first_line(error)}){cause}; "
            "export the model with torch.export.save (.pt2) or give it as file.py:callable."
        ) from error


def _import_converter(name: str):
    """``(onnx, onnx2torch.convert)``, or a DissectError saying how to install them."""
    try:
        onnx = importlib.import_module("onnx")
    except ImportError as error:
        raise DissectError(f"MODEL {name!r} is an ONNX file, which needs: {INSTALL}.") from error
    if "onnx2torch" not in sys.modules and not _torchvision_loads():
        with _without_torchvision():
            module = _import_onnx2torch(name)
    else:
        module = _import_onnx2torch(name)
    return onnx, module.convert


def _import_onnx2torch(name: str):
    try:
        return importlib.import_module("onnx2torch")
    except ImportError as error:
        raise DissectError(f"MODEL {name!r} is an ONNX file, which needs: {INSTALL}.") from error


def _torchvision_loads() -> bool:
    """Whether ``import torchvision`` works (it fails when its build does not match torch)."""
    if "torchvision" in sys.modules:
        return True
    before = set(sys.modules)
    try:
        importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001 - ImportError, or RuntimeError from a mismatched build
        for module in set(sys.modules) - before:
            if module == "torchvision" or module.startswith("torchvision."):
                del sys.modules[module]
        return False
    return True


class _without_torchvision:
    """While importing onnx2torch: a ``torchvision`` whose two detection operators explain."""

    def __enter__(self) -> None:
        def unavailable(*_args, **_kwargs):
            raise DissectError(
                "this ONNX model uses NonMaxSuppression or RoiAlign, which need a torchvision "
                "that matches your torch: pip install torchvision (the build for your torch)."
            )

        ops = types.ModuleType("torchvision.ops")
        ops.nms = ops.roi_align = ops.box_convert = unavailable
        placeholder = types.ModuleType("torchvision")
        placeholder.ops = ops
        self.saved = {key: sys.modules.get(key) for key in ("torchvision", "torchvision.ops")}
        sys.modules.update({"torchvision": placeholder, "torchvision.ops": ops})

    def __exit__(self, *exc_info: object) -> None:
        for key, value in self.saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
