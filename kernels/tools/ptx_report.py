"""Offline compile check of every Numba CUDA kernel configuration: no GPU needed.

Each configuration the launchers can pick is compiled to PTX with
``numba.cuda.compile_ptx`` (NVVM) and assembled for the target with nvJitLink
(``compile_report``), whose verbose log gives registers, shared memory, local
memory and spills.

    python -m gpuconv.kernels.tools.ptx_report [--arch 80 90] [--markdown FILE] [--json FILE]
"""
import contextlib
import sys
import types as pytypes
from collections import namedtuple

import numba
import numpy as np
from numba import cuda, types

from ..gpu import tiling
from ..gpu.tiling import SHARED_LIMIT, conv_shared_bytes
from ..numba_cuda import conv, pool, reduce, relu, weight_grad
from .compile_report import (ARCHES, CONV_GEOMETRIES, POOL_WINDOWS, WEIGHT_GRAD_GEOMETRIES, assemble,  # noqa: F401
                             collect, markdown, report_main, resources, stack_versions)

CONV_LIKE = ("conv", "weight_grad")  # register-blocked kernels: local memory there is a defect


def _array(dtype, ndim):
    return types.Array(numba.from_dtype(np.dtype(dtype)), ndim, "C")


Configuration = namedtuple("Configuration", "kernel description function signature params")


def configurations():
    """Yield a ``Configuration`` (kernel name, description, Python function, signature, parameters) for each."""
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    i64, i32 = types.int64, np.dtype(np.int32)
    for dtype in (f32, f64):
        geometries = CONV_GEOMETRIES if dtype == f32 else {"3x3": CONV_GEOMETRIES["3x3"]}
        a4, a1, a3, a2 = (_array(dtype, n) for n in (4, 1, 3, 2))
        for tile in tiling.CONV_TILES:
            for label, geometry in geometries.items():
                if conv_shared_bytes(tile, geometry, dtype.itemsize) > SHARED_LIMIT:
                    continue  # never launched: choose_conv_tile skips it
                forward = geometry[6:] == (1, 1)
                relu_bias = (True, True) if forward else (False, False)
                yield Configuration("conv", f"{dtype.name} {tuple(tile)} {label}",
                                    conv.conv_kernel_source(dtype, tile, geometry, *relu_bias),
                                    (a4, a4, a1, a4, i64, i64), dict(dtype=dtype, tile=tile, geometry=geometry))
        wg_geometries = WEIGHT_GRAD_GEOMETRIES if dtype == f32 else {"3x3": WEIGHT_GRAD_GEOMETRIES["3x3"]}
        for tile in tiling.WEIGHT_GRAD_TILES:
            for label, geometry in wg_geometries.items():
                yield Configuration("weight_grad", f"{dtype.name} {tuple(tile)} {label}",
                                    weight_grad.weight_grad_kernel_source(dtype, tile, geometry),
                                    (a4, a4, a3, i64, i64, i64), dict(dtype=dtype, tile=tile, geometry=geometry))
        yield Configuration("sum_splits", dtype.name, reduce.sum_splits_kernel_source(dtype), (a2, a1),
                            dict(dtype=dtype))
        yield Configuration("bias_grad", f"{dtype.name} {tiling.THREADS_1D} threads",
                            reduce.bias_grad_kernel_source(dtype, tiling.THREADS_1D), (a3, a1), dict(dtype=dtype))
        for label, window in POOL_WINDOWS.items():
            for mode in ("max", "avg"):
                params = dict(dtype=dtype, window=window)
                yield Configuration(f"{mode}_pool_forward", f"{dtype.name} {label}",
                                    pool.pool_forward_kernel_source(dtype, mode == "max", window),
                                    (a4, a4, _array(i32, 4), i64, i64), params)
                yield Configuration(f"{mode}_pool_backward", f"{dtype.name} {label}",
                                    pool.pool_backward_kernel_source(dtype, mode == "max", window),
                                    (a4, _array(i32, 4), a4, i64, i64), params)
        yield Configuration("relu_forward", dtype.name, relu.relu_forward_kernel_source(dtype), (a1, a1),
                            dict(dtype=dtype))
        yield Configuration("relu_backward", dtype.name, relu.relu_backward_kernel_source(dtype), (a1, a1, a1),
                            dict(dtype=dtype))


@contextlib.contextmanager
def _device_functions_target(arch):
    """Let device functions (the shared index helpers) compile with no GPU present.

    numba-cuda compiles a ``cuda.jit(device=True)`` function for the current
    device's compute capability, which needs a driver; here it gets ``arch``.
    """
    from numba.cuda import dispatcher
    real = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=divmod(arch, 10))
    try:
        yield
    finally:
        dispatcher.get_current_device = real


def compile_all(arches=ARCHES, progress=None):
    """Compile every configuration for every arch; return one row per (configuration, arch)."""
    def measure(config, arch):
        with _device_functions_target(arch):
            ptx, _ = cuda.compile_ptx(config.function, config.signature, cc=divmod(arch, 10))
        return resources(assemble(ptx, arch))
    return collect(configurations(), arches, measure, progress)


def versions():
    """The compiler stack this report comes from, and the date."""
    return stack_versions([], ("numba", "numba-cuda", "nvidia-nvvm", "nvidia-nvjitlink", "cuda-bindings"))


def main(argv=None):
    return report_main(argv, __doc__, compile_all, versions, "Offline compile report", CONV_LIKE)


if __name__ == "__main__":
    sys.exit(main())
