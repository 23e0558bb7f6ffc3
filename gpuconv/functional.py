"""Functional ops: arrays or Tensors in, Tensor out. Activations are NCHW, conv weights KCRS.

Arguments are checked and normalized here, once for every backend; the op
classes then call the active backend's kernels (``gpuconv.backend.kernels()``)
and keep that backend for their backward pass.
"""
from __future__ import annotations

import weakref

from gpuconv import backend
from gpuconv._types import ArrayLike, Pair, Padding, Shape
from gpuconv.backend import array_module
from gpuconv.geometry import (as_pair, check_extent_fits, check_float_array, check_output_size, output_hw,
                              resolve_padding)
from gpuconv.tensor import Function, Tensor, as_tensor


# ----------------------------------------------------------------------------- ReLU masks across ops
# A max-pool over a ReLU's output (the conv's fused ReLU, or relu()) zeroes, on its small pooled
# gradient, what the ReLU's backward would zero (a window's maximum is <= 0 exactly where the ReLU's
# gradient is 0 at its argmax), and its input gradient is then already masked. When the pool is the
# ReLU output's only consumer, that array reaches the ReLU's backward as it left the pool, which then
# skips its own pass over the full-size gradient. Gradients of several consumers are summed into a
# new array first, which is masked as usual.

_masked_for: dict = {}  # id(gradient array) -> (weak reference to it, id of the ReLU output it is masked for)


def _mark_masked(grad, relu_output):
    key = id(grad)
    _masked_for[key] = (weakref.ref(grad, lambda _, key=key: _masked_for.pop(key, None)), id(relu_output))


def _is_masked(grad, relu_output):
    entry = _masked_for.get(id(grad))
    return entry is not None and entry[0]() is grad and entry[1] == id(relu_output)


def _is_relu_output(t):
    """Whether Tensor t is the output of a ReLU (relu(), or a conv with its fused ReLU), with a graph."""
    return isinstance(t._ctx, ReLU) or (isinstance(t._ctx, Conv2d) and t._ctx.relu)


class Conv2d(Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, relu):
        kern = ctx.kernels = backend.kernels()
        y = kern.conv2d_forward(x, weight, bias, stride, padding, dilation, relu=relu)
        ctx.save_for_backward(x, weight, y if relu else None)
        ctx.geometry, ctx.relu = (stride, padding, dilation), relu
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, y = ctx.saved_tensors
        kern = ctx.kernels
        if y is not None and not _is_masked(dy, y):  # fused ReLU
            dy = kern.relu_backward(dy, y)
        needs_x, needs_w, needs_b = ctx.needs_input_grad
        dx = kern.conv2d_backward_input(dy, weight, x.shape, *ctx.geometry) if needs_x else None
        dw = kern.conv2d_backward_weight(dy, x, weight.shape, *ctx.geometry) if needs_w else None
        db = kern.conv2d_backward_bias(dy) if needs_b else None
        return dx, dw, db


class Pool2d(Function):
    @staticmethod
    def forward(ctx, x, mode, pool, stride, padding, relu_input=False):
        """``relu_input``: x is a ReLU's output, so a max-pool's gradient can carry the ReLU's mask (see above)."""
        kern = ctx.kernels = backend.kernels()
        y, argmax = kern.pool2d_forward(x, mode, pool, stride, padding)
        ctx.mask_input = x if relu_input and mode == "max" else None
        ctx.save_for_backward(argmax, y if ctx.mask_input is not None else None)
        ctx.params = x.shape, mode, pool, stride, padding
        return y

    @staticmethod
    def backward(ctx, dy):
        argmax, y = ctx.saved_tensors
        if ctx.mask_input is None:
            return (ctx.kernels.pool2d_backward(dy, argmax, *ctx.params),)
        dy = ctx.kernels.relu_backward(dy, y)  # windows whose maximum is <= 0 (or NaN) pass no gradient
        dx = ctx.kernels.pool2d_backward(dy, argmax, *ctx.params)
        _mark_masked(dx, ctx.mask_input)
        return (dx,)


class ReLU(Function):
    @staticmethod
    def forward(ctx, x):
        kern = ctx.kernels = backend.kernels()
        y = kern.relu_forward(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return (dy if _is_masked(dy, y) else ctx.kernels.relu_backward(dy, y),)


def conv2d(x: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, stride: Pair = 1, padding: Padding = 0,
           dilation: Pair = 1, activation: str | None = None) -> Tensor:
    """2-D cross-correlation (deep-learning convolution) of NCHW ``x`` with KCRS ``weight``.

    x: (N, C, H, W); weight: (K, C, R, S); bias: (K,) or None  ->  (N, K, OH, OW), with
    ``OH = floor((H + pad_top + pad_bottom - dilation*(R-1) - 1) / stride) + 1`` (same for OW).

    padding: an int, ``(ph, pw)``, ``((top, bottom), (left, right))``, ``'valid'`` or
    ``'same'``. ``'same'`` is Keras/TensorFlow's: output ``ceil(H / stride)``, and when
    the total padding is odd the extra row/column goes at the bottom/right (also for
    stride > 1). ``activation='relu'`` fuses a ReLU into the kernel's epilogue.
    """
    x, weight = as_tensor(x, "x"), as_tensor(weight, "weight")
    bias = None if bias is None else as_tensor(bias, "bias")
    kern = backend.kernels()
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None:
            kern.check_array(t.data, name)
    check_float_array(x.data, "x", 4, "NCHW")
    check_float_array(weight.data, "weight", 4, "KCRS")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight has dtype {weight.dtype} but x has dtype {x.dtype}; cast one of them")
    K = weight.shape[0]
    if bias is not None:
        check_float_array(bias.data, "bias", 1)
        if bias.shape != (K,) or bias.dtype != x.dtype:
            raise ValueError(f"bias must have shape ({K},) and dtype {x.dtype}, got {bias.shape} {bias.dtype}")
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    stride, pads, dilation, out_shape = _conv_geometry(x.shape, weight.shape, stride, padding, dilation)
    check_output_size(out_shape, x.dtype, "the conv2d output", _cause(padding, "x"))
    return Conv2d.apply(x, weight, bias, stride=stride, padding=pads, dilation=dilation,
                        relu=activation == "relu")


def _conv_geometry(x_shape, weight_shape, stride, padding, dilation):
    """Checked, normalized (stride, padding, dilation) and the output shape, for conv2d and its shape helper."""
    N, C, H, W = x_shape
    K, Cw, R, S = weight_shape
    if Cw != C:
        raise ValueError(f"weight has {Cw} input channels but x has {C} (x is NCHW {tuple(x_shape)}, "
                         f"weight is KCRS {tuple(weight_shape)})")
    if R < 1 or S < 1:
        raise ValueError(f"weight must have a kernel of at least 1x1, got KCRS shape {tuple(weight_shape)}")
    stride, dilation = as_pair(stride, "stride"), as_pair(dilation, "dilation")
    extent = (dilation[0] * (R - 1) + 1, dilation[1] * (S - 1) + 1)
    pads = resolve_padding(padding, (H, W), extent, stride)
    check_extent_fits((H, W), pads, extent, f"kernel {R}x{S}")
    return stride, pads, dilation, (N, K) + output_hw((H, W), pads, (R, S), stride, dilation)


def _cause(padding, default):
    """The argument to name when an output is too large: an explicit padding, else ``default``."""
    return f"padding {padding!r}" if not isinstance(padding, str) and padding != 0 else default


def max_pool2d(x: ArrayLike, pool_size: Pair = 2, strides: Pair | None = None, padding: str = "valid") -> Tensor:
    """Max pooling of NCHW ``x`` -> (N, C, OH, OW), with Keras's arguments.

    ``strides`` defaults to ``pool_size``; windows may overlap (stride < pool).
    ``padding``: 'valid' (OH = floor((H - pool) / stride) + 1) or 'same'
    (OH = ceil(H / stride), padded with -inf, so padding is never chosen).
    Ties: the gradient goes to the first maximum in row-major window order.
    """
    return _pool2d(x, "max", pool_size, strides, padding)


def avg_pool2d(x: ArrayLike, pool_size: Pair = 2, strides: Pair | None = None, padding: str = "valid") -> Tensor:
    """Average pooling of NCHW ``x`` -> (N, C, OH, OW); arguments as ``max_pool2d``.

    With 'same' each output averages only the real (unpadded) elements, as Keras does.
    """
    return _pool2d(x, "avg", pool_size, strides, padding)


def _pool2d(x, mode, pool_size, strides, padding):
    x = as_tensor(x, "x")
    backend.kernels().check_array(x.data, "x")
    check_float_array(x.data, "x", 4, "NCHW")
    pool, stride, pads, _ = _pool_geometry(x.shape, pool_size, strides, padding)
    return Pool2d.apply(x, mode=mode, pool=pool, stride=stride, padding=pads, relu_input=_is_relu_output(x))


def _pool_geometry(x_shape, pool_size, strides, padding):
    """Checked, normalized (pool, stride, padding) and the output shape, for pooling and its shape helper."""
    pool = as_pair(pool_size, "pool_size")
    stride = pool if strides is None else as_pair(strides, "strides")
    H, W = x_shape[2:]
    pads = resolve_padding(padding, (H, W), pool, stride, allow_explicit=False)
    check_extent_fits((H, W), pads, pool, f"pool window {pool[0]}x{pool[1]}")
    return pool, stride, pads, tuple(x_shape[:2]) + output_hw((H, W), pads, pool, stride)


def relu(x: ArrayLike) -> Tensor:
    """max(x, 0) elementwise, any shape; the gradient is 0 where x <= 0."""
    x = as_tensor(x, "x")
    backend.kernels().check_array(x.data, "x")
    check_float_array(x.data, "x")
    return ReLU.apply(x)


def conv2d_output_shape(x_shape: Shape, weight_shape: Shape, stride: Pair = 1, padding: Padding = 0,
                        dilation: Pair = 1) -> Shape:
    """Shape ``conv2d`` returns for these shapes and arguments, without computing it; the same errors."""
    return _conv_geometry(tuple(x_shape), tuple(weight_shape), stride, padding, dilation)[3]


def pool2d_output_shape(x_shape: Shape, pool_size: Pair = 2, strides: Pair | None = None,
                        padding: str = "valid") -> Shape:
    """Shape ``max_pool2d``/``avg_pool2d`` return for ``x_shape`` (NCHW), without computing it; the same errors."""
    return _pool_geometry(tuple(x_shape), pool_size, strides, padding)[3]


# ----------------------------------------------------------------------------- generic ops
# Written once over the array's own module (NumPy, or CuPy with a GPU backend): no per-backend kernels.

class Softmax(Function):
    @staticmethod
    def forward(ctx, x, axis):
        xp = array_module(x)
        e = xp.exp(x - x.max(axis=axis, keepdims=True))  # shifted: never overflows
        y = e / e.sum(axis=axis, keepdims=True)
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        return (y * (dy - (dy * y).sum(axis=ctx.axis, keepdims=True)),)


def softmax(x: ArrayLike, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along ``axis``, computed from x - max(x) so it never overflows."""
    return Softmax.apply(as_tensor(x), axis=axis)


class BatchNorm(Function):
    """Training-mode batch normalization over every axis but ``axis``."""

    @staticmethod
    def forward(ctx, x, gamma, beta, mean, var, reduce, epsilon, count, group_sum):
        """``mean`` and ``var`` are the batch statistics over ``reduce`` (kept dims) of ``count`` elements per
        channel, computed by the caller; ``group_sum`` sums per-channel arrays over a data-parallel group
        (None: x is the whole batch)."""
        xp = array_module(x)
        inv_std = 1.0 / xp.sqrt(var + epsilon)
        x_hat = (x - mean) * inv_std
        shape = mean.shape
        ctx.save_for_backward(x_hat, inv_std, gamma.reshape(shape))
        ctx.reduce, ctx.count, ctx.group_sum = reduce, count, group_sum
        return x_hat * gamma.reshape(shape) + beta.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        x_hat, inv_std, gamma = ctx.saved_tensors
        reduce = ctx.reduce
        dgamma = (dy * x_hat).sum(axis=reduce)
        dbeta = dy.sum(axis=reduce)
        count, total = max(ctx.count, 1), ctx.group_sum or (lambda a: a)  # 0: an empty batch, empty dx
        dx_hat = dy * gamma
        dx = inv_std / count * (count * dx_hat - total(dx_hat.sum(axis=reduce, keepdims=True))
                                - x_hat * total((dx_hat * x_hat).sum(axis=reduce, keepdims=True)))
        return dx, dgamma, dbeta


def batch_norm(x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, axis: int = 1, epsilon: float = 1e-3,
               group_sum=None):
    """(x - batch mean) / sqrt(batch var + epsilon) * gamma + beta, statistics over all axes but ``axis``.

    Returns the Tensor and the batch (mean, var) per channel, for moving averages. ``group_sum`` (an
    allreduce) makes the batch the union of every rank's x: statistics and gradients use its sums.
    """
    x = as_tensor(x)
    check_float_array(x.data, "x")
    if not 0 <= axis < x.ndim:
        raise ValueError(f"axis must be in [0, {x.ndim}) for x of shape {x.shape}, got {axis}")
    reduce = tuple(a for a in range(x.ndim) if a != axis)
    count = x.data.size // max(x.shape[axis], 1)
    if group_sum is None and count == 0:  # an empty batch: nothing to normalize, no statistics (not NaN)
        xp = array_module(x.data)
        shape = tuple(1 if a in reduce else n for a, n in enumerate(x.shape))
        mean, var = xp.zeros(shape, x.dtype), xp.ones(shape, x.dtype)
    elif group_sum is None:
        mean, var = x.data.mean(axis=reduce, keepdims=True), x.data.var(axis=reduce, keepdims=True)
    else:  # two passes, as var() does: the group's mean, then the mean squared deviation from it
        count = int(group_sum(array_module(x.data).asarray([count], dtype=x.dtype))[0])
        mean = group_sum(x.data.sum(axis=reduce, keepdims=True)) / count
        var = group_sum(((x.data - mean) ** 2).sum(axis=reduce, keepdims=True)) / count
    out = BatchNorm.apply(x, as_tensor(gamma), as_tensor(beta), mean=mean, var=var, reduce=reduce,
                          epsilon=epsilon, count=count, group_sum=group_sum)
    return out, (mean.reshape(-1), var.reshape(-1))


def dropout(x: ArrayLike, rate: float, training: bool, generator=None) -> Tensor:
    """Zero each element with probability ``rate`` and scale the rest by 1/(1-rate); identity unless training."""
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    x = as_tensor(x)
    if not training or rate == 0:
        return x
    from gpuconv import rng
    xp = array_module(x.data)
    keep = (generator or rng.generator()).random(x.shape) >= rate
    return x * xp.asarray(keep.astype(x.dtype) / x.dtype.type(1 - rate))
