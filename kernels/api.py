"""The kernel contract: the eight kernels every backend provides, with their layouts and dtypes.

A backend is a module (``gpuconv.kernels.<backend>.backend``) with ``name``,
``xp`` (its array module: NumPy or CuPy), ``check_array(array, name)`` (refuses
arrays on the wrong device), optionally ``session()`` (a context for many ops in
a row), and the eight functions below, with these parameters first and in this
order. A backend may add keyword parameters with defaults after them (tiles,
workspace sizes).

Conventions for every kernel:

* activations are NCHW, conv weights KCRS, all float32 or float64 (one dtype per
  call); outputs have the inputs' dtype; max-pool's argmax is int32, or on the
  CPU uint8 for windows of at most 256 taps (a backend's pool2d_backward takes
  the argmax its own pool2d_forward gave);
* arguments arrive checked and normalized by ``gpuconv.geometry``: ``stride``,
  ``dilation`` and ``pool`` are ``(h, w)`` pairs of positive ints, ``padding`` is
  ``((top, bottom), (left, right))`` of non-negative ints;
* inputs may be non-contiguous; outputs are new C-contiguous arrays;
* results are deterministic: the same inputs give the same bits on every run.

``gpuconv.backend`` is the one place that dispatches to these; ``missing(module)``
is how it (and the tests) check a backend against this contract.
"""
import inspect


def conv2d_forward(x, weight, bias, stride, padding, dilation, relu=False):
    """y = relu?(conv2d(x, weight) + bias): x (N, C, H, W), weight (K, C, R, S), bias (K,) or None
    -> y (N, K, OH, OW), ``OH = floor((H + pad_top + pad_bottom - dilation*(R-1) - 1) / stride) + 1``."""


def conv2d_backward_input(dy, weight, x_shape, stride, padding, dilation):
    """dx of conv2d: dy (N, K, OH, OW), weight (K, C, R, S) -> dx of shape ``x_shape`` (N, C, H, W)."""


def conv2d_backward_weight(dy, x, weight_shape, stride, padding, dilation):
    """dweight of conv2d: dy (N, K, OH, OW), x (N, C, H, W) -> dweight of shape ``weight_shape`` (K, C, R, S)."""


def conv2d_backward_bias(dy):
    """dbias of conv2d: dy (N, K, OH, OW) -> (K,), summed over N, OH, OW."""


def pool2d_forward(x, mode, pool, stride, padding):
    """``mode`` 'max' or 'avg' pooling of x (N, C, H, W) -> (y (N, C, OH, OW), argmax or None).

    Max: argmax (integer, y's shape) is the row-major index ``r*PW + s`` of the first
    maximum in its window; a NaN wins. Avg: mean over the real (unpadded) elements.
    """


def pool2d_backward(dy, argmax, x_shape, mode, pool, stride, padding):
    """Gradient of pool2d_forward: dy (N, C, OH, OW) and its argmax (None for 'avg') -> dx of shape ``x_shape``."""


def relu_forward(x):
    """y = max(x, 0) elementwise, any shape; NaN propagates."""


def relu_backward(dy, y):
    """dx = dy where the forward output y > 0, else 0; any shape."""


CONTRACT = (conv2d_forward, conv2d_backward_input, conv2d_backward_weight, conv2d_backward_bias,
            pool2d_forward, pool2d_backward, relu_forward, relu_backward)
KERNELS = tuple(f.__name__ for f in CONTRACT)
ATTRIBUTES = ("name", "xp", "check_array")


def missing(module):
    """What ``module`` lacks or gets wrong against this contract, as readable lines (empty when it complies)."""
    problems = [f"no attribute {a!r}" for a in ATTRIBUTES if not hasattr(module, a)]
    for spec in CONTRACT:
        function = getattr(module, spec.__name__, None)
        if not callable(function):
            problems.append(f"no kernel {spec.__name__}")
            continue
        expected = list(inspect.signature(spec).parameters.values())
        actual = list(inspect.signature(function).parameters.values())
        names = [p.name for p in actual[:len(expected)]]
        extra_required = [p.name for p in actual[len(expected):] if p.default is inspect.Parameter.empty]
        if names != [p.name for p in expected] or extra_required:
            problems.append(f"{spec.__name__}{inspect.signature(function)} does not start with "
                            f"{spec.__name__}{inspect.signature(spec)} (or adds required parameters)")
    return problems
