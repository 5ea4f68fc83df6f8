"""The connectivity probe: which input pixels each feature position of a layer is connected to.

The network runs once (layers after a resampling a second time, with more probed positions), on
a batch of all-ones images (one per probed position), under
:class:`~dissect.geometry.surrogates.ConnectivityMode`, which replaces each operation by a
monotone surrogate with the same connections (see :mod:`dissect.geometry.surrogates`). The
gradient of one feature position with respect to the image is then non-zero exactly on the
pixels it is connected to. Operations that mix all positions (normalisation over space, global
pooling, attention) mark their output, and everything computed from it, *global*; their mixing
path is cut from the gradient, so the gradient still shows the *local* geometry of the positions
(stride, offset) through the other paths, where there are any.

A 4-d output is read as (B, H, W, C) when its shape says so (see
:func:`dissect.hooks.channels_last_by_shape`); when both readings fit, the gradient decides: the
slices along a channel axis all reach the same pixels, those along a spatial axis do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import DissectError
from ..hooks import as_maps, channels_last_by_shape, token_grid
from .surrogates import DERIVED, GLOBAL, RESAMPLED, ConnectivityMode

#: Probed positions per axis come in runs of this many neighbours, at four places (see
#: probe_positions); one probe image per position. Layers after a resampling are probed again
#: with runs of 4 (stacked x2 upsamplings repeat with period up to 4).
RUN, RESAMPLED_RUN = 2, 4
#: Input pixels of the probe images of one forward: past it, the positions are probed in parts,
#: one forward each, so that the probe holds about four 224 px images' graph at any size.
PROBE_PIXELS = 4 * 224 * 224


class _Stop(Exception):
    """Every probed layer has run: end the probe's forward."""


@dataclass
class LayerProbe:
    """What the probe saw of one layer: shape, type, global reason, connectivity per position.

    ``support`` holds, per probe position ``(y, x)``, the input pixels' gradient summed over
    columns (``rows``, shape (H,)) and over rows (``cols``, shape (W,)). ``channels_last``: the
    output is (B, H, W, C) and ``shape`` (C, H, W) as read; None while undecided.
    """

    shape: tuple | str
    kind: str
    global_reason: str | None = None
    resampled: bool = False
    extra_tokens: int | None = None
    channels_last: bool | None = False
    positions: list | None = None
    rows: list | None = None
    cols: list | None = None


def probe_layers(
    module: nn.Module,
    size: tuple[int, int],
    layers: list[str] | None,
    run_length: int = RUN,
) -> dict[str, LayerProbe]:
    """Run the probe; return every module the forward reached, in order of first output.

    Parameters
    ----------
    module : nn.Module
        The network (not modified).
    size : (int, int)
        Input height and width.
    layers : list of str or None
        Layers whose connectivity to measure (4-d outputs only); None measures every module. The
        forward stops once they have all run.
    run_length : int
        Probed positions come in runs of this many neighbours (see :func:`probe_positions`);
        measured layers after a resampling are probed again with runs of ``RESAMPLED_RUN``.

    Notes
    -----
    Each probed position is read from an image of its own, all positions of a layer in one
    backward; past ``PROBE_PIXELS`` the positions are taken in parts of fewer images, one
    forward each (the same work, a fraction of the memory).
    """
    probe = _Probe(module, size, layers, run_length)
    handles = [
        child.register_forward_hook(probe.hook(name))
        for name, child in module.named_modules()
        if name
    ]
    batch = max(1, min(4 * run_length, PROBE_PIXELS // (size[0] * size[1])))
    try:
        try:
            found = probe.in_parts(batch)
        except DissectError:
            raise
        except Exception:  # noqa: BLE001 - ...unless the network takes one image only (.pt2)
            probe.run(1, 0)
            found = probe.found
    except DissectError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of the user's forward
        failure = error
    else:
        failure = None
    finally:
        for handle in handles:
            handle.remove()
    if failure is not None:
        raise DissectError(
            f"the network fails on a 1x3x{size[0]}x{size[1]} input ({failure}); "
            f"{_size_advice(module, size, probe.device, probe.dtype)}"
        ) from failure
    again = [name for name in probe.measured if found[name].resampled]
    if again and run_length < RESAMPLED_RUN:
        probes = probe_layers(module, size, again, RESAMPLED_RUN)
        found.update({name: probes[name] for name in again})
    return found


def _size_advice(module: nn.Module, size: tuple[int, int], device, dtype) -> str:
    """Say which --image-size works when the sides must be multiples of 2**k (U-Nets, FPNs)."""
    for multiple in (8, 16, 32, 64):
        fitted = tuple(-(-side // multiple) * multiple for side in size)
        if fitted == size:
            continue
        try:
            with torch.inference_mode():
                module(torch.zeros(1, 3, *fitted, device=device, dtype=dtype or torch.float32))
        except Exception:  # noqa: BLE001 - this size fails too
            continue
        flag = str(fitted[0]) if fitted[0] == fitted[1] else f"{fitted[0]},{fitted[1]}"
        return (
            f"it runs at {fitted[0]}x{fitted[1]}: this network needs sides that are multiples "
            f"of {multiple}; use --image-size {flag}."
        )
    return "check --image-size."


class _Probe:
    """State of one probe: hooks record each module's output, :meth:`run` measures them."""

    def __init__(
        self, module: nn.Module, size: tuple[int, int], layers: list[str] | None, run_length: int
    ):
        self.module, self.size, self.run_length = module, size, run_length
        self.found: dict[str, LayerProbe] = {}
        self.kept: dict[str, torch.Tensor] = {}
        self.measured: list[str] = []
        self.wanted = None if layers is None else set(layers)
        self.kinds = {name: type(child).__name__ for name, child in module.named_modules() if name}
        parameter = next(iter([*module.parameters(), *module.buffers()]), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        floating = parameter is not None and parameter.is_floating_point()
        self.dtype = parameter.dtype if floating else torch.float32

    def hook(self, name: str):
        """A forward hook recording the output of module ``name``."""

        def record(_module, _inputs, output):
            if name not in self.found:
                self.record(name, output)

        return record

    def record(self, name: str, output) -> None:
        if not isinstance(output, torch.Tensor):
            self.found[name] = LayerProbe(type(output).__name__, self.kinds[name])
            return
        size = self.size
        grid = token_grid(output.shape[1], size) if output.dim() == 3 else None
        layout = channels_last_by_shape(output.shape, size) if output.dim() == 4 else False
        measured = self.wanted is None or name in self.wanted
        if grid is not None or layout:
            marks = getattr(output, GLOBAL, None), getattr(output, RESAMPLED, False)
            output = as_maps(output, size, True)
            setattr(output, GLOBAL, marks[0])
            setattr(output, RESAMPLED, marks[1])
        self.found[name] = LayerProbe(
            tuple(output.shape[1:]),
            self.kinds[name],
            getattr(output, GLOBAL, None),
            getattr(output, RESAMPLED, False),
            grid[0] if grid else None,
            None if layout is None and measured and output.requires_grad else bool(layout),
        )
        if measured and output.dim() == 4:
            self.kept[name] = output.clone() if output.requires_grad else output
        if self.wanted is not None and self.wanted <= self.found.keys():
            raise _Stop

    def run(self, batch: int, part: int) -> int:
        """One forward of ``batch`` images measuring positions ``part * batch ...``; returns
        the most parts a measured layer needs."""
        self.found.clear()
        self.kept.clear()
        parts = 1
        image = torch.ones(batch, 3, *self.size, device=self.device, dtype=self.dtype)
        with torch.inference_mode(False), torch.enable_grad():
            image.requires_grad_(True)
            setattr(image, DERIVED, True)
            try:
                with ConnectivityMode():
                    self.module(image)
            except _Stop:
                pass
            for name, output in self.kept.items():
                parts = max(parts, _measure(self.found[name], output, image, self.run_length, part))
            self.measured[:] = self.kept
            self.kept.clear()  # frees the probe's graph
        return parts

    def in_parts(self, batch: int) -> dict[str, LayerProbe]:
        """One image per probed position, all positions of a layer in one backward, in as many
        forwards (parts) as the largest layer needs."""
        parts = self.run(batch, 0)
        first = dict(self.found)
        for part in range(1, parts):
            self.run(batch, part)
            for name in self.measured:
                probe, more = first[name], self.found[name]
                probe.positions += more.positions
                probe.rows += more.rows
                probe.cols += more.cols
        self.found.clear()
        self.found.update(first)
        return self.found


def probe_positions(length: int, run: int = RUN) -> list[int]:
    """Probed positions along an axis of ``length``: runs of ``run`` neighbours ``p .. p + run -
    1`` at both ends and at two multiples of ``run`` between (so that the supports after
    resampling, which repeat with period 2, or 4 after two x2 upsamplings, come in whole
    periods)."""
    starts = {0, length - run, *(run * round(k * (length - run) / (3 * run)) for k in (1, 2))}
    positions = {p + d for p in starts for d in range(run)}
    return sorted({min(max(p, 0), length - 1) for p in positions})


def _measure(
    probe: LayerProbe, output: torch.Tensor, image: torch.Tensor, run: int, part: int
) -> int:
    """Gradient support of part ``part`` of the probe positions of one layer (see
    :func:`probe_positions`; a part is as many positions as there are images, all of them with
    one image); nothing if it has no grad path. Returns how many parts the layer has."""
    if probe.channels_last is None:
        probe.channels_last = _channels_last(output, image)
        if probe.channels_last:
            output = output.permute(0, 3, 1, 2)
            probe.shape = tuple(output.shape[1:])
    height, width = output.shape[2:]
    ys, xs = probe_positions(height, run), probe_positions(width, run)
    count = max(len(ys), len(xs))
    ys = ys + [ys[-1]] * (count - len(ys))
    xs = xs + [xs[-1]] * (count - len(xs))
    probe.positions, probe.rows, probe.cols = [], [], []
    size = len(image) if len(image) > 1 else count
    parts = -(-count // size)
    ys, xs = ys[part * size : (part + 1) * size], xs[part * size : (part + 1) * size]
    count = len(ys)
    if not output.requires_grad or not count:
        return parts
    if len(image) >= count:  # position k read from image k: one backward
        total = sum(output[k, :, y, x].sum() for k, (y, x) in enumerate(zip(ys, xs, strict=True)))
        (grads,) = torch.autograd.grad(total, image, retain_graph=True, allow_unused=True)
    else:  # one image: one backward per position (a vmapped batch is no faster on CPU)
        grads = []
        for y, x in zip(ys, xs, strict=True):
            (grad,) = torch.autograd.grad(
                output[0, :, y, x].sum(), image, retain_graph=True, allow_unused=True
            )
            grads.append(grad if grad is None else grad[0])
        grads = None if any(g is None for g in grads) else torch.stack(grads)
    if grads is None:
        return parts
    weights = grads[:count].abs().sum(1).double()  # (positions, H, W)
    rows, cols = weights.sum(2).cpu().numpy(), weights.sum(1).cpu().numpy()
    for k, (y, x) in enumerate(zip(ys, xs, strict=True)):
        probe.positions.append((y, x))
        probe.rows.append(rows[k])
        probe.cols.append(cols[k])
    return parts


def _channels_last(output: torch.Tensor, image: torch.Tensor) -> bool:
    """Whether a 4-d output whose shape fits both readings is (B, H, W, C): the first and last
    slices along axis 3 reach the same input pixels (a channel axis), those along axis 1 do not."""
    slices = [output[:, :, :, 0], output[:, :, :, -1], output[:, 0], output[:, -1]]
    if len(image) >= len(slices):  # slice k read from image k: one backward
        total = sum(part[k].sum() for k, part in enumerate(slices))
        (grads,) = torch.autograd.grad(total, image, retain_graph=True, allow_unused=True)
    else:
        grads = [
            torch.autograd.grad(part[0].sum(), image, retain_graph=True, allow_unused=True)[0]
            for part in slices
        ]
        grads = None if any(g is None for g in grads) else torch.cat(grads)
    if grads is None:
        return False
    reached = grads[: len(slices)].abs().sum(1) > 0  # (slices, H, W)
    return bool(torch.equal(reached[0], reached[1]) and not torch.equal(reached[2], reached[3]))
