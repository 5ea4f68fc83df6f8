"""A ``.pt2`` with no pickle in it must still run no code: strings torch would evaluate."""

from __future__ import annotations

import json
import re
import zipfile

import pytest
import torch
from tiny_models import tiny_net

from dissect.cli import main
from dissect.errors import DissectError
from dissect.models import load_model


def _export(path):
    program = torch.export.export(
        tiny_net().eval(),
        (torch.randn(2, 3, 32, 32),),
        dynamic_shapes={"x": {0: torch.export.Dim("n", max=64)}},
    )
    torch.export.save(program, path)


def _edit_program(path, change):
    """Rewrite the archive's program JSON with ``change(program) -> None``."""
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            if name.endswith("models/model.json"):
                program = json.loads(data)
                change(program)
                data = json.dumps(program).encode()
            archive.writestr(name, data)


def _replace_strings(program, old, new):
    """Replace ``old`` by ``new`` in every string of the program (keys too); count them."""
    text = json.dumps(program)
    count = text.count(json.dumps(old)[1:-1])
    program.clear()
    program.update(json.loads(text.replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1])))
    return count


def _batch_symbol(program) -> str:
    match = re.search(r"Symbol\('(s\d+)', positive=True, integer=True\)", json.dumps(program))
    return match.group(0).replace("\\", "")


def _refused(path, marker, capsys, what):
    with pytest.raises(DissectError, match=what) as error:
        load_model(str(path))
    assert "\n" not in str(error.value)
    assert not marker.exists()
    capsys.readouterr()
    assert main(["layers", str(path)]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_symbolic_size_expression_that_runs_code_is_refused(tmp_path, capsys):
    path, marker = tmp_path / "hostile.pt2", tmp_path / "marker"
    _export(path)

    def inject(program):
        symbol = _batch_symbol(program)
        name = re.search(r"'(s\d+)'", symbol).group(1)
        payload = (
            f"(__import__('os').system('touch {marker}') and 0) "
            f"or Symbol('{name}', positive=True, integer=True)"
        )
        assert _replace_strings(program, symbol, payload) > 0

    _edit_program(path, inject)
    _refused(path, marker, capsys, "symbolic size expression")


@pytest.mark.parametrize(
    "field, value, what",
    [
        ("target", "torch.os.system", "node target"),
        ("target", "torch.ops.aten.__class__.__init__", "node target"),
        ("guards_code", "__import__('os').system('touch MARKER')", "shape guard"),
        ("guards_code", "L['x'].size()[0].__class__ == 1", "shape guard"),
        ("range_constraints", "(lambda: 0)()", "range constraint"),
        ("expr_str", "Pow(Pow(Integer(99999), Integer(64)), Integer(64))", "expression"),
        ("expr_str", "Symbol('s0').__class__", "expression"),
        ("expr_str", "Add(" * 1000 + "Integer(1)" + ")" * 1000, "expression"),
    ],
)
def test_every_evaluated_string_is_checked(tmp_path, capsys, field, value, what):
    path, marker = tmp_path / "hostile.pt2", tmp_path / "marker"
    _export(path)
    value = value.replace("MARKER", str(marker))

    def inject(program):
        if field == "target":
            program["graph_module"]["graph"]["nodes"][0]["target"] = value
        elif field == "guards_code":
            program["guards_code"] = [value]
        elif field == "range_constraints":
            program["range_constraints"][value] = {"min_val": 1, "max_val": 2}
        else:
            _replace_strings(program, _batch_symbol(program), value)

    _edit_program(path, inject)
    _refused(path, marker, capsys, what)


def test_what_torch_export_writes_is_accepted(tmp_path):
    """Dynamic sizes, shape guards, float powers and symbolic functions all pass the check."""

    class Shapes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)

        def forward(self, x):
            y = self.conv(x)
            height = x.shape[2]
            y = torch.nn.functional.interpolate(y, scale_factor=1.5, mode="bilinear")
            y = y[:, :, : max(height // 3, 2)] * (x.shape[3] % 7 + 1)
            return y + torch.sym_float(height) ** 0.5

    auto = torch.export.Dim.AUTO
    model = Shapes().eval()
    program = torch.export.export(
        model, (torch.randn(2, 3, 40, 48),), dynamic_shapes=({0: auto, 2: auto, 3: auto},)
    )
    torch.export.save(program, tmp_path / "shapes.pt2")
    loaded = load_model(str(tmp_path / "shapes.pt2")).module
    images = torch.randn(3, 3, 36, 44)
    assert torch.allclose(loaded(images), model(images), atol=1e-5)
