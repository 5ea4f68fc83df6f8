"""Monotone surrogates of a network's operations, for the connectivity probe.

:class:`ConnectivityMode` is a :class:`~torch.overrides.TorchFunctionMode` that sees every call a
forward makes: ``nn`` modules, ``torch.nn.functional``, tensor methods and the ATen operators that
exported programs (``.pt2``) and ``torch.fx`` graphs (onnx2torch) call directly. It replaces each
operation on the probe image's activations by a *monotone surrogate* with the same connections,
so that no path can cancel or saturate:

- convolutions, linear maps and products with a constant matrix get positive averaging weights
  and no bias (an ungrouped one runs on one channel, the mean of its input channels, repeated
  over its output channels: the same values and gradient at a fraction of the cost); max pooling
  becomes average pooling over the same windows;
- point-wise functions (ReLU, ReLU6, hard-swish, sigmoid, clamp, ...), dropout, softmax and
  normalisations become the identity; sums, differences, maxima of two activations become sums,
  quotients become products; an activation combined with a constant (a learned scale or shift)
  passes unchanged, whatever the constant's sign;
- everything else (padding, slicing, concatenation, resampling, ...) runs as it is.

Operations that mix all positions -- normalisation over space (GroupNorm, InstanceNorm, LayerNorm
over maps, BatchNorm with batch statistics), global pooling (a reduction over a spatial axis,
pooling to 1x1) and attention (a product of two activations) -- mark their output, and
everything computed from it, *global* (the reason is kept in ``GLOBAL``). Their mixing path is
cut from the gradient (normalisations pass their input on; pooled and attention values are
detached). Outputs computed after a resampling (interpolation, pixel shuffle, a transposed
convolution that enlarges its map) carry ``RESAMPLED``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

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
        resampled = resampled or _strided_transposed(name, args, kwargs, out)
        reason = reason or mixing
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                setattr(tensor, DERIVED, True)
                if reason:
                    setattr(tensor, GLOBAL, reason)
                if resampled:
                    setattr(tensor, RESAMPLED, True)
        return out


def _strided_transposed(name: str, args: tuple, kwargs: dict, out) -> bool:
    """Whether a transposed convolution made its map larger (a resampling: its outputs alternate
    between supports)."""
    if name in ("convolution", "_convolution"):
        transposed = args[6] if len(args) > 6 else kwargs.get("transposed", False)
    else:
        transposed = name in _TRANSPOSED
    x = args[0] if args else kwargs.get("input")
    if not transposed or not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor):
        return False
    return math.prod(out.shape[2:]) > math.prod(x.shape[2:])


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
    if _groups(name, args, kwargs) == 1:
        return _one_channel(func, args, kwargs, x, weight, transposed)
    fan_in = weight.shape[0 if transposed else 1] * math.prod(weight.shape[2:])
    ones = torch.full_like(weight, 1.0 / max(fan_in, 1), dtype=x.dtype)
    if len(args) > 1:
        args[1] = ones
    else:
        kwargs["weight"] = ones
    if len(args) > 2:
        args[2] = None
    kwargs.pop("bias", None)
    return func(*args, **kwargs)


def _groups(name: str, args: list, kwargs: dict) -> int:
    """The ``groups`` argument of a convolution call (1 for a linear map)."""
    if name == "linear":
        return 1
    index = 8 if name in ("convolution", "_convolution") else 6
    return int(args[index] if len(args) > index else kwargs.get("groups", 1))


def _one_channel(func, args: list, kwargs: dict, x: torch.Tensor, weight, transposed: bool):
    """An ungrouped positive averaging map, computed on one channel: with every weight
    ``1 / fan_in`` each output channel is the spatial average of the mean of the input
    channels, so the mean is averaged once and repeated over the output channels. The same
    values and gradients as the full map, at the cost of one channel."""
    if weight.dim() == 2:  # linear: (..., in) -> (..., out)
        mean = x.mean(-1, keepdim=True)
        return mean.expand(*mean.shape[:-1], weight.shape[0]).contiguous()
    axis = 1 if x.dim() == weight.dim() else 0  # a batch, or one unbatched input
    mean = x.mean(axis, keepdim=True)
    kernel = weight.shape[2:]
    ones = x.new_full((1, 1, *kernel), 1.0 / max(math.prod(kernel), 1))
    for position, key, value in ((0, "input", mean), (1, "weight", ones), (2, "bias", None)):
        if len(args) > position:
            args[position] = value
        elif key in kwargs:
            kwargs[key] = value
    out = func(*args, **kwargs)
    shape = list(out.shape)
    shape[axis] = weight.shape[1 if transposed else 0]
    return out.expand(*shape).contiguous()


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
