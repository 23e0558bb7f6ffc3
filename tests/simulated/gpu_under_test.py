"""Which GPU backend this process tests on the host, chosen by the environment before anything is imported.

NUMBA_ENABLE_CUDASIM=1: the 'numba' backend on Numba's CUDA simulator.
GPUCONV_CUDA_EMULATOR=1: the 'cupy' backend's CUDA C kernels built with g++ (gpuconv.kernels.cuda_emulator).
"""
import os

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    BACKEND = "numba"
    from gpuconv.kernels import numba_cuda as gpu
elif os.environ.get("GPUCONV_CUDA_EMULATOR") == "1":
    BACKEND = "cupy"
    from gpuconv.kernels import cupy_rawkernel as gpu
else:
    raise RuntimeError("tests/simulated needs NUMBA_ENABLE_CUDASIM=1 or GPUCONV_CUDA_EMULATOR=1 set before "
                       "gpuconv is imported; run it through tests/test_simulated_gpu.py")

__all__ = ["BACKEND", "gpu"]
