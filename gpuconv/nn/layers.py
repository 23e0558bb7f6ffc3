"""Keras-style layers on the gpuconv autograd.

Shapes exclude the batch axis, as in Keras. Images are NCHW (``data_format='channels_first'``,
the kernels' native layout); ``'channels_last'`` (NHWC) is accepted by the spatial layers at the
cost of two transposing copies per layer (NHWC -> NCHW before the kernel, and back after).
Weights are created on first call, from the input's shape, with ``gpuconv.rng``'s generator.
"""
import math

import numpy as np

from gpuconv import backend, rng
from gpuconv import functional as F
from gpuconv.geometry import as_count, as_pair, check_padding_form
from gpuconv.tensor import Tensor, as_tensor

ACTIVATIONS = {None: None, "relu": F.relu, "softmax": lambda x: F.softmax(x, axis=1 if x.ndim == 4 else -1)}


INITIALIZERS = ("glorot_uniform", "he_normal", "zeros", "ones")


def _activation(name):
    if not (name is None or isinstance(name, str)) or name not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'relu' or 'softmax', got {name!r}")
    return name


def _initializer(name, argument):
    if not isinstance(name, str) or name not in INITIALIZERS:
        raise ValueError(f"{argument} must be one of {', '.join(map(repr, INITIALIZERS))}, got {name!r}")
    return name


def _flag(value, argument):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{argument} must be True or False, got {value!r}")
    return bool(value)


def _fraction(value, argument, low_open=False):
    """A real number in [0, 1) ((0, 1) with ``low_open``), never a bool."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{argument} must be a number in [0, 1), got {value!r}")
    if not (0 < value < 1 if low_open else 0 <= value < 1):
        raise ValueError(f"{argument} must be in {'(0, 1)' if low_open else '[0, 1)'}, got {value!r}")
    return float(value)


def _initial(name, shape, fan_in, fan_out, dtype=np.float32):
    """Initial weights on the active backend's device."""
    generator = rng.generator()
    if name == "glorot_uniform":
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        values = generator.uniform(-limit, limit, shape)
    elif name == "he_normal":
        values = generator.normal(0.0, math.sqrt(2.0 / fan_in), shape)
    elif name == "zeros":
        values = np.zeros(shape)
    elif name == "ones":
        values = np.ones(shape)
    else:
        raise ValueError(f"initializer must be 'glorot_uniform', 'he_normal', 'zeros' or 'ones', got {name!r}")
    return Tensor(backend.to_device(values.astype(dtype)), requires_grad=True)


def _real_input(x):
    """The input as a float Tensor: integers and booleans become float32, as Keras casts them."""
    x = as_tensor(x, "x")
    if x.dtype.kind in "biu":
        return Tensor(x.data.astype(np.float32))
    if x.dtype.kind != "f":
        raise TypeError(f"x has dtype {x.dtype}; layers take real numbers (float32 or float64)")
    return x


class Layer:
    """Base layer: ``weights`` are trained, ``state`` arrays (moving statistics) are saved but not trained."""

    activation = None
    fused_activation = None  # an activation this layer's kernel applies itself (forward's fuse_activation)

    def __init__(self):
        self.weights, self.state = {}, {}
        self.built = False
        self.name = None

    def build(self, input_shape):
        self.built = True

    def output_shape(self, input_shape):
        return input_shape

    def __call__(self, x, training=False, activate=True):
        x = _real_input(x)
        if not self.built:
            self.build(x.shape[1:])
        if activate and self.activation is not None and self.activation == self.fused_activation:
            return self.forward(x, training, fuse_activation=True)
        y = self.forward(x, training)
        if activate and self.activation is not None:
            y = ACTIVATIONS[self.activation](y)
        return y

    def forward(self, x, training):
        raise NotImplementedError

    def count_params(self):
        trainable = sum(w.size for w in self.weights.values())
        return trainable, sum(int(s.size) for s in self.state.values())

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"


class _Spatial(Layer):
    """A layer over NCHW images that also accepts NHWC (``channels_last``) by transposing around the kernel."""

    def __init__(self, data_format):
        super().__init__()
        if data_format not in ("channels_first", "channels_last"):
            raise ValueError(f"data_format must be 'channels_first' or 'channels_last', got {data_format!r}")
        self.data_format = data_format

    def __call__(self, x, training=False, activate=True):
        x = _real_input(x)
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects 4-D input ({self._layout()}), got shape {x.shape}")
        if self.data_format == "channels_last":
            y = super().__call__(x.transpose(0, 3, 1, 2), training, activate)
            return y.transpose(0, 2, 3, 1)
        return super().__call__(x, training, activate)

    def _layout(self):
        return "NCHW" if self.data_format == "channels_first" else "NHWC"

    def output_shape(self, input_shape):
        if self.data_format == "channels_last":
            h, w, c = input_shape
            c, h, w = self._nchw_output_shape((c, h, w))
            return h, w, c
        return self._nchw_output_shape(tuple(input_shape))

    def _nchw_output_shape(self, chw):
        raise NotImplementedError


class Conv2D(_Spatial):
    """2-D convolution: ``filters`` output channels, ``kernel_size`` window; parameters (kh*kw*C + 1) * filters."""

    def __init__(self, filters, kernel_size, strides=1, padding="valid", data_format="channels_first",
                 dilation_rate=1, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros"):
        super().__init__(data_format)
        self.filters = as_count(filters, "filters")
        self.kernel_size = as_pair(kernel_size, "kernel_size")
        self.strides, self.dilation_rate = as_pair(strides, "strides"), as_pair(dilation_rate, "dilation_rate")
        check_padding_form(padding)
        self.padding, self.activation = padding, _activation(activation)
        self.use_bias = _flag(use_bias, "use_bias")
        self.kernel_initializer = _initializer(kernel_initializer, "kernel_initializer")
        self.bias_initializer = _initializer(bias_initializer, "bias_initializer")

    def build(self, input_shape):  # input_shape is (C, H, W)
        channels = input_shape[0]
        kh, kw = self.kernel_size
        self.weights["kernel"] = _initial(self.kernel_initializer, (self.filters, channels, kh, kw),
                                          channels * kh * kw, self.filters * kh * kw)
        if self.use_bias:
            self.weights["bias"] = _initial(self.bias_initializer, (self.filters,), 1, 1)
        self.built = True

    fused_activation = "relu"  # the conv kernel's epilogue applies it

    def forward(self, x, training, fuse_activation=False):
        return F.conv2d(x, self.weights["kernel"], self.weights.get("bias"), stride=self.strides,
                        padding=self.padding, dilation=self.dilation_rate,
                        activation=self.activation if fuse_activation else None)

    def _nchw_output_shape(self, chw):
        c, h, w = chw
        kernel = (self.filters, c) + self.kernel_size
        return F.conv2d_output_shape((1, c, h, w), kernel, self.strides, self.padding, self.dilation_rate)[1:]


class _Pool(_Spatial):
    mode = None

    def __init__(self, pool_size=2, strides=None, padding="valid", data_format="channels_first"):
        super().__init__(data_format)
        self.pool_size = as_pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else as_pair(strides, "strides")
        check_padding_form(padding, allow_explicit=False)
        self.padding = padding

    def forward(self, x, training):
        pool = F.max_pool2d if self.mode == "max" else F.avg_pool2d
        return pool(x, self.pool_size, self.strides, self.padding)

    def _nchw_output_shape(self, chw):
        return F.pool2d_output_shape((1,) + tuple(chw), self.pool_size, self.strides, self.padding)[1:]


class MaxPool2D(_Pool):
    """Max pooling; ``strides`` defaults to ``pool_size``; 'same' pads with -inf."""
    mode = "max"


class AveragePooling2D(_Pool):
    """Average pooling; with 'same' it averages only the real (unpadded) elements."""
    mode = "avg"


MaxPooling2D, AvgPool2D = MaxPool2D, AveragePooling2D


class ReLU(Layer):
    def forward(self, x, training):
        return F.relu(x)


class Flatten(Layer):
    def forward(self, x, training):
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # not -1: an empty batch has no size to infer

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)


class Dense(Layer):
    """y = x @ kernel + bias on (batch, features); parameters (features + 1) * units."""

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros"):
        super().__init__()
        self.units, self.activation = as_count(units, "units"), _activation(activation)
        self.use_bias = _flag(use_bias, "use_bias")
        self.kernel_initializer = _initializer(kernel_initializer, "kernel_initializer")
        self.bias_initializer = _initializer(bias_initializer, "bias_initializer")

    def build(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Dense expects (batch, features) input, got feature shape {tuple(input_shape)}; "
                             f"add a Flatten layer first")
        self.weights["kernel"] = _initial(self.kernel_initializer, (input_shape[0], self.units),
                                          input_shape[0], self.units)
        if self.use_bias:
            self.weights["bias"] = _initial(self.bias_initializer, (self.units,), 1, 1)
        self.built = True

    def forward(self, x, training):
        y = x @ self.weights["kernel"]
        return y + self.weights["bias"] if self.use_bias else y

    def output_shape(self, input_shape):
        return (self.units,)


class Dropout(Layer):
    """Zeroes a fraction ``rate`` of the inputs in training (scaling the rest); identity at inference."""

    def __init__(self, rate):
        super().__init__()
        self.rate = _fraction(rate, "rate")

    def forward(self, x, training):
        return F.dropout(x, self.rate, training)


class BatchNormalization(Layer):
    """Normalizes over every axis but ``axis`` (1: channels of NCHW images, features of dense input).

    Training uses the batch statistics and updates moving averages
    (``moving = momentum * moving + (1 - momentum) * batch``); inference uses the moving averages.
    Parameters: gamma and beta (trained), moving mean and variance (not trained).
    """

    def __init__(self, axis=1, momentum=0.99, epsilon=1e-3):
        super().__init__()
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise TypeError(f"axis must be an int, got {axis!r}")
        if axis == 0:
            raise ValueError("axis must not be 0, the batch axis: BatchNormalization normalizes over the batch; "
                             "use axis=1 for NCHW channels or dense features, -1 for the last axis")
        self.axis = int(axis)
        self.momentum = _fraction(momentum, "momentum")
        if isinstance(epsilon, (bool, np.bool_)) or not isinstance(epsilon, (int, float, np.floating)) or not epsilon > 0:
            raise ValueError(f"epsilon must be a positive number, got {epsilon!r}")
        self.epsilon = float(epsilon)

    def _axis_of(self, ndim):
        """The normalized axis for input of ``ndim`` dimensions (batch included); a clear error when out of range."""
        if not (1 <= self.axis < ndim or -ndim < self.axis < 0):
            raise ValueError(f"axis {self.axis} is out of range for input of {ndim} dimensions (batch included): "
                             f"use 1 .. {ndim - 1} or -1 .. {1 - ndim}")
        return self.axis % ndim

    def build(self, input_shape):
        channels = input_shape[self._axis_of(len(input_shape) + 1) - 1]
        self.weights["gamma"] = _initial("ones", (channels,), 1, 1)
        self.weights["beta"] = _initial("zeros", (channels,), 1, 1)
        xp = backend.xp()
        self.state["moving_mean"] = xp.zeros(channels, np.float32)
        self.state["moving_variance"] = xp.ones(channels, np.float32)
        self.built = True

    def forward(self, x, training):
        gamma, beta = self.weights["gamma"], self.weights["beta"]
        axis = self._axis_of(x.ndim)
        if training:
            y, (mean, var) = F.batch_norm(x, gamma, beta, axis, self.epsilon)
            for key, batch in (("moving_mean", mean), ("moving_variance", var)):
                moving = self.state[key]
                moving *= self.momentum
                moving += (1 - self.momentum) * batch.astype(moving.dtype)
            return y
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        xp = backend.array_module(x.data)
        inv_std = Tensor((1.0 / xp.sqrt(self.state["moving_variance"] + self.epsilon)).astype(x.dtype))
        scale = gamma * inv_std  # Tensor ops, so gradients still flow in inference mode
        shift = beta - Tensor(self.state["moving_mean"].astype(x.dtype)) * scale
        return x * scale.reshape(shape) + shift.reshape(shape)
