"""Offline compile check of every CUDA C kernel configuration with NVRTC: no GPU needed.

NVRTC (``cuda.bindings.nvrtc``, the compiler CuPy uses) compiles each module the
'cupy' backend can load, with the options it uses at run time
(``sources.options``), to PTX for the target; nvJitLink (ptxas) assembles it and
its verbose log gives registers, shared memory, local memory and spills.

    python -m gpuconv.kernels.tools.nvrtc_report [--arch 80 90] [--markdown FILE] [--json FILE]
"""
import re
import sys
from collections import namedtuple

import numpy as np

from ..cuda_c import sources
from ..gpu import tiling
from .compile_report import (ARCHES, CONV_GEOMETRIES, POOL_WINDOWS, WEIGHT_GRAD_GEOMETRIES, assemble,  # noqa: F401
                             collect, markdown, report_main, resources, stack_versions)

CONV_LIKE = ("conv2d", "conv2d_weight_grad")  # register-blocked kernels: local memory there is a defect

Configuration = namedtuple("Configuration", "kernel description module params")


def configurations():
    """Yield a ``Configuration`` per kernel of each module the launchers can pick (the same set as ptx_report)."""
    f32, f64 = np.dtype(np.float32), np.dtype(np.float64)
    for dtype in (f32, f64):
        geometries = CONV_GEOMETRIES if dtype == f32 else {"3x3": CONV_GEOMETRIES["3x3"]}
        for tile in tiling.CONV_TILES:
            for label, geometry in geometries.items():
                if tiling.conv_shared_bytes(tile, geometry, dtype.itemsize) > tiling.SHARED_LIMIT:
                    continue  # never launched: choose_conv_tile skips it
                forward = geometry[6:] == (1, 1)
                yield Configuration("conv2d", f"{dtype.name} {tuple(tile)} {label}",
                                    sources.conv_module(dtype, tile, geometry, forward, forward),
                                    dict(dtype=dtype, tile=tile, geometry=geometry))
        wg_geometries = WEIGHT_GRAD_GEOMETRIES if dtype == f32 else {"3x3": WEIGHT_GRAD_GEOMETRIES["3x3"]}
        for tile in tiling.WEIGHT_GRAD_TILES:
            for label, geometry in wg_geometries.items():
                yield Configuration("conv2d_weight_grad", f"{dtype.name} {tuple(tile)} {label}",
                                    sources.weight_grad_module(dtype, tile, geometry), dict(dtype=dtype, tile=tile))
        reduce = sources.reduce_module(dtype, tiling.THREADS_1D)
        for kernel in ("sum_splits", "bias_grad"):
            yield Configuration(kernel, f"{dtype.name} {tiling.THREADS_1D} threads", reduce, dict(dtype=dtype))
        for label, window in POOL_WINDOWS.items():
            for is_max in (True, False):
                module = sources.pool_module(dtype, is_max, window, tiling.THREADS_1D)
                for kernel in ("pool_forward", "pool_backward"):
                    yield Configuration(kernel, f"{dtype.name} {'max' if is_max else 'avg'} {label}", module,
                                        dict(dtype=dtype, window=window))
        for vector in (1, 16 // dtype.itemsize):
            module = sources.relu_module(dtype, vector, tiling.THREADS_1D)
            for kernel in ("relu_forward", "relu_backward"):
                yield Configuration(kernel, f"{dtype.name} vector {vector}", module, dict(dtype=dtype))


class CompileError(RuntimeError):
    pass


def _check(result, program, what):
    from cuda.bindings import nvrtc
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CompileError(f"{what}: {result}\n{program_log(program)}")


def program_log(program):
    from cuda.bindings import nvrtc
    _, size = nvrtc.nvrtcGetProgramLogSize(program)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(program, log)
    return log.rstrip(b"\0 ").decode(errors="replace")


def compile_ptx(module, arch):
    """NVRTC-compile ``module`` to PTX for ``compute_<arch>``: (ptx text, compiler log)."""
    from cuda.bindings import nvrtc
    result, program = nvrtc.nvrtcCreateProgram(sources.source(module).encode(), module.file.encode(), 0, [], [])
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CompileError(f"nvrtcCreateProgram: {result}")
    try:
        opts = [o.encode() for o in sources.options(module) + (f"--gpu-architecture=compute_{arch}",)]
        (result,) = nvrtc.nvrtcCompileProgram(program, len(opts), opts)
        _check(result, program, f"{module.file} {' '.join(sources.options(module))} for compute_{arch}")
        log = program_log(program)
        _, size = nvrtc.nvrtcGetPTXSize(program)
        ptx = b" " * size
        nvrtc.nvrtcGetPTX(program, ptx)
        return ptx.rstrip(b"\0").decode(), log
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def compile_all(arches=ARCHES, progress=None):
    """Compile every module once per arch; return one row per (kernel configuration, arch)."""
    compiled = {}  # a module holds several kernels: compile it once per arch

    def measure(config, arch):
        key = (config.module, arch)
        if key not in compiled:
            ptx, log = compile_ptx(config.module, arch)
            compiled[key] = (log, assemble(ptx, arch))
        log, assembler_log = compiled[key]
        return dict(resources(_function_log(assembler_log, config.kernel)), warnings=log)
    return collect(configurations(), arches, measure, progress)


def _function_log(log, kernel):
    """The lines of a multi-kernel assembler log about ``kernel``: its ptxas section and its properties line."""
    section = re.search(rf"Compiling entry function '{kernel}'.*?(?=Compiling entry function|\ninfo|\Z)", log, re.S)
    summary = re.search(rf"Function properties for '{kernel}':\n[^\n]*", log)
    if not section or not summary:
        raise ValueError(f"no entry for {kernel} in the assembler log:\n{log}")
    return section.group(0) + "\n" + summary.group(0)


def versions():
    """The compiler stack this report comes from, and the date."""
    from cuda.bindings import nvrtc
    _, major, minor = nvrtc.nvrtcVersion()
    return stack_versions([f"NVRTC {major}.{minor}"], ("cuda-bindings", "nvidia-cuda-nvrtc", "nvidia-nvjitlink"))


def main(argv=None):
    return report_main(argv, __doc__, compile_all, versions, "Offline compile report: CUDA C kernels (NVRTC)",
                       CONV_LIKE)


if __name__ == "__main__":
    sys.exit(main())
