"""Which GPU backend this process tests on the host, chosen by the environment before anything is imported.

NUMBA_ENABLE_CUDASIM=1: the 'numba' backend on Numba's CUDA simulator.
GPUCONV_CUDA_EMULATOR=1: the 'cupy' backend's CUDA C kernels built with g++ (gpuconv.kernels.tools.cuda_emulator).
"""
import os

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    BACKEND = "numba"
    from gpuconv.kernels.numba_cuda import backend as gpu
elif os.environ.get("GPUCONV_CUDA_EMULATOR") == "1":
    BACKEND = "cupy"
    from gpuconv.kernels.cuda_c import backend as gpu
else:
    raise RuntimeError("tests/simulated needs NUMBA_ENABLE_CUDASIM=1 or GPUCONV_CUDA_EMULATOR=1 set before "
                       "gpuconv is imported; run it through tests/backends/test_simulated_gpu.py")

__all__ = ["BACKEND", "gpu", "conv_with_grads"]


def conv_with_grads(backend, x, w, b, dy, stride, padding, dilation, activation=None):
    """conv2d on ``backend`` with the gradients for upstream ``dy``: (y, dx, dw, db) as host arrays."""
    from gpuconv import Tensor, functional as F, use_backend
    with use_backend(backend):
        tensors = [Tensor(a, requires_grad=True) for a in (x, w, b)]
        y = F.conv2d(*tensors, stride=stride, padding=padding, dilation=dilation, activation=activation)
        y.backward(dy)
    return (y.numpy(),) + tuple(t.grad for t in tensors)
