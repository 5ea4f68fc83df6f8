"""On a CUDA device (skipped elsewhere; ``benchmarks/gpu_check.sh`` runs these): ``--device auto``
takes it, and a dissection there agrees with the one on the CPU."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dissect.cli import main
from dissect.device import pick_device

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_auto_is_cuda():
    assert pick_device("auto").type == "cuda"


def test_cuda_dissection_agrees_with_cpu(tmp_path):
    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        args = ["run", "scene-cnn", "synthetic:128:0", "--out", str(out), "--topk", "5"]
        assert main([*args, "--device", device]) == 0
        runs[device] = pd.read_csv(out / "units.csv")
    cpu, cuda = runs["cpu"], runs["cuda"]
    assert list(cpu["layer"]) == list(cuda["layer"])
    np.testing.assert_allclose(cpu["max_activation"], cuda["max_activation"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(cpu["threshold"], cuda["threshold"], rtol=2e-2, atol=1e-3)
