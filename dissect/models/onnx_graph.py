"""ONNX graphs checked and prepared before conversion: external data, Constant-node weights.

An ONNX file may keep its tensors in other files (``external_data``), named by a path that the
file itself gives. onnx checks those paths only from version 1.16 (CVE-2024-27318: a model could
make onnx read any file, ``/etc/passwd`` or ``../../secret``); :func:`check_external_data` checks
them whatever the installed version: a relative path, no ``..``, inside the model's folder once
symbolic links are followed. :func:`constants_to_initializers` moves weights kept as Constant
nodes (paddle2onnx writes them so) into the graph's initializers, where onnx2torch looks for them.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import DissectError


def check_external_data(model, path: Path) -> None:
    """Refuse a model whose external data lies outside its folder.

    Parameters
    ----------
    model : onnx.ModelProto
        Loaded with ``load_external_data=False``.
    path : Path
        The ``.onnx`` file; its folder is the only place external data may come from.

    Raises
    ------
    DissectError
        Naming the tensor and its location: absolute, with ``..``, or leading (through a
        symbolic link) out of the folder.
    """
    from onnx import TensorProto

    folder = Path(os.path.realpath(path.parent))
    for tensor in _tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        parts = PurePosixPath(location.replace("\\", "/")).parts
        absolute = location.startswith(("/", "\\")) or PureWindowsPath(location).drive
        target = Path(os.path.realpath(folder / location)) if location else folder
        if not location or absolute or ".." in parts or not target.is_relative_to(folder):
            raise DissectError(
                f"MODEL {str(path)!r}: tensor {tensor.name!r} keeps its data at {location!r}, "
                "outside the model's folder; dissect reads external data only from files next "
                "to the model (no absolute paths, no '..', no links out of the folder)."
            )


def _tensors(graph):
    """Every tensor of ``graph`` and its subgraphs: initializers and node attributes."""
    graphs = [graph]
    while graphs:
        current = graphs.pop()
        yield from current.initializer
        yield from (sparse.values for sparse in current.sparse_initializer)
        for node in current.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)


def constants_to_initializers(model) -> int:
    """Move the main graph's Constant nodes that hold a tensor into its initializers.

    Returns
    -------
    int
        How many were moved (0 leaves the model as it was).
    """
    graph = model.graph
    constants = [
        node
        for node in graph.node
        if node.op_type == "Constant"
        and len(node.output) == 1
        and [attribute.name for attribute in node.attribute] == ["value"]
    ]
    for node in constants:
        tensor = node.attribute[0].t
        tensor.name = node.output[0]
        graph.initializer.append(tensor)
        graph.node.remove(node)
    return len(constants)
