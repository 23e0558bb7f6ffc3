"""Keras-style layers on the gpuconv autograd.

Shapes exclude the batch axis, as in Keras. Spatial layers take ``data_format``: 'channels_first'
(NCHW, the kernels' native layout) or 'channels_last' (NHWC); left out, it is
``gpuconv.config.image_data_format()`` when the layer is constructed. Inside a ``Sequential`` model,
channels-last images are transposed once at the first spatial layer and once back before a layer
that needs NHWC (Flatten, Dense); a spatial layer called on its own transposes around its kernel.
Every layer takes Keras's ``input_shape=`` (used by the first layer of a model; ``input_dim=n`` is
``input_shape=(n,)``) and ``name=``. Weights are created on first call, from the input's shape,
with ``gpuconv.rng``'s generator.
"""
from __future__ import annotations

import math
import re

import numpy as np

from gpuconv import backend, config, distributed, rng
from gpuconv._types import Padding, Pair, Shape
from gpuconv import functional as F
from gpuconv.geometry import as_count, as_pair, check_padding_form
from gpuconv.tensor import Tensor, as_tensor

ACTIVATIONS = {None: None, "relu": F.relu, "softmax": lambda x: F.softmax(x, axis=1 if x.ndim == 4 else -1)}


INITIALIZERS = ("glorot_uniform", "he_normal", "zeros", "ones")


def _activation(name):
    if name == "linear":  # Keras's name for none
        return None
    if not (name is None or isinstance(name, str)) or name not in ACTIVATIONS:
        raise ValueError(f"activation must be None, 'linear', 'relu' or 'softmax', got {name!r}")
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


def _initial(name, shape, fan_in, fan_out):
    """Initial weights on the active backend's device, in ``config.floatx()``."""
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
    return Tensor(backend.to_device(values.astype(config.floatx())), requires_grad=True)


def _real_input(x):
    """The input as a float Tensor: integers and booleans become float32, as Keras casts them."""
    x = as_tensor(x, "x")
    if x.dtype.kind in "biu":
        return Tensor(x.data.astype(np.float32))
    if x.dtype.kind != "f":
        raise TypeError(f"x has dtype {x.dtype}; layers take real numbers (float32 or float64)")
    return x


def _shape(value, argument):
    """A sample shape (batch axis excluded) as a tuple of positive ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not value or \
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v > 0 for v in value):
        raise ValueError(f"{argument} must be a tuple of positive ints without the batch axis, e.g. (28, 28, 1), "
                         f"got {value!r}")
    return tuple(int(v) for v in value)


def _tuples(value):
    """JSON's lists back to the tuples the constructors take (nested, e.g. explicit padding)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class Layer:
    """Base layer: ``weights`` are trained, ``state`` arrays (moving statistics) are saved but not trained.

    ``config_keys`` name the constructor arguments ``get_config`` returns; ``from_config`` rebuilds the layer.
    """

    activation: str | None = None
    fused_activation: str | None = None  # an activation this layer's kernel applies itself (forward's fuse_activation)
    config_keys: tuple = ()

    def __init__(self, input_shape: Shape | int | None = None, input_dim: int | None = None,
                 name: str | None = None) -> None:
        self.weights: dict[str, Tensor] = {}
        self.state: dict = {}  # arrays of the backend's module
        self.built = False
        if input_dim is not None:
            input_shape = (input_dim,)
        self.input_shape = None if input_shape is None else _shape(input_shape, "input_shape")
        if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name)):
            raise ValueError(f"name must be a non-empty string of letters, digits, '_', '.' or '-', got {name!r}")
        self.name, self.given_name = name, name is not None

    def get_config(self):
        """The constructor arguments as JSON values (Keras's ``get_config``)."""
        config_ = {key: getattr(self, key) for key in self.config_keys}
        config_["name"] = self.name
        return config_

    @classmethod
    def from_config(cls, config_):
        return cls(**{key: _tuples(value) for key, value in config_.items()})

    def runs_on_nchw(self, ndim):
        """Whether, inside a channels-last model, this layer can take the NCHW form of its NHWC input
        (``call_nchw``), so the model need not transpose back. Element-wise layers can."""
        return False

    def call_nchw(self, x, training=False, activate=True):
        return self(x, training, activate)

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

    def __init__(self, data_format: str | None = None, **common) -> None:
        super().__init__(**common)
        self.data_format = config.image_data_format() if data_format is None else config.check_data_format(data_format)

    def __call__(self, x, training=False, activate=True):
        x = _real_input(x)
        if x.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects 4-D input ({self._layout()}), got shape {x.shape}")
        if self.data_format == "channels_last":
            y = super().__call__(x.transpose(0, 3, 1, 2), training, activate)
            return y.transpose(0, 2, 3, 1)
        return super().__call__(x, training, activate)

    def runs_on_nchw(self, ndim):
        return ndim == 4 and self.data_format == "channels_last"

    def call_nchw(self, x, training=False, activate=True):
        return Layer.__call__(self, x, training, activate)  # no transposes: the model keeps NCHW

    def _layout(self):
        return "NCHW" if self.data_format == "channels_first" else "NHWC"

    def layout_hint(self, input_shape):
        """A sentence for errors when ``input_shape`` looks like the other layout ('' when it does not)."""
        if len(input_shape) != 3:
            return ""
        a, b, c = input_shape
        if self.data_format == "channels_first" and c in (1, 3, 4) and a > 4 and b > 4:
            return (f" The shape {tuple(input_shape)} looks channels-last (height, width, channels) but this layer "
                    f"is channels_first: pass data_format='channels_last' to the spatial layers, or call "
                    f"gpuconv.config.set_image_data_format('channels_last') before building them, or transpose "
                    f"the images to (channels, height, width).")
        if self.data_format == "channels_last" and a in (1, 3, 4) and b > 4 and c > 4:
            return (f" The shape {tuple(input_shape)} looks channels-first (channels, height, width) but this layer "
                    f"is channels_last: pass data_format='channels_first' to the spatial layers, or call "
                    f"gpuconv.config.set_image_data_format('channels_first') before building them, or transpose "
                    f"the images to (height, width, channels).")
        return ""

    def output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} takes images of shape "
                             f"{'(channels, height, width)' if self.data_format == 'channels_first' else '(height, width, channels)'}"
                             f" ({self.data_format}), got sample shape {tuple(input_shape)}")
        if self.data_format == "channels_last":
            h, w, c = input_shape
            c, h, w = self._nchw_output_shape((c, h, w))
            return h, w, c
        return self._nchw_output_shape(tuple(input_shape))

    def _nchw_output_shape(self, chw):
        raise NotImplementedError


class Conv2D(_Spatial):
    """2-D convolution: ``filters`` output channels, ``kernel_size`` window; parameters (kh*kw*C + 1) * filters."""

    config_keys = ("filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "activation",
                   "use_bias", "kernel_initializer", "bias_initializer")

    def __init__(self, filters: int, kernel_size: Pair, strides: Pair = 1, padding: Padding = "valid",
                 data_format: str | None = None, dilation_rate: Pair = 1, activation: str | None = None,
                 use_bias: bool = True, kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 **common) -> None:
        super().__init__(data_format, **common)
        if isinstance(padding, str):
            padding = padding.lower()  # Keras and TensorFlow also write 'SAME'
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

    fused_activation: str | None = "relu"  # the conv kernel's epilogue applies it

    def forward(self, x, training, fuse_activation=False):
        return F.conv2d(x, self.weights["kernel"], self.weights.get("bias"), stride=self.strides,
                        padding=self.padding, dilation=self.dilation_rate,
                        activation=self.activation if fuse_activation else None)

    def _nchw_output_shape(self, chw):
        c, h, w = chw
        kernel = (self.filters, c) + self.kernel_size
        return F.conv2d_output_shape((1, c, h, w), kernel, self.strides, self.padding, self.dilation_rate)[1:]


class _Pool(_Spatial):
    mode: str | None = None
    config_keys = ("pool_size", "strides", "padding", "data_format")

    def __init__(self, pool_size: Pair = 2, strides: Pair | None = None, padding: str = "valid",
                 data_format: str | None = None, **common) -> None:
        super().__init__(data_format, **common)
        if isinstance(padding, str):
            padding = padding.lower()
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


class Convolution2D(Conv2D):
    """Keras 1's ``Convolution2D(nb_filter, nb_row, nb_col, border_mode=, subsample=, dim_ordering=)``;
    ``Convolution2D(filters, kernel_size, ...)`` (Keras 2's alias of Conv2D) works too."""

    def __init__(self, nb_filter: int, nb_row: Pair | None = None, nb_col: int | None = None,
                 border_mode: str | None = None, subsample: Pair | None = None, dim_ordering: str | None = None,
                 **arguments) -> None:
        if nb_row is not None and nb_col is not None:  # Keras 1: two ints are the kernel's rows and columns
            arguments["kernel_size"] = (nb_row, nb_col)
        elif nb_row is not None:
            arguments["kernel_size"] = nb_row
        if border_mode is not None:
            arguments["padding"] = border_mode
        if subsample is not None:
            arguments["strides"] = subsample
        if dim_ordering not in (None, "default"):
            orderings = {"th": "channels_first", "tf": "channels_last"}
            if dim_ordering not in orderings:
                raise ValueError(f"dim_ordering must be 'th' (channels first) or 'tf' (channels last), "
                                 f"got {dim_ordering!r}")
            arguments["data_format"] = orderings[dim_ordering]
        super().__init__(nb_filter, **arguments)


class Activation(Layer):
    """Applies ``activation`` ('relu' or 'softmax', the channels axis on NCHW images) to its input."""
    config_keys = ("activation",)

    def __init__(self, activation: str | None, **common) -> None:
        super().__init__(**common)
        self.activation = _activation(activation)

    def forward(self, x, training):
        return x

    def runs_on_nchw(self, ndim):
        return self.activation in (None, "relu")


class ReLU(Layer):
    def forward(self, x, training):
        return F.relu(x)

    def runs_on_nchw(self, ndim):
        return True


class InputLayer(Layer):
    """Keras's ``Input(shape=...)`` as the first entry of a ``Sequential``: it only sets the input shape."""
    config_keys = ("input_shape",)

    def __init__(self, input_shape: Shape | None = None, shape: Shape | None = None, **common) -> None:
        super().__init__(input_shape=shape if shape is not None else input_shape, **common)
        if self.input_shape is None:
            raise ValueError("InputLayer needs shape (without the batch axis), e.g. Input(shape=(28, 28, 1))")

    def forward(self, x, training):
        return x


def Input(shape: Shape, name: str | None = None) -> InputLayer:
    """Keras's ``keras.Input(shape=...)``, for the first entry of ``Sequential([...])``."""
    return InputLayer(shape=shape, name=name)


class Flatten(Layer):
    """(batch, ...) -> (batch, features), in the order of the input's axes (C, H, W for NCHW; H, W, C for NHWC)."""

    def forward(self, x, training):
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # not -1: an empty batch has no size to infer

    def output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)


class Dense(Layer):
    """y = x @ kernel + bias on (batch, features); parameters (features + 1) * units."""

    config_keys = ("units", "activation", "use_bias", "kernel_initializer", "bias_initializer")

    def __init__(self, units: int, activation: str | None = None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros", **common) -> None:
        super().__init__(**common)
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

    config_keys = ("rate",)

    def __init__(self, rate: float, **common) -> None:
        super().__init__(**common)
        self.rate = _fraction(rate, "rate")

    def forward(self, x, training):
        return F.dropout(x, self.rate, training)

    def runs_on_nchw(self, ndim):
        return True


class BatchNormalization(Layer):
    """Normalizes over every axis but ``axis``: by default the channels axis of the image data format
    (1 for NCHW, -1 for NHWC), which for dense (batch, features) input is the features either way.

    Training uses the batch statistics and updates moving averages
    (``moving = momentum * moving + (1 - momentum) * batch``); inference uses the moving averages.
    Parameters: gamma and beta (trained), moving mean and variance (not trained).
    """

    config_keys = ("axis", "momentum", "epsilon")

    def __init__(self, axis: int | None = None, momentum: float = 0.99, epsilon: float = 1e-3, **common) -> None:
        super().__init__(**common)
        if axis is None:
            axis = 1 if config.image_data_format() == "channels_first" else -1
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
        self.state["moving_mean"] = xp.zeros(channels, config.floatx())
        self.state["moving_variance"] = xp.ones(channels, config.floatx())
        self.built = True

    def runs_on_nchw(self, ndim):
        return ndim == 4 and self._axis_of(ndim) == 3  # NHWC channels are NCHW's axis 1

    def call_nchw(self, x, training=False, activate=True):
        return self.forward(_real_input(x), training, axis=1)

    def forward(self, x, training, axis=None):
        gamma, beta = self.weights["gamma"], self.weights["beta"]
        axis = self._axis_of(x.ndim) if axis is None else axis
        if training:
            # in a data-parallel fit, the statistics of the global batch (every rank's shard)
            y, (mean, var) = F.batch_norm(x, gamma, beta, axis, self.epsilon,
                                          group_sum=distributed.cross_replica_sum())
            for key, batch in (("moving_mean", mean), ("moving_variance", var)) if x.data.size else ():
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


LAYERS = {cls.__name__: cls for cls in (Conv2D, MaxPool2D, AveragePooling2D, Activation, ReLU, Flatten, Dense,
                                          Dropout, BatchNormalization)}
LAYERS.update(Convolution2D=Conv2D, MaxPooling2D=MaxPool2D, AvgPool2D=AveragePooling2D)  # aliases save as themselves
