"""``torch.export`` programs (``.pt2``), read without unpickling anything, ready for hooks.

``torch.export.load`` unpickles parts of the archive (weights and constants marked
``use_pickle``, custom objects, the example inputs when they are not plain tensors), and a pickle
can run any code. :func:`load_exported` reads the archive itself instead: it refuses, before
anything is deserialised, every archive that holds a pickled part or compiled code, or a string
that torch would evaluate as Python (:mod:`dissect.models.pt2_check`), rebuilds the program from
its JSON graph and raw tensor bytes, and never reads the example inputs.

The program is turned back into a module tree with ``torch.export.unflatten``, so forward hooks
work on its original layer names; each layer's class is renamed after the module it was exported
from (``Conv2d``, not ``InterpreterModule``), with the original's qualified name in
``original_type``. A program exported with a static batch size B runs B images at a time: smaller
batches are padded and the padding cut off again, larger ones are split (``static_batch`` on the
module tells :class:`dissect.hooks.LayerTrace` to split too, so its hooks see each part whole).
A program with a static height and width has ``static_size``: the occlusion methods then run
whole images, never crops.
"""

from __future__ import annotations

import contextlib
import json
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils import _pytree as pytree

from ..errors import DissectError
from .pt2_check import check_program

#: Attribute of a loaded program's root module: its static batch size (absent when dynamic).
STATIC_BATCH = "static_batch"
#: Attribute of a loaded program's root module: its static (height, width) (absent when dynamic).
STATIC_SIZE = "static_size"
_MODEL = "model"


@dataclass(frozen=True)
class ExportedInput:
    """What an exported program accepts: one image batch, its static sizes.

    Attributes
    ----------
    shape : tuple of (int or None)
        (batch, channels, height, width); None where the size is dynamic.
    """

    shape: tuple[int | None, ...]

    @property
    def batch(self) -> int | None:
        """The static batch size, or None when the batch is dynamic."""
        return self.shape[0]

    @property
    def image_size(self) -> int | tuple[int, int] | None:
        """The static side of a square input, or (height, width); None when either is dynamic."""
        height, width = self.shape[2:]
        if height is None or width is None:
            return None
        return height if height == width else (height, width)

    def describe(self) -> str:
        return "x".join("N" if size is None else str(size) for size in self.shape)


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """Silence torch.export's deprecation chatter (FutureWarning, DeprecationWarning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def load_exported(path: Path) -> tuple[nn.Module, ExportedInput]:
    """Read a ``.pt2`` program safely and return it as a hookable module tree.

    Parameters
    ----------
    path : Path
        A file written by ``torch.export.save``.

    Returns
    -------
    (nn.Module, ExportedInput)
        The unflattened program (its forward pads and splits batches for a static batch size)
        and the input sizes it was exported for.

    Raises
    ------
    DissectError
        If the file is missing, not a torch.export archive, holds pickled parts or compiled
        code, or takes something other than one image batch.
    """
    name = str(path)
    if not path.is_file():
        raise DissectError(f"MODEL {name!r} does not exist.")
    if not zipfile.is_zipfile(path):
        raise DissectError(
            f"MODEL {name!r} is not a torch.export archive (not a zip file); save the program "
            "with torch.export.save(torch.export.export(model.eval(), (example,)), 'model.pt2')."
        )
    with quiet_torch():
        program = _read_program(path)
        try:
            module = torch.export.unflatten(program)
        except Exception as error:  # noqa: BLE001 - torch raises many types here
            raise DissectError(
                f"MODEL {name!r}: torch.export.unflatten cannot rebuild its module tree "
                f"({_first_line(error)}); export with the default strict=False and no "
                "preserve_module_call_signature, or give the model as file.py:callable."
            ) from error
    expected = _input_of(program, name)
    _name_layer_types(module, program)
    _guard_forward(module, expected, name)
    return module, expected


def _read_program(path: Path) -> torch.export.ExportedProgram:
    """The program of a ``.pt2`` archive; refuse it before reading anything that is pickled."""
    try:
        from torch._export.serde import schema
        from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass
        from torch.export.pt2_archive import _package as archive
        from torch.export.pt2_archive import constants as layout
    except ImportError as error:  # pragma: no cover - depends on the torch version
        raise DissectError(
            f"this torch ({torch.__version__}) has no torch.export archive reader that dissect "
            "knows; install torch >= 2.8 to open .pt2 files."
        ) from error
    name = str(path)
    try:
        with archive.PT2ArchiveReader(str(path)) as reader:
            files = set(reader.get_file_names())
            _refuse_unsafe(reader, files, name, layout)
            model_file = layout.MODELS_FILENAME_FORMAT.format(_MODEL)
            program = reader.read_bytes(model_file)
            check_program(program, name)  # before torch's deserializer evaluates any of it
            serialized = _bytes_to_dataclass(schema.ExportedProgram, program)
            state_dict = archive._load_state_dict(reader, _MODEL)
            constants = archive._load_constants(reader, _MODEL)
    except DissectError:
        raise
    except Exception as error:  # noqa: BLE001 - a damaged archive fails in many ways
        raise DissectError(
            f"MODEL {name!r} is not a readable torch.export archive ({_first_line(error)}); "
            "save it again with torch.export.save."
        ) from error
    try:
        # No example inputs: they are a pickle, and nothing here needs them.
        return ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, None)
    except Exception as error:  # noqa: BLE001
        raise DissectError(
            f"MODEL {name!r}: this torch ({torch.__version__}) cannot read the program "
            f"({_first_line(error)}); export it again with this torch version."
        ) from error


def _refuse_unsafe(reader, files: set[str], name: str, layout) -> None:
    """Raise a DissectError naming the first part of the archive that would be unpickled."""
    how = (
        "dissect never unpickles a model file (a pickle can run any code). Give the model as "
        "file.py:callable with --weights FILE (a state dict), or export it with plain tensors."
    )
    if layout.ARCHIVE_VERSION_PATH not in files:
        raise DissectError(
            f"MODEL {name!r} was saved in the pre-2.8 torch.export format, whose weights are a "
            "pickle; load it with the torch that wrote it and save it again with "
            f"torch.export.save. {how}"
        )
    if any(file.startswith(layout.AOTINDUCTOR_DIR) for file in files):
        raise DissectError(
            f"MODEL {name!r} holds AOTInductor-compiled code, which runs when loaded and cannot "
            "take forward hooks; save the program itself with torch.export.save."
        )
    models = sorted(f for f in files if f.startswith(layout.MODELS_DIR) and f.endswith(".json"))
    if models != [layout.MODELS_FILENAME_FORMAT.format(_MODEL)]:
        raise DissectError(
            f"MODEL {name!r} holds {len(models)} programs ({', '.join(models) or 'none'}); "
            "dissect opens an archive with one program saved by torch.export.save."
        )
    for folder, config_format, kind in (
        (layout.WEIGHTS_DIR, layout.WEIGHTS_CONFIG_FILENAME_FORMAT, "weight"),
        (layout.CONSTANTS_DIR, layout.CONSTANTS_CONFIG_FILENAME_FORMAT, "constant"),
    ):
        if f"{folder}{_MODEL}.pt" in files:
            raise DissectError(f"MODEL {name!r} stores its {kind}s as one pickle. {how}")
        config = json.loads(reader.read_string(config_format.format(_MODEL)))
        for fqn, payload in config.get("config", {}).items():
            plain = payload.get("path_name", "").startswith(
                (layout.WEIGHT_FILENAME_PREFIX, layout.TENSOR_CONSTANT_FILENAME_PREFIX)
            )
            if payload.get("use_pickle") or not plain:
                raise DissectError(
                    f"MODEL {name!r}: its {kind} {fqn!r} is stored as a pickled object (a "
                    f"tensor subclass or a custom object), not plain tensor bytes. {how}"
                )


def _input_of(program: torch.export.ExportedProgram, name: str) -> ExportedInput:
    """The static sizes of the program's one tensor input."""
    users = list(program.graph_signature.user_inputs)
    values = {
        node.name: node.meta.get("val") for node in program.graph.nodes if node.op == "placeholder"
    }
    tensors = [values.get(user) for user in users]
    if len(users) != 1 or not isinstance(tensors[0], torch.Tensor) or tensors[0].dim() != 4:
        raise DissectError(
            f"MODEL {name!r} takes {len(users)} input(s) ({', '.join(users)}); dissect feeds one "
            "image batch of shape (N, 3, H, W). Export a wrapper whose forward takes only that."
        )
    shape = tuple(size if isinstance(size, int) else None for size in tensors[0].shape)
    return ExportedInput(shape)


def _name_layer_types(module: nn.Module, program: torch.export.ExportedProgram) -> None:
    """Rename each unflattened layer's class after the module it was exported from."""
    types: dict[str, str] = {}
    for node in program.graph.nodes:
        for fqn, kind in (node.meta.get("nn_module_stack") or {}).values():
            kind = kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"
            types.setdefault(fqn, kind)
    for fqn, child in module.named_modules():
        if fqn and fqn in types:
            child.__class__ = _renamed(type(child), types[fqn])


_RENAMED: dict[tuple[type, str], type] = {}


def _renamed(base: type, original: str) -> type:
    key = (base, original)
    if key not in _RENAMED:
        short = original.rpartition(".")[2] or base.__name__
        _RENAMED[key] = type(short, (base,), {"original_type": original, "__module__": __name__})
    return _RENAMED[key]


def _guard_forward(module: nn.Module, expected: ExportedInput, name: str) -> None:
    """Check inputs against the exported sizes; pad and split batches for a static batch."""
    inner = module.forward
    batch = expected.batch

    def run(images: torch.Tensor) -> object:
        try:
            return inner(images)
        except RuntimeError as error:
            if not str(error).startswith("Expected input"):
                raise
            raise DissectError(
                f"MODEL {name!r} refuses a {_shape(images)} input ({_first_line(error)}); it "
                f"was exported for {expected.describe()}. Export it with dynamic sizes "
                "(dynamic_shapes) or run at the size it was exported for."
            ) from error

    def forward(images: torch.Tensor) -> object:
        for axis, size in list(enumerate(expected.shape))[1:]:
            if size is not None and images.dim() == 4 and images.shape[axis] != size:
                height, width = expected.shape[2:]
                side = (
                    str(height) if height == width else f"{height},{width}"
                )  # the flag's own form
                fix = (
                    "dissect feeds 3 (RGB) channels; export a model that takes them"
                    if axis == 1
                    else f"use --image-size {side}, or export with dynamic height and width"
                )
                raise DissectError(
                    f"MODEL {name!r} was exported for inputs of {expected.describe()} but got "
                    f"{_shape(images)}; {fix}."
                )
        if batch is None or len(images) == batch:
            return run(images)
        parts = []
        for start in range(0, len(images), batch):
            part = images[start : start + batch]
            rows = len(part)
            if rows < batch:
                part = torch.cat([part, part.new_zeros((batch - rows, *part.shape[1:]))])
            parts.append(pytree.tree_map_only(torch.Tensor, lambda t, n=rows: t[:n], run(part)))
        if len(parts) == 1:
            return parts[0]
        return pytree.tree_map(_concatenate, parts[0], *parts[1:])

    module.forward = forward
    if batch is not None:
        setattr(module, STATIC_BATCH, batch)
    if None not in expected.shape[2:]:
        setattr(module, STATIC_SIZE, tuple(expected.shape[2:]))


def _concatenate(*values: object) -> object:
    return torch.cat(values) if isinstance(values[0], torch.Tensor) else values[0]


def _shape(images: torch.Tensor) -> str:
    return "x".join(map(str, images.shape))


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
