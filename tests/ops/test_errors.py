"""Bad input gets a clear ValueError/TypeError that names the argument."""
import numpy as np
import pytest

import gpuconv.functional as F

X = np.zeros((2, 3, 8, 8), np.float32)
W = np.zeros((4, 3, 3, 3), np.float32)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(x=np.zeros((3, 8, 8), np.float32)), ValueError, r"x must be a 4-D NCHW array, got shape \(3, 8, 8\)"),
    (dict(weight=np.zeros((4, 3, 3), np.float32)), ValueError, r"weight must be a 4-D KCRS array"),
    (dict(weight=np.zeros((4, 2, 3, 3), np.float32)), ValueError, r"weight has 2 input channels but x has 3"),
    (dict(weight=np.zeros((4, 3, 9, 3), np.float32)), ValueError, r"kernel 9x3 .* larger than the padded input 8x8"),
    (dict(weight=np.zeros((4, 3, 3, 3), np.float32), dilation=4), ValueError, r"larger than the padded input"),
    (dict(stride=0), ValueError, r"stride must be positive, got 0"),
    (dict(stride=(1, -2)), ValueError, r"stride must be positive"),
    (dict(stride=1.5), TypeError, r"stride must be an int or a pair"),
    (dict(dilation=0), ValueError, r"dilation must be positive"),
    (dict(padding="full"), ValueError, r"padding must be .*'same'; got unknown string 'full'"),
    (dict(padding=-1), ValueError, r"padding must be non-negative"),
    (dict(padding=(1, 2, 3)), TypeError, r"padding must be an int, \(ph, pw\)"),
    (dict(x=np.zeros((2, 3, 8, 8), np.int64)), TypeError, r"x has dtype int64.*x.astype\(np.float32\)"),
    (dict(x=np.zeros((2, 3, 8, 8), np.complex64)), TypeError, r"x has dtype complex64.*astype"),
    (dict(weight=np.zeros((4, 3, 3, 3), np.uint8)), TypeError, r"weight has dtype uint8"),
    (dict(weight=np.zeros((4, 3, 3, 3), np.float64)), TypeError, r"weight has dtype float64 but x has dtype float32"),
    (dict(bias=np.zeros(3, np.float32)), ValueError, r"bias must have shape \(4,\)"),
    (dict(activation="tanh"), ValueError, r"activation must be None or 'relu'"),
])
def test_conv2d_errors(kwargs, error, match):
    args = dict(x=X, weight=W)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        F.conv2d(**args)


@pytest.mark.parametrize("fn", [F.max_pool2d, F.avg_pool2d])
def test_pool_errors(fn):
    with pytest.raises(ValueError, match=r"x must be a 4-D NCHW array"):
        fn(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match=r"pool_size must be positive"):
        fn(X, pool_size=0)
    with pytest.raises(ValueError, match=r"strides must be positive"):
        fn(X, strides=(1, 0))
    with pytest.raises(ValueError, match=r"padding must be 'valid' or 'same'"):
        fn(X, padding=1)
    with pytest.raises(ValueError, match=r"padding must be 'valid' or 'same'; got unknown string 'full'"):
        fn(X, padding="full")
    with pytest.raises(ValueError, match=r"pool window 9x9 .* larger than the padded input"):
        fn(X, pool_size=9)
    with pytest.raises(TypeError, match=r"x has dtype int32.*astype"):
        fn(X.astype(np.int32))


def test_relu_errors():
    with pytest.raises(TypeError, match=r"x has dtype bool"):
        F.relu(np.ones(3, bool))


class FakeGpuArray:
    """Quacks like a CuPy array: exposes __cuda_array_interface__."""
    __cuda_array_interface__ = {"shape": (2, 3, 8, 8), "typestr": "<f4", "data": (0, False), "version": 3}
    shape, dtype, ndim = (2, 3, 8, 8), np.dtype(np.float32), 4


def test_gpu_array_on_cpu_backend_is_refused():
    with pytest.raises(TypeError, match=r"x is a GPU array .* active backend is 'cpu'"):
        F.conv2d(FakeGpuArray(), W)
    with pytest.raises(TypeError, match=r"x is a GPU array"):
        F.max_pool2d(FakeGpuArray())
