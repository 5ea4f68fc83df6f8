"""Every form a model comes in: in-memory modules, .pt2 programs (safely), ONNX files."""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch
from tiny_models import tiny_net

from dissect.block_outputs import conv_and_pool
from dissect.checkpoint import module_digest
from dissect.cli import main
from dissect.datasets import open_data
from dissect.errors import DissectError
from dissect.hooks import LayerTrace
from dissect.images import Preprocess
from dissect.models import load_model
from dissect.segment import write_segments
from dissect.streaming import run_dissection

PREPROCESS = Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def _export(path, batch=2, dynamic=None):
    model = tiny_net().eval()
    program = torch.export.export(model, (torch.randn(batch, 3, 32, 32),), dynamic_shapes=dynamic)
    torch.export.save(program, path)
    return model


class _Marker:
    """Unpickling this creates the marker file: what a malicious pickle could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rewrite(path, change):
    """Rewrite a .pt2 archive, ``change(name, data) -> data`` for every member."""
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(name, change(name, data))


def _pickle_of_marker(marker) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(_Marker(marker), buffer)
    return buffer.getvalue()


def test_pt2_with_pickled_weight_is_refused_before_it_runs(tmp_path):
    path, marker = tmp_path / "crafted.pt2", tmp_path / "marker"
    _export(path)
    payload = _pickle_of_marker(marker)

    def change(name, data):
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            return payload
        return data

    _rewrite(path, change)
    with pytest.raises(DissectError, match="stored as a pickled object") as error:
        load_model(str(path))
    assert "\n" not in str(error.value)
    assert not marker.exists()
    assert main(["layers", str(path)]) == 2
    assert not marker.exists()


def test_pt2_example_inputs_are_never_unpickled(tmp_path):
    path, marker = tmp_path / "crafted.pt2", tmp_path / "marker"
    model = _export(path, batch=2, dynamic={"x": {0: torch.export.Dim("n", max=64)}})
    payload = _pickle_of_marker(marker)
    _rewrite(path, lambda name, data: payload if "sample_inputs" in name else data)
    loaded = load_model(str(path))
    assert not marker.exists()
    images = torch.randn(3, 3, 32, 32)
    assert torch.allclose(loaded.module(images), model(images), atol=1e-5)


def test_pt2_loads_quietly_with_real_layer_types(tmp_path, capsys):
    path = tmp_path / "dynamic.pt2"
    _export(path, batch=2, dynamic={"x": {0: torch.export.Dim("n", max=64)}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_model(str(path))
    assert [str(w.message) for w in caught] == []
    kinds = {name: type(child).__name__ for name, child in loaded.module.named_modules()}
    assert kinds["conv1"] == "Conv2d" and kinds["pool1"] == "MaxPool2d"
    assert conv_and_pool(loaded.module) == ["conv1", "pool1", "conv2"]
    assert loaded.preprocess.image_size == 32  # height and width were exported static
    assert main(["layers", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Conv2d" in out and "InterpreterModule" not in out


@pytest.mark.parametrize("batch", [1, 2])
def test_static_batch_pt2_runs_any_batch(tmp_path, batch):
    path = tmp_path / "static.pt2"
    model = _export(path, batch=batch)
    with pytest.warns(UserWarning, match=f"static batch size of {batch}"):
        loaded = load_model(str(path))
    images = torch.randn(5, 3, 32, 32)
    assert torch.allclose(loaded.module(images), model(images), atol=1e-5)
    with LayerTrace(loaded.module, ["conv2", "pool1"], stop=True) as trace:
        outputs = trace(images)
    with LayerTrace(model, ["conv2", "pool1"], stop=True) as trace:
        expected = trace(images)
    for name in expected:
        assert torch.allclose(outputs[name], expected[name], atol=1e-5)
    streamed = {}
    with LayerTrace(loaded.module, ["conv2"], stop=True) as trace:
        trace.stream(lambda name, out: streamed.setdefault(name, out.clone()), images[:1])
    assert torch.allclose(streamed["conv2"], expected["conv2"][:1], atol=1e-5)


def test_static_batch_pt2_dissects_like_the_module(tmp_path):
    path = tmp_path / "static.pt2"
    model = _export(path, batch=2)
    data = open_data("synthetic:7:3")
    options = {"topk": 3, "batch_size": 4, "preprocess": PREPROCESS, "progress": False}
    with pytest.warns(UserWarning, match="static batch"):
        exported = run_dissection(str(path), data, tmp_path / "pt2", **options)
    reference = run_dissection(model, data, tmp_path / "module", **options)
    # the default layers, as dissect run's: the last module of each resolution stage
    assert exported.layers == reference.layers == ["relu1", "relu2"]
    for layer in exported.layers:
        ours, theirs = exported.topk(layer), reference.topk(layer)
        assert np.array_equal(ours["index"], theirs["index"])
        assert np.allclose(ours["score"], theirs["score"], atol=1e-5)


def test_pt2_at_another_size_is_one_clear_line(tmp_path, capsys):
    path = tmp_path / "batch_dynamic.pt2"
    _export(path, dynamic={"x": {0: torch.export.Dim("n", max=64)}})
    assert main(["layers", str(path), "--image-size", "64"]) == 2
    error = capsys.readouterr().err.strip()
    assert "--image-size 32" in error and "\n" not in error


def test_in_memory_module_everywhere(tmp_path):
    model = tiny_net()
    d = run_dissection(model, "synthetic:6:1", tmp_path / "d", ["conv2"], **_small())
    assert d.manifest["model"] == ""
    with pytest.raises(DissectError, match="pass the module as model="):
        write_segments(d, top=2, progress=False)
    table = write_segments(d, units=[0], top=2, model=model, progress=False)
    assert len(table) == 2

    from dissect.annotation import export_annotation

    tasks = export_annotation(d, "html", units=[0], top=2, sentinels=0, model=model, progress=False)
    assert len(tasks) == 2


def test_given_model_is_used_instead_of_the_manifest(tmp_path):
    spec_file = tmp_path / "net.py"
    spec_file.write_text("from tiny_models import tiny_net\n", encoding="utf-8")
    spec = f"{spec_file}:tiny_net"
    d = run_dissection(spec, "synthetic:6:1", tmp_path / "d", ["conv2"], **_small())
    spec_file.unlink()  # the manifest's MODEL can no longer be loaded
    table = write_segments(d, units=[1], top=1, model=tiny_net(), progress=False)
    assert len(table) == 1


def _small() -> dict:
    return {"topk": 2, "batch_size": 4, "preprocess": PREPROCESS, "progress": False}


def test_zero_size_buffer_has_a_digest():
    model = tiny_net()
    before = module_digest(model)
    # As onnx2torch keeps Resize's empty roi: from numpy, with stride (0,).
    model.register_buffer("roi", torch.from_numpy(np.zeros((0,), np.float32)))
    assert len(module_digest(model)) == 64 and module_digest(model) != before


@pytest.mark.parametrize(
    ("source", "kind"),
    [("1 / 0\n", "ZeroDivisionError"), ("raise RuntimeError('no GPU here')\n", "RuntimeError")],
)
def test_failing_model_module_is_one_line(tmp_path, monkeypatch, source, kind):
    (tmp_path / "broken_net.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in (f"{tmp_path / 'broken_net.py'}:build", "broken_net:build"):
        with pytest.raises(DissectError, match=kind) as error:
            load_model(spec)
        assert "\n" not in str(error.value)
    sys.modules.pop("broken_net", None)


def test_bgr_reverses_channels_and_is_recorded(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rgb = Preprocess(32, (0.1, 0.5, 0.9), (0.2, 0.3, 0.4))
    bgr = Preprocess(32, (0.1, 0.5, 0.9), (0.2, 0.3, 0.4), bgr=True)
    assert torch.equal(bgr.tensor(image), rgb.tensor(image).flip(0))
    d = run_dissection(
        tiny_net(), "synthetic:4:1", tmp_path / "d", ["conv1"], **{**_small(), "preprocess": bgr}
    )
    assert d.preprocess.bgr


_HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnx2torch"))


@pytest.mark.skipif(not _HAS_ONNX, reason="needs the onnx extra: pip install 'dissect[onnx]'")
def test_onnx_file(tmp_path, capsys):
    model = tiny_net().eval()
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(1, 3, 32, 32),),
            str(path),
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )
    loaded = load_model(str(path))
    images = torch.randn(3, 3, 32, 32)
    assert torch.allclose(loaded.module(images), model(images), atol=1e-5)
    assert conv_and_pool(loaded.module) == ["conv1/Conv", "pool1/MaxPool", "conv2/Conv"]
    # The onnx2torch graph probes to the eager network's geometry, layer by layer.
    from dissect.geometry import layer_geometry

    onnx_layers = ["conv1/Conv", "pool1/MaxPool", "conv2/Conv"]
    found = layer_geometry(loaded.module, onnx_layers, 32)
    expected = layer_geometry(model, ["conv1", "pool1", "conv2"], 32)
    for onnx_name, name in zip(onnx_layers, expected, strict=True):
        got, want = found[onnx_name], expected[name]
        assert (got.rf, got.stride, got.offset) == (want.rf, want.stride, want.offset), name
    assert main(["layers", str(path), "--image-size", "32"]) == 0
    assert "conv2/Conv" in capsys.readouterr().out


def test_onnx_without_the_extra_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(DissectError, match=r"pip install 'dissect\[onnx\]'"):
        load_model(str(path))


def test_weights_of_other_shapes_are_one_line(tmp_path, tiny_spec):
    other = torch.nn.Sequential()
    other.conv1 = torch.nn.Conv2d(3, 5, 3)  # TinyNet's conv1 has 4 filters
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(DissectError, match="size mismatch for conv1.weight") as error:
        load_model(tiny_spec, str(path))
    assert "\n" not in str(error.value)
