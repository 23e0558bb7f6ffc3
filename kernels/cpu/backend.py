"""Backend 'cpu': Numba CPU kernels on NumPy arrays, the fallback when there is no GPU.

Assembles the kernel contract (``gpuconv.kernels.api``) from the op modules
beside it: ``conv`` (im2col + BLAS), ``pool``, ``relu``; ``runtime`` holds the
thread pool, BLAS limits and scratch buffers. Loading this backend tunes glibc's
heap for the whole process (``runtime.tune_glibc_malloc``; ``GPUCONV_MALLOPT=0``
turns it off).
"""
import numpy as np

from . import runtime
from .matmul import matmul  # noqa: F401  (optional kernels: see gpuconv.backend.optional_kernel)
from .optim import adam_update  # noqa: F401
from .conv import conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight, conv2d_forward  # noqa: F401
from .pool import pool2d_backward, pool2d_forward  # noqa: F401
from .relu import relu_backward, relu_forward  # noqa: F401
from .runtime import serial, session  # noqa: F401

name = "cpu"
xp = np

runtime.tune_glibc_malloc()  # process-wide, on purpose: see runtime's docstring


def check_array(array, name):
    """The CPU backend takes host (NumPy) arrays only."""
    if hasattr(array, "__cuda_array_interface__"):
        raise TypeError(f"{name} is a GPU array ({type(array).__module__}.{type(array).__name__}) but the "
                        f"active backend is 'cpu'; copy it to the host (e.g. cupy.asnumpy) or switch "
                        f"backend with gpuconv.set_backend")
