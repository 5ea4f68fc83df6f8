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


def test_gpu_defaults_keep_the_labels(tmp_path):
    """Workers, pinned memory, side-stream copies, channels-last and bfloat16 on CUDA: the same
    top images and nearly the same labels as float32 on the CPU."""
    runs = {}
    for name, extra in (
        ("cpu", ["--device", "cpu", "--workers", "0"]),
        ("cuda", ["--device", "cuda", "--workers", "2", "--dtype", "bfloat16"]),
    ):
        out = tmp_path / name
        args = ["run", "scene-cnn", "synthetic:128:0", "--out", str(out), "--iou", *extra]
        assert main(args) == 0
        runs[name] = pd.read_csv(out / "labels_iou.csv")
    same = (runs["cpu"]["label"] == runs["cuda"]["label"]).mean()
    assert same >= 0.9, same


def test_pinned_batches_and_the_back_off_on_cuda():
    from dissect.datasets import open_data
    from dissect.images import Preprocess, make_loader
    from dissect.passes import KeptOutputs, PassJob, run_pass

    source = open_data("synthetic:8")
    device = torch.device("cuda")
    preprocess = Preprocess(64)
    batch = next(iter(make_loader(source, preprocess, range(8), 4, 2, device)))
    assert batch.images.is_pinned()

    class Greedy(torch.nn.Module):
        def forward(self, x):
            if len(x) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory.")
            return x

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), Greedy(), torch.nn.Conv2d(4, 2, 3))
    kept = {}
    for size in (2, 8):
        kept[size] = KeptOutputs()
        job = PassJob(
            module.eval(),
            ["0", "2"],
            lambda start, size: make_loader(source, preprocess, range(start, 8), size, 0, device),
            8,
            device,
            batch_size=size,
            progress=False,
        )
        run_pass(job, {"kept": kept[size]})
    for layer in ("0", "2"):
        torch.testing.assert_close(kept[8].output(layer), kept[2].output(layer))
