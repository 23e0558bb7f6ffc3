"""Backend 'numba''s runtime: the device (a CUDA GPU, or Numba's simulator), compiled kernels, launches.

Arrays are CuPy arrays on a real GPU: kernels take them zero-copy through
``__cuda_array_interface__`` and launch on CuPy's current stream. Under the CUDA
simulator (``NUMBA_ENABLE_CUDASIM=1`` before numba is imported) the same
launchers take NumPy arrays. Compiled kernels are cached per configuration.
Importing this module without either raises a RuntimeError that says so.
"""
import functools

import numpy as np
from numba import config as _numba_config

try:
    from numba import cuda
except ImportError as error:  # pragma: no cover - depends on the installation
    raise RuntimeError("backend 'numba' needs the numba-cuda package: pip install 'gpuconv[cuda]'") from error

from ..gpu import tiling

SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)

if SIMULATOR:
    xp = np
else:
    if not cuda.is_available():
        raise RuntimeError("backend 'numba' needs a CUDA GPU and none was found (numba.cuda.is_available() is "
                           "False); use backend 'cpu', or set NUMBA_ENABLE_CUDASIM=1 before numba is imported "
                           "to run the kernels on Numba's CUDA simulator")
    try:
        import cupy as xp
    except ImportError as error:
        raise RuntimeError("backend 'numba' keeps tensors as CuPy arrays; install CuPy for your CUDA version, "
                           "e.g. pip install cupy-cuda13x") from error

_streams = {}


@functools.lru_cache(maxsize=None)
def compiled(source, *config):
    """``cuda.jit`` of ``source(*config)``: one dispatcher per configuration, compiled on first launch."""
    return cuda.jit(source(*config))


def launch(kernel, blocks, threads, *args):
    """Launch on CuPy's current stream, so the kernel is ordered with the CuPy work around it."""
    if SIMULATOR:
        kernel[blocks, threads](*args)
        return
    pointer = xp.cuda.get_current_stream().ptr
    stream = _streams.get(pointer)
    if stream is None:
        stream = _streams[pointer] = cuda.default_stream() if pointer == 0 else cuda.external_stream(pointer)
    kernel[blocks, threads, stream](*args)


def launch_elementwise(kernel, items, *args):
    """Launch a one-thread-per-element (grid-stride) kernel over ``items`` elements."""
    threads = tiling.THREADS_1D
    launch(kernel, tiling.grid_blocks(items, threads), threads, *args)
