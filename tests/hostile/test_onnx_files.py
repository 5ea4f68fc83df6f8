"""ONNX files pointing outside their folder, or keeping weights where onnx2torch does not look."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from dissect.errors import DissectError
from dissect.models import load_model

if not all(importlib.util.find_spec(name) for name in ("onnx", "onnx2torch")):
    pytest.skip("needs the onnx extra: pip install 'dissect[onnx]'", allow_module_level=True)

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

WEIGHT = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)


def _conv_model(weight_as_constant: bool = False):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 6, 6])
    tensor = numpy_helper.from_array(WEIGHT, "conv2d_0.w_0")
    conv = helper.make_node("Conv", ["x", "conv2d_0.w_0"], ["y"], name="conv2d_0")
    if weight_as_constant:  # as paddle2onnx writes weights
        constant = helper.make_node("Constant", [], ["conv2d_0.w_0"], value=tensor)
        graph = helper.make_graph([constant, conv], "g", [x], [y])
    else:
        graph = helper.make_graph([conv], "g", [x], [y], initializer=[tensor])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _with_external_weight(model, location: str):
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return model


@pytest.mark.parametrize("where", ["absolute", "dotdot", "symlink"])
def test_external_data_outside_the_folder_is_refused(tmp_path, where):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(WEIGHT.tobytes())
    folder = tmp_path / "model"
    folder.mkdir()
    location = {"absolute": str(secret), "dotdot": "../secret.bin", "symlink": "w.bin"}[where]
    if where == "symlink":
        os.symlink(secret, folder / "w.bin")
    path = folder / "net.onnx"
    onnx.save(_with_external_weight(_conv_model(), location), path)
    with pytest.raises(DissectError, match="outside the model's folder") as error:
        load_model(str(path))
    assert "\n" not in str(error.value)


def test_external_data_next_to_the_model_loads(tmp_path):
    (tmp_path / "w.bin").write_bytes(WEIGHT.tobytes())
    onnx.save(_with_external_weight(_conv_model(), "w.bin"), tmp_path / "net.onnx")
    module = load_model(str(tmp_path / "net.onnx")).module
    images = torch.randn(2, 3, 8, 8)
    expected = torch.nn.functional.conv2d(images, torch.from_numpy(WEIGHT))
    assert torch.allclose(module(images), expected, atol=1e-5)


def test_weights_kept_as_constant_nodes_convert(tmp_path):
    """paddle2onnx keeps weights as Constant nodes: onnx2torch alone fails on them."""
    onnx.save(_conv_model(weight_as_constant=True), tmp_path / "paddle.onnx")
    module = load_model(str(tmp_path / "paddle.onnx")).module
    images = torch.randn(2, 3, 8, 8)
    expected = torch.nn.functional.conv2d(images, torch.from_numpy(WEIGHT))
    assert torch.allclose(module(images), expected, atol=1e-5)
