"""dissect.passes: one pass driver, mergeable listeners, one resume policy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dissect.checkpoint import Checkpoint
from dissect.config import ResumeConfig
from dissect.images import Batch
from dissect.passes import BaseListener, KeptOutputs, PassJob, run_pass


class Sums(BaseListener):
    """Per layer, the sum of every output value and the images seen (mergeable)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.images = 0

    def begin(self, batch):
        self.images += len(batch.indices)

    def add(self, layer, output, batch):
        self.sums[layer] = self.sums.get(layer, 0.0) + float(output.double().sum())

    def state_dict(self):
        return {"sums": dict(self.sums), "images": self.images}

    def load_state_dict(self, state):
        state = state or {"sums": {}, "images": 0}
        self.sums, self.images = dict(state["sums"]), int(state["images"])

    def merge(self, state):
        for layer, value in state["sums"].items():
            self.sums[layer] = self.sums.get(layer, 0.0) + value
        self.images += state["images"]


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()


IMAGES = torch.randn(10, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def batches(size: int = 3, fail_at: int | None = None):
    def make(start: int):
        for first in range(start, len(IMAGES), size):
            if fail_at is not None and first >= fail_at:
                raise KeyboardInterrupt  # between batches, as while reading
            last = min(first + size, len(IMAGES))
            skipped = [(first, "unreadable")] if first == 6 else []
            keep = range(first + (1 if skipped else 0), last)
            yield Batch(torch.tensor(list(keep)), IMAGES[list(keep)], skipped)

    return make


def job(**options) -> PassJob:
    values = {"progress": False, "stream": True, **options}
    make = values.pop("batches", batches())
    return PassJob(network(), ["0", "2"], make, len(IMAGES), torch.device("cpu"), **values)


@pytest.mark.parametrize("stream", [True, False])
def test_every_listener_sees_every_layer_of_every_readable_image(stream):
    sums, kept = Sums(), KeptOutputs()
    state = run_pass(job(stream=stream), {"sums": sums, "kept": kept})
    assert state.done == 10 and state.skipped == [(6, "unreadable")] and sums.images == 9
    readable = [i for i in range(10) if i != 6]
    with torch.no_grad():
        first = network()[0](IMAGES[readable])
    assert kept.output("0").shape == (9, 4, 10, 10)
    torch.testing.assert_close(kept.output("0"), first)
    assert sums.sums["0"] == pytest.approx(float(first.double().sum()))


def test_an_interrupted_pass_resumes_from_its_checkpoint_exactly(tmp_path):
    whole = Sums()
    run_pass(job(), {"sums": whole})
    checkpoint = Checkpoint(tmp_path, {"pass": "test"})
    with pytest.raises(KeyboardInterrupt):
        run_pass(job(batches=batches(fail_at=6), checkpoint=checkpoint), {"sums": Sums()})
    saved = checkpoint.load()
    assert saved["pass"]["done"] == 6 and saved["listeners"]["sums"]["images"] == 6
    resumed = Sums()
    state = run_pass(job(checkpoint=checkpoint), {"sums": resumed})
    assert state.done == 10 and resumed.images == whole.images
    assert resumed.sums == pytest.approx(whole.sums, rel=1e-12)


def test_one_resume_policy_saves_by_time_by_images_and_at_the_end(tmp_path, monkeypatch):
    saves = []
    monkeypatch.setattr(Checkpoint, "save", lambda self, state: saves.append(state["pass"]["done"]))
    checkpoint = Checkpoint(tmp_path, {})
    run_pass(job(checkpoint=checkpoint), {"sums": Sums()})
    assert saves == [10]  # well within a minute: at the end only
    saves.clear()
    every_image = ResumeConfig(checkpoint_every=3)
    run_pass(job(checkpoint=checkpoint, resume=every_image), {"sums": Sums()})
    assert saves == [3, 6, 9, 10]  # the last batch has 1 image: saved at the end
    saves.clear()
    by_time = ResumeConfig(checkpoint_seconds=0)
    run_pass(job(checkpoint=checkpoint, resume=by_time), {"sums": Sums()})
    assert saves == [3, 6, 9, 10, 10]


def test_a_pass_leaves_the_global_random_state_alone(tmp_path, image_folder, tiny_spec):
    from dissect.images import Preprocess
    from dissect.models import load_model
    from dissect.streaming import run_dissection

    loaded = load_model(tiny_spec)  # building a network draws its initial weights
    before = torch.get_rng_state()
    with pytest.warns(UserWarning):
        run_dissection(
            loaded,
            str(image_folder),
            tmp_path / "out",
            ["conv1"],
            topk=2,
            seed=5,
            preprocess=Preprocess(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
            progress=False,
        )
    assert torch.equal(torch.get_rng_state(), before)


def test_a_job_without_layers_leaves_the_forward_to_its_listeners():
    class Forwards(Sums):
        """Runs the whole network itself at the end of each batch (as ablation does)."""

        def __init__(self, module):
            super().__init__()
            self.module = module

        def end(self, batch):
            self.sums["out"] = self.sums.get("out", 0.0) + float(self.module(batch.images).sum())

    module = network()
    calls = []
    module.register_forward_hook(lambda *_: calls.append(1))
    listener = Forwards(module)
    made = job(batches=batches())
    made.module, made.layers = module, ()
    state = run_pass(made, {"forwards": listener})
    assert state.done == 10 and listener.images == 9 and len(calls) == 4  # one per batch
    readable = [i for i in range(10) if i != 6]
    with torch.no_grad():
        expected = float(network()(IMAGES[readable]).sum())
    assert listener.sums["out"] == pytest.approx(expected, rel=1e-5)
