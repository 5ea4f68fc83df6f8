"""The connectivity probe: which input pixels each feature position of a layer is connected to.

The network runs once (layers after a resampling a second time, with more probed positions), on
a batch of all-ones images (one per probed position), under :class:`ConnectivityMode`, a
:class:`~torch.overrides.TorchFunctionMode` that sees every call the forward makes: ``nn`` modules,
``torch.nn.functional``, tensor methods and the ATen operators that exported programs (``.pt2``)
and ``torch.fx`` graphs (onnx2torch) call directly. It replaces each operation on the image's
activations by a *monotone surrogate* with the same connections, so that no path can cancel or
saturate:

- convolutions, linear maps and products with a constant matrix get positive averaging weights
  and no bias; max pooling becomes average pooling over the same windows;
- point-wise functions (ReLU, ReLU6, hard-swish, sigmoid, clamp, ...), dropout, softmax and
  normalisations become the identity; sums, differences, maxima of two activations become sums,
  quotients become products; an activation combined with a constant (a learned scale or shift)
  passes unchanged, whatever the constant's sign;
- everything else (padding, slicing, concatenation, resampling, ...) runs as it is.

The gradient of one feature position with respect to the image is then non-zero exactly on the
pixels it is connected to. Operations that mix all positions -- normalisation over space
(GroupNorm, InstanceNorm, LayerNorm over maps, BatchNorm with batch statistics), global pooling
(a reduction over a spatial axis, pooling to 1x1) and attention (a product of two activations)
-- mark their output, and everything computed from it, *global* (the reason is kept). Their
mixing path is cut from the gradient (normalisations pass their input on; pooled and attention
values are detached), so the gradient still shows the *local* geometry of the positions (stride,
offset) through the other paths, where there are any.

A 4-d output is read as (B, H, W, C) when its shape says so (see
:func:`dissect.hooks.channels_last_by_shape`); when both readings fit, the gradient decides: the
slices along a channel axis all reach the same pixels, those along a spatial axis do not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

from ..errors import DissectError
from ..hooks import as_maps, channels_last_by_shape, token_grid

#: Probed positions per axis come in runs of this many neighbours, at four places (see
#: probe_positions); one probe image per position. Layers after a resampling are probed again
#: with runs of 4 (stacked x2 upsamplings repeat with period up to 4).
RUN, RESAMPLED_RUN = 2, 4
#: Attribute set on every tensor computed from the probe image.
DERIVED = "_dissect_derived"
#: Attribute holding why a tensor depends on every position of the image.
GLOBAL = "_dissect_global"
#: Attribute set on tensors computed after a resampling (upsampling) of activations.
RESAMPLED = "_dissect_resampled"
_RESAMPLING = {"interpolate", "grid_sample", "pixel_shuffle", "affine_grid"}

_VALUEWISE = {
    *("relu", "relu6", "hardtanh", "hardswish", "hardsigmoid", "sigmoid", "silu", "gelu", "tanh"),
    *("elu", "selu", "celu", "leaky_relu", "rrelu", "prelu", "mish", "softplus", "softsign"),
    *("logsigmoid", "tanhshrink", "hardshrink", "softshrink", "threshold", "clamp", "clamp_min"),
    *("clamp_max", "clip", "abs", "neg", "negative", "exp", "expm1", "log", "log1p", "log2"),
    *("sqrt", "rsqrt", "reciprocal", "square", "erf", "erfc", "floor", "ceil", "round", "trunc"),
    *("sign", "sin", "cos", "nan_to_num", "normalize", "softmax", "_softmax", "log_softmax"),
    *("_log_softmax", "softmin", "dropout", "dropout1d", "dropout2d", "dropout3d", "pow"),
    *("alpha_dropout", "feature_alpha_dropout", "feature_dropout", "native_dropout"),
}
_NORMS = {
    *("batch_norm", "_batch_norm_impl_index", "native_batch_norm", "_native_batch_norm_legit"),
    *("_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional"),
    *("cudnn_batch_norm", "instance_norm", "group_norm", "native_group_norm", "layer_norm"),
    *("native_layer_norm", "rms_norm", "_fused_rms_norm", "local_response_norm"),
}
_CONVS = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "linear"}
_TRANSPOSED = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_PRODUCTS = {"mm", "matmul", "bmm", "addmm", "baddbmm", "einsum", "addbmm", "addmv", "mv"}
_ATTENTION = {"scaled_dot_product_attention", "multi_head_attention_forward"}
_BINARY = {"add", "sub", "rsub", "mul", "div", "true_divide", "maximum", "minimum", "fmax"}
_BINARY |= {"fmin", "where", "max", "min"}
_REDUCTIONS = {"mean", "sum", "nansum", "amax", "amin", "max", "min", "std", "var", "std_mean"}
_REDUCTIONS |= {"var_mean", "logsumexp", "norm", "prod", "median", "nanmean"}
_DUNDER = {"add", "sub", "mul", "truediv", "div", "matmul", "and", "or"}


def _op_name(func) -> tuple[str, bool]:
    """Base name of a torch callable (``conv2d``, ``add``...) and whether it works in place."""
    packet = getattr(func, "overloadpacket", None)
    name = getattr(packet if packet is not None else func, "__name__", "") or ""
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name[:1] in "ir" and name[1:] in _DUNDER:
            return ("truediv" if name[1:] == "truediv" else name[1:]), name[0] == "i"
        return name, False
    if name.endswith("_") and not name.startswith("_"):
        return name[:-1], True
    return name, False


def _is_derived(value) -> bool:
    return isinstance(value, torch.Tensor) and getattr(value, DERIVED, False)


class ConnectivityMode(TorchFunctionMode):
    """Run a forward with monotone surrogates and mark global tensors (see module docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        derived = [t for t in pytree.tree_leaves((args, kwargs)) if _is_derived(t)]
        if not derived:
            return func(*args, **kwargs)
        name, inplace = _op_name(func)
        reason = next((getattr(t, GLOBAL) for t in derived if getattr(t, GLOBAL, None)), None)
        resampled = any(getattr(t, RESAMPLED, False) for t in derived)
        resampled = resampled or name in _RESAMPLING or "upsample" in name
        out, mixing = _surrogate(name, inplace, func, args, kwargs)
        reason = reason or mixing
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                setattr(tensor, DERIVED, True)
                if reason:
                    setattr(tensor, GLOBAL, reason)
                if resampled:
                    setattr(tensor, RESAMPLED, True)
        return out


def _surrogate(name: str, inplace: bool, func, args: tuple, kwargs: dict) -> tuple:
    """The surrogate's output, and why it mixes all positions (None if it does not)."""
    first = args[0] if args else next(iter(kwargs.values()), None)
    if name in _VALUEWISE and _is_derived(first):
        if name == "pow" and any(_is_derived(a) for a in args[1:]):
            return func(*args, **kwargs), None
        return _replace_first(first, inplace, func, args, kwargs), None
    if name in _NORMS and _is_derived(first):
        return _replace_first(first, False, func, args, kwargs), _norm_mixing(name, args, kwargs)
    if name in _CONVS or name in _TRANSPOSED:
        return _positive_conv(name, func, args, kwargs), None
    if name in _ATTENTION:
        return _cut(func(*args, **kwargs)), "attention"
    if name in _PRODUCTS:
        return _product(name, func, args, kwargs)
    if (
        name in _BINARY
        and len(args) >= 2
        and not (name in ("max", "min") and not isinstance(args[1], torch.Tensor))
    ):
        return _binary(name, inplace, func, args, kwargs), None
    if name in _REDUCTIONS:
        out = func(*args, **kwargs)
        mixing = _reduction_mixing(name, first, args, kwargs)
        return (_cut(out), mixing) if mixing else (out, None)
    if name.startswith("max_pool2d") and first.dim() >= 3:
        out = _dense_max_pool(func, args, kwargs)
    elif name.startswith("adaptive_max_pool2d"):
        pooled = func(*args, **kwargs)
        dense = F.adaptive_avg_pool2d(first, _first(pooled).shape[-2:])
        out = (dense, pooled[1]) if isinstance(pooled, tuple) else dense
    else:
        out = func(*args, **kwargs)
    if "pool" in name and _is_derived(first) and first.dim() >= 3:
        result = _first(out)
        if math.prod(result.shape[2:]) == 1 and math.prod(first.shape[2:]) > 1:
            return _cut(out), f"global pooling ({name})"
    return out, None


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def _replace_first(x: torch.Tensor, inplace: bool, func, args: tuple, kwargs: dict):
    """Identity on ``x``; for functions returning tuples, the other outputs as computed."""
    if inplace:
        return x
    real = func(*args, **kwargs)
    if isinstance(real, tuple):
        return (x.clone(), *real[1:]) if real[0].shape == x.shape else real
    return x.clone() if real.shape == x.shape else real


def _cut(value):
    """Detach the mixing path from the gradient (the values stay)."""
    return pytree.tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, value)


def _norm_mixing(name: str, args: tuple, kwargs: dict) -> str | None:
    x = args[0] if args else kwargs["input"]
    spatial = math.prod(x.shape[2:]) > 1
    if name in ("group_norm", "native_group_norm", "instance_norm"):
        return name if spatial else None
    if "batch_norm" in name:
        if "no_training" in name:
            return None
        training = kwargs.get("training")
        if training is None:
            training = next((a for a in args[1:] if isinstance(a, bool)), False)
        return f"{name} with batch statistics" if training and spatial else None
    if name in ("layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm"):
        shape = args[1] if len(args) > 1 else kwargs.get("normalized_shape", ())
        shape = [shape] if isinstance(shape, int) else list(shape)
        return (
            f"{name} over {tuple(shape)}" if len(shape) >= 2 and math.prod(shape[:-1]) > 1 else None
        )
    return None


def _reduction_mixing(name: str, x, args: tuple, kwargs: dict) -> str | None:
    """Whether a reduction runs over a spatial axis (or the tokens of a (B, N, C) tensor)."""
    if not _is_derived(x) or x.dim() < 3:
        return None
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if isinstance(dims, torch.Tensor) or (
        dims is not None and not isinstance(dims, (int, tuple, list))
    ):
        return None
    if dims is None or (isinstance(dims, (tuple, list)) and len(dims) == 0):
        dims = list(range(x.dim()))
    dims = [d % x.dim() for d in ([dims] if isinstance(dims, int) else dims)]
    spatial = {1} if x.dim() == 3 else set(range(2, x.dim()))
    mixed = [d for d in dims if d in spatial and x.shape[d] > 1]
    return f"global pooling ({name} over axes {tuple(dims)})" if mixed else None


def _positive_conv(name: str, func, args: tuple, kwargs: dict):
    """Convolution or linear map with positive averaging weights and no bias."""
    args = list(args)
    x = args[0] if args else kwargs.get("input")
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    if not _is_derived(x) or weight is None or _is_derived(weight):
        return func(*args, **kwargs)
    transposed = name in _TRANSPOSED or (
        name in ("convolution", "_convolution") and bool(args[6] if len(args) > 6 else False)
    )
    fan_in = weight.shape[0 if transposed else 1] * math.prod(weight.shape[2:])
    ones = torch.full_like(weight, 1.0 / max(fan_in, 1))
    if len(args) > 1:
        args[1] = ones
    else:
        kwargs["weight"] = ones
    if len(args) > 2:
        args[2] = None
    kwargs.pop("bias", None)
    return func(*args, **kwargs)


def _product(name: str, func, args: tuple, kwargs: dict) -> tuple:
    """A product with constants: positive constants. Of two activations: attention (mixing)."""
    operands = list(args)
    if name in ("addmm", "baddbmm", "addbmm", "addmv"):
        operands = operands[1:3]
        name = {"addmm": "mm", "baddbmm": "bmm", "addbmm": "mm", "addmv": "mv"}[name]
        func = getattr(torch, name) if name != "mm" else torch.mm
        if name == "mm" and operands[0].dim() == 3:  # addbmm sums the batch of products
            func = lambda a, b: torch.bmm(a, b).sum(0)  # noqa: E731
        kwargs = {}
    tensors = [a for a in operands if isinstance(a, torch.Tensor)]
    derived = [a for a in tensors if _is_derived(a)]
    if len(derived) >= 2:
        return _cut(func(*operands, **kwargs)), "attention (a product of two activations)"
    positive = [
        torch.full_like(a, 1.0 / max(a.shape))
        if isinstance(a, torch.Tensor) and not _is_derived(a) and a.is_floating_point()
        else a
        for a in operands
    ]
    return func(*positive, **kwargs), None


def _binary(name: str, inplace: bool, func, args: tuple, kwargs: dict):
    """Monotone two-operand surrogates: sums for sums and differences, products for quotients."""
    if name == "where":
        cond, a, b = args[:3]
        operands = [a, b]
    else:
        a, b = args[:2]
        operands = [a, b]
    derived = [t for t in operands if _is_derived(t)]
    if not derived:
        return func(*args, **kwargs)
    tensors = [t for t in operands if isinstance(t, torch.Tensor)]
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    if len(derived) == 1:
        x = derived[0]
        if inplace:
            return x if args[0] is x else func(*args, **kwargs)
        return x.expand(shape).clone()
    if name in ("mul", "div", "true_divide", "truediv"):
        return a.mul_(b) if inplace else a * b
    return a.add_(b) if inplace else a + b


def _dense_max_pool(func, args: tuple, kwargs: dict):
    """Average over exactly the windows a 2-d max pool uses (same output shape)."""
    pooled = func(*args, **kwargs)
    real = _first(pooled)
    names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode")
    given = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
    x = given["input"]
    kernel = _pair(given["kernel_size"])
    stride = _pair(given.get("stride")) or kernel
    padding = _pair(given.get("padding", 0)) or (0, 0)
    dilation = _pair(given.get("dilation", 1)) or (1, 1)
    squeeze = x.dim() == 3
    x = x.unsqueeze(0) if squeeze else x
    channels = x.shape[1]
    weight = x.new_full((channels, 1, *kernel), 1.0 / math.prod(kernel))
    pad = (
        padding[1],
        padding[1] + stride[1] * dilation[1],
        padding[0],
        padding[0] + stride[0] * dilation[0],
    )
    dense = F.conv2d(F.pad(x, pad), weight, stride=stride, dilation=dilation, groups=channels)
    dense = dense[..., : real.shape[-2], : real.shape[-1]]
    dense = dense.squeeze(0) if squeeze else dense
    return (dense, pooled[1]) if isinstance(pooled, tuple) else dense


def _pair(value) -> tuple | None:
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0):
        return None
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    return value * 2 if len(value) == 1 else value


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
    module: nn.Module, size: tuple[int, int], layers: list[str] | None, run_length: int = RUN
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
    """
    found: dict[str, LayerProbe] = {}
    kept: dict[str, torch.Tensor] = {}
    measured: list[str] = []
    wanted = None if layers is None else set(layers)
    kinds = {name: type(child).__name__ for name, child in module.named_modules() if name}

    def record(name: str):
        def hook(_module, _inputs, output):
            if name in found:
                return
            if not isinstance(output, torch.Tensor):
                found[name] = LayerProbe(type(output).__name__, kinds[name])
                return
            grid = token_grid(output.shape[1], size) if output.dim() == 3 else None
            layout = channels_last_by_shape(output.shape, size) if output.dim() == 4 else False
            measured = wanted is None or name in wanted
            if grid is not None or layout:
                marks = getattr(output, GLOBAL, None), getattr(output, RESAMPLED, False)
                output = as_maps(output, size, True)
                setattr(output, GLOBAL, marks[0])
                setattr(output, RESAMPLED, marks[1])
            found[name] = LayerProbe(
                tuple(output.shape[1:]),
                kinds[name],
                getattr(output, GLOBAL, None),
                getattr(output, RESAMPLED, False),
                grid[0] if grid else None,
                None if layout is None and measured and output.requires_grad else bool(layout),
            )
            if measured and output.dim() == 4:
                kept[name] = output.clone() if output.requires_grad else output
            if wanted is not None and wanted <= found.keys():
                raise _Stop

        return hook

    parameter = next(iter([*module.parameters(), *module.buffers()]), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else None
    handles = [
        child.register_forward_hook(record(name)) for name, child in module.named_modules() if name
    ]

    def run(batch: int) -> None:
        found.clear()
        kept.clear()
        image = torch.ones(batch, 3, *size, device=device, dtype=dtype or torch.float32)
        with torch.inference_mode(False), torch.enable_grad():
            image.requires_grad_(True)
            setattr(image, DERIVED, True)
            try:
                with ConnectivityMode():
                    module(image)
            except _Stop:
                pass
            for name, output in kept.items():
                _measure(found[name], output, image, run_length)
            measured[:] = kept
            kept.clear()  # frees the probe's graph

    try:
        try:
            # One image per probed position, all positions of a layer in one backward...
            run(4 * run_length)
        except DissectError:
            raise
        except Exception:  # noqa: BLE001 - ...unless the network takes one image only (.pt2)
            run(1)
    except DissectError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of the user's forward
        raise DissectError(
            f"the network fails on a 1x3x{size[0]}x{size[1]} input ({error}); check --image-size."
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    again = [name for name in measured if found[name].resampled and run_length < RESAMPLED_RUN]
    if again:
        probes = probe_layers(module, size, again, RESAMPLED_RUN)
        found.update({name: probes[name] for name in again})
    return found


def probe_positions(length: int, run: int = RUN) -> list[int]:
    """Probed positions along an axis of ``length``: runs of ``run`` neighbours ``p .. p + run -
    1`` at both ends and at two multiples of ``run`` between (so that the supports after
    resampling, which repeat with period 2, or 4 after two x2 upsamplings, come in whole
    periods)."""
    starts = {0, length - run, *(run * round(k * (length - run) / (3 * run)) for k in (1, 2))}
    positions = {p + d for p in starts for d in range(run)}
    return sorted({min(max(p, 0), length - 1) for p in positions})


def _measure(probe: LayerProbe, output: torch.Tensor, image: torch.Tensor, run: int) -> None:
    """Gradient support of the probe positions of one layer, in runs of ``run`` (nothing if it
    has no grad path)."""
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
    if not output.requires_grad:
        return
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
        return
    weights = grads[:count].abs().sum(1).double()  # (positions, H, W)
    rows, cols = weights.sum(2).cpu().numpy(), weights.sum(1).cpu().numpy()
    for k, (y, x) in enumerate(zip(ys, xs, strict=True)):
        probe.positions.append((y, x))
        probe.rows.append(rows[k])
        probe.cols.append(cols[k])


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
