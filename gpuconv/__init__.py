"""gpuconv: convolution, pooling and ReLU kernels in Python DSLs behind a small autograd.

    import gpuconv
    import gpuconv.functional as F
    x = gpuconv.Tensor(images, requires_grad=True)      # NCHW float32
    y = F.relu(F.conv2d(x, weights, padding="same"))     # weights KCRS
    y.sum().backward()

Backends: 'auto' (default), 'cpu'. Choose with ``gpuconv.set_backend(name)``,
``with gpuconv.use_backend(name):`` or the environment variable GPUCONV_BACKEND.
"""
from gpuconv import functional, signal
from gpuconv.backend import BACKENDS, get_backend, set_backend, use_backend
from gpuconv.tensor import Function, Tensor, no_grad

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "no_grad", "functional", "signal",
           "set_backend", "use_backend", "get_backend", "BACKENDS"]
