"""Backend 'cupy''s runtime: the device (a CUDA GPU through CuPy, or the host emulator), the module cache.

Each configuration (a .cu file plus tile and geometry ``-D`` defines, see
``sources``) is one ``cupy.RawModule``, cached per configuration and device (CuPy
also caches the compiled binary on disk). Kernels run on CuPy's current stream.

With ``GPUCONV_CUDA_EMULATOR=1`` (set before this module is imported) the same
sources run on the host through ``gpuconv.kernels.tools.cuda_emulator`` and
tensors are NumPy arrays: that is how CI tests the kernels' logic without a GPU.
It is for tests only (the emulator is not in the wheel). Importing this module
without a GPU or the emulator raises a RuntimeError that says so.
"""
import functools
import os

import numpy as np

from . import sources

EMULATOR_ENV = "GPUCONV_CUDA_EMULATOR"
EMULATED = os.environ.get(EMULATOR_ENV) == "1"

if EMULATED:
    try:
        from ..tools.cuda_emulator import EmulatedModule as _load_module
    except ImportError as error:
        raise RuntimeError(f"{EMULATOR_ENV}=1 asks for the CUDA C host emulator, which is test tooling: it is in "
                           f"a source checkout (pip install -e .), not in the wheel") from error
    xp = np
else:
    try:
        import cupy as xp
    except ImportError as error:
        raise RuntimeError("backend 'cupy' needs CuPy for your CUDA version, e.g. pip install cupy-cuda13x "
                           "(or pip install 'gpuconv[cuda]')") from error
    try:
        _devices = xp.cuda.runtime.getDeviceCount()
    except xp.cuda.runtime.CUDARuntimeError:
        _devices = 0
    if not _devices:
        raise RuntimeError(f"backend 'cupy' needs a CUDA GPU and CuPy found none; use backend 'cpu' (to test "
                           f"the kernels without a GPU, set {EMULATOR_ENV}=1 to run them on the host emulator)")

    def _load_module(module):
        return xp.RawModule(code=sources.source(module), options=sources.options(module))


@functools.lru_cache(maxsize=None)
def kernel(module, kernel_name, device_id):
    """The compiled ``kernel_name`` of ``module`` on a device: compiled once per configuration and device."""
    return _load_module(module).get_function(kernel_name)


def address(array):
    """The device (or, emulated, host) address of an array's first element."""
    return array.ctypes.data if EMULATED else array.data.ptr
