"""gpuconv: convolution, pooling and ReLU kernels in Python DSLs behind a small autograd.

    import gpuconv
    import gpuconv.functional as F
    x = gpuconv.Tensor(images, requires_grad=True)      # NCHW float32
    y = F.relu(F.conv2d(x, weights, padding="same"))     # weights KCRS
    y.sum().backward()

Backends: 'auto' (default), 'cpu'. Choose with ``gpuconv.set_backend(name)``,
``with gpuconv.use_backend(name):`` or the environment variable GPUCONV_BACKEND.
"""
from gpuconv import callbacks, datasets, functional, layers, losses, optimizers, signal
from gpuconv.backend import BACKENDS, get_backend, set_backend, use_backend
from gpuconv.model import Sequential
from gpuconv.rng import set_seed
from gpuconv.tensor import Function, Tensor, no_grad

__version__ = "0.1.0"
__all__ = ["Tensor", "Function", "no_grad", "Sequential", "set_seed", "callbacks", "functional", "layers", "losses",
           "optimizers", "datasets", "signal", "set_backend", "use_backend", "get_backend", "BACKENDS"]
