"""dissect.passes: one pass driver, mergeable listeners, one resume policy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dissect.checkpoint import Checkpoint
from dissect.config import ResumeConfig
from dissect.errors import DissectError
from dissect.images import Batch
from dissect.on_device import wants_channels_last
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


class OutOfMemoryAbove(nn.Module):
    """Raises torch's out-of-memory error for a batch of more than ``limit`` images, as a GPU
    does; otherwise passes its input on."""

    def __init__(self, limit: int, calls: int = 0):
        super().__init__()
        self.limit, self.calls = limit, calls  # only after the first ``calls`` forwards
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(len(x))
        if len(x) > self.limit and len(self.sizes) > self.calls:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x


def thrifty_network(limit: int, calls: int = 0) -> nn.Module:
    """``network()`` with the error raised after layer "0" ran: in a streamed pass the
    listeners have already been handed the first layer of the batch that fails."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), OutOfMemoryAbove(limit, calls), nn.Conv2d(4, 2, 3)
    ).eval()


def sized_batches(start: int, size: int):
    for first in range(start, len(IMAGES), size):
        keep = list(range(first, min(first + size, len(IMAGES))))
        yield Batch(torch.tensor(keep), IMAGES[keep], [])


@pytest.mark.parametrize("stream", [True, False])
def test_out_of_memory_halves_the_batch_and_keeps_nothing_of_the_failed_one(tmp_path, stream):
    small, kept_small = Sums(), KeptOutputs()
    options = {"stream": stream, "batches": sized_batches}
    run_pass(job(batch_size=2, **options), {"sums": small, "kept": kept_small})
    module = thrifty_network(limit=2)
    backed, kept = Sums(), KeptOutputs()
    checkpoint = Checkpoint(tmp_path, {"pass": "test"})
    with pytest.warns(UserWarning, match="out of cpu memory with 8 images") as caught:
        state = run_pass(
            PassJob(
                module,
                ["0", "3"],
                sized_batches,
                len(IMAGES),
                torch.device("cpu"),
                batch_size=8,
                checkpoint=checkpoint,
                progress=False,
                **{"stream": stream},
            ),
            {"sums": backed, "kept": kept},
        )
    assert len([w for w in caught if "memory" in str(w.message)]) == 1  # said once
    assert module[2].sizes == [8, 4, 2, 2, 2, 2, 2]  # 8, then 4 fail; batches of 2 go on
    assert state.done == 10 and backed.images == 10
    # exactly as at batch size 2: no layer of a failed batch was kept
    assert backed.sums == {"0": small.sums["0"], "3": small.sums["2"]}
    for layer, same in (("0", "0"), ("3", "2")):
        assert torch.equal(kept.output(layer), kept_small.output(same))
    assert checkpoint.load()["pass"]["done"] == 10


def test_out_of_memory_after_a_save_goes_on_from_the_saved_state(tmp_path):
    def as_backed_off(start):  # what the pass should end up with: 0-3 in pairs, then singly
        yield from (batch for batch in sized_batches(0, 2) if batch.indices[0] < 4)
        yield from sized_batches(4, 1)

    reference = KeptOutputs()
    run_pass(job(batches=as_backed_off), {"kept": reference})
    module = thrifty_network(limit=1, calls=3)  # images 6-7 fail; the last save was after 4
    sums, kept = Sums(), KeptOutputs()
    later = PassJob(
        module,
        ["0", "3"],
        sized_batches,
        len(IMAGES),
        torch.device("cpu"),
        batch_size=2,
        checkpoint=Checkpoint(tmp_path, {"pass": "test"}),
        resume=ResumeConfig(checkpoint_every=4),
        progress=False,
    )
    with pytest.warns(UserWarning, match="with 1 .* from image 4 of this shard"):
        run_pass(later, {"sums": sums, "kept": kept})
    assert module[2].sizes == [2, 2, 2, 2] + [1] * 6  # 0-3 not fed again, 4-5 fed again
    assert sums.images == 10  # and counted once
    for layer, same in (("0", "0"), ("3", "2")):
        assert torch.equal(kept.output(layer), reference.output(same))


def test_out_of_memory_with_one_image_is_one_clear_error():
    module = thrifty_network(limit=0)
    one = PassJob(
        module,
        ["0", "3"],
        sized_batches,
        len(IMAGES),
        torch.device("cpu"),
        batch_size=4,
        progress=False,
    )
    with pytest.warns(UserWarning), pytest.raises(DissectError, match="with 1 image per forward"):
        run_pass(one, {"sums": Sums()})
    assert module[2].sizes == [4, 2, 1]
    no_back_off = job(batches=lambda start: sized_batches(start, 4))
    no_back_off.module = thrifty_network(limit=2)
    with pytest.raises(DissectError, match="ran out of cpu memory; trace fewer"):
        run_pass(no_back_off, {"sums": Sums()})


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    broken = job(batches=lambda start: sized_batches(start, 4))
    broken.module = nn.Sequential(nn.Conv2d(5, 4, 3)).eval()  # 3 channels come in
    channels_last = pytest.warns(UserWarning, match="running it in the default format")
    with pytest.raises(RuntimeError, match="channels"), channels_last:
        run_pass(
            PassJob(
                broken.module,
                ["0"],
                sized_batches,
                10,
                torch.device("cpu"),
                batch_size=4,
                progress=False,
            ),
            {"sums": Sums()},
        )


class Recorder(BaseListener):
    """A listener that records what it sees for the test and keeps no state to save."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def merge(self, state):
        pass


class Float32Work(Recorder):
    """Records the dtype of what it is handed and of its own arithmetic."""

    def __init__(self):
        self.seen: set[torch.dtype] = set()

    def add(self, layer, output, batch):
        flat = output.flatten(1)
        self.seen.update({output.dtype, (flat @ flat.T).dtype})


@pytest.mark.parametrize("stream", [True, False])
def test_bfloat16_forward_feeds_float32_listeners(stream):
    reference, half = KeptOutputs(), KeptOutputs()
    run_pass(job(stream=stream), {"kept": reference})
    work = Float32Work()
    run_pass(job(stream=stream, dtype=torch.bfloat16), {"kept": half, "work": work})
    assert work.seen == {torch.float32}  # cast before the listeners, their work not autocast
    for layer in ("0", "2"):
        assert not torch.equal(half.output(layer), reference.output(layer))  # it did run bf16
        torch.testing.assert_close(
            half.output(layer), reference.output(layer), rtol=0.05, atol=0.05
        )


class Layouts(Recorder):
    """Whether each output it is handed is in channels-last memory format."""

    def __init__(self):
        self.channels_last: set[bool] = set()

    def add(self, layer, output, batch):
        self.channels_last.add(output.is_contiguous(memory_format=torch.channels_last))


def test_channels_last_memory_format_changes_nothing_but_rounding():
    reference, kept, layouts = KeptOutputs(), KeptOutputs(), Layouts()
    run_pass(job(memory_format=False), {"kept": reference})
    default = job()
    run_pass(default, {"kept": kept, "layouts": layouts})
    assert layouts.channels_last == {True}  # a convolutional network on the CPU: by default
    for layer in ("0", "2"):
        torch.testing.assert_close(kept.output(layer), reference.output(layer))
    assert default.module[0].weight.is_contiguous()  # the network is given back as it came


class Viewed(nn.Module):
    """A network whose code assumes contiguous tensors (``view`` of a convolution's output)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3)
        self.head = nn.Linear(2 * 8 * 8, 3)

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x)))
        return self.head(y.view(len(y), -1))


@pytest.mark.parametrize("stream", [True, False])
def test_a_network_that_fails_in_channels_last_runs_in_the_default_format(tmp_path, stream):
    """The fallback: the pass goes on from its last saved state in contiguous format and says
    so once; the result is that of a contiguous pass."""
    reference, kept = KeptOutputs(), KeptOutputs()
    contiguous = job(memory_format=False, stream=stream)
    contiguous.module, contiguous.layers = Viewed().eval(), ["conv1", "head"]
    run_pass(contiguous, {"kept": reference})
    viewed = job(stream=stream, checkpoint=Checkpoint(tmp_path, {"run": 1}))
    viewed.module, viewed.layers = Viewed().eval(), ["conv1", "head"]
    with pytest.warns(UserWarning, match="error in channels-last memory format .*view"):
        state = run_pass(viewed, {"kept": kept})
    assert state.done == len(IMAGES)
    for layer in ("conv1", "head"):
        assert torch.equal(kept.output(layer), reference.output(layer))
    assert viewed.module.conv1.weight.is_contiguous()


def test_the_environment_decides_the_memory_format(monkeypatch):
    convolutional, cpu = network(), torch.device("cpu")
    assert wants_channels_last(convolutional, cpu)
    assert not wants_channels_last(nn.Sequential(nn.Linear(3, 3)), cpu)
    monkeypatch.setenv("DISSECT_CHANNELS_LAST", "0")
    assert not wants_channels_last(convolutional, cpu)
    monkeypatch.setenv("DISSECT_CHANNELS_LAST", "1")
    assert wants_channels_last(nn.Sequential(nn.Linear(3, 3)), cpu)
    monkeypatch.setenv("DISSECT_CHANNELS_LAST", "yes")
    with pytest.raises(DissectError, match="DISSECT_CHANNELS_LAST='yes': use 1"):
        wants_channels_last(convolutional, cpu)
