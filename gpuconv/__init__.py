"""gpuconv: convolution, pooling and ReLU kernels in Python DSLs behind a small autograd.

    import gpuconv
    import gpuconv.functional as F
    x = gpuconv.Tensor(images, requires_grad=True)      # NCHW float32
    y = F.relu(F.conv2d(x, weights, padding="same"))     # weights KCRS
    y.sum().backward()

The layers, from kernels up: ``gpuconv.kernels`` (one package per backend),
``gpuconv.backend`` (dispatch), ``gpuconv.tensor`` and ``gpuconv.functional``
(autograd and ops), ``gpuconv.nn`` (Keras-style layers and models).

Backends: 'auto' (default), 'cpu', 'numba', 'cupy'. Choose with ``gpuconv.set_backend(name)``,
``with gpuconv.use_backend(name):`` or the environment variable GPUCONV_BACKEND.

Messages (the backend chosen, data downloads, cache problems) go to ``logging.getLogger("gpuconv")``.
"""
import sys

from gpuconv import config, datasets, distributed, functional, nn, signal
from gpuconv._version import __version__
from gpuconv.backend import BACKENDS, get_backend, set_backend, use_backend
from gpuconv.nn import Sequential, callbacks, layers, losses, optimizers
from gpuconv.nn.saving import load_model
from gpuconv.rng import set_seed
from gpuconv.tensor import Function, Tensor, from_dlpack, no_grad
from gpuconv import interop, keras, models  # noqa: E402  (they import the modules above)

# The Keras-style modules keep their short names: ``from gpuconv.layers import Conv2D`` imports gpuconv.nn.layers.
for _module in (callbacks, layers, losses, optimizers):
    sys.modules[f"gpuconv.{_module.__name__.rsplit('.', 1)[1]}"] = _module
del _module

__all__ = ["Tensor", "Function", "from_dlpack", "no_grad", "Sequential", "load_model", "set_seed", "callbacks",
           "config", "distributed", "functional", "interop", "keras", "layers", "losses", "models", "optimizers", "datasets", "signal",
           "nn", "set_backend", "use_backend", "get_backend", "BACKENDS", "__version__"]
