"""Offline compile check of every Numba CUDA kernel configuration: no GPU needed.

Each configuration the launchers can pick is compiled to PTX with
``numba.cuda.compile_ptx`` (NVVM) and assembled for the target with nvJitLink
(the ptxas of the same CUDA release, so the PTX version always matches), whose
verbose log gives registers, shared memory, local memory and spills.

    python -m gpuconv.kernels.ptx_report [--arch 80 90] [--markdown FILE] [--json FILE]
"""
import argparse
import contextlib
import json
import re
import sys
import time
import types as pytypes
from collections import namedtuple

import numba
import numpy as np
from numba import cuda, types

from . import numba_cuda_kernels as kern
from . import tiling
from .tiling import SHARED_LIMIT, conv_shared_bytes

ARCHES = (80, 90)

# (R, S, stride h, stride w, dilation h, dilation w, upsample h, upsample w)
CONV_GEOMETRIES = {
    "3x3": (3, 3, 1, 1, 1, 1, 1, 1),
    "3x3 stride 2": (3, 3, 2, 2, 1, 1, 1, 1),
    "3x3 dilation 2": (3, 3, 1, 1, 2, 2, 1, 1),
    "5x5": (5, 5, 1, 1, 1, 1, 1, 1),
    "1x1": (1, 1, 1, 1, 1, 1, 1, 1),
    "3x3 input grad of stride 2": (3, 3, 1, 1, 1, 1, 2, 2),
}
WEIGHT_GRAD_GEOMETRIES = {
    "3x3": (3, 3, 1, 1, 1, 1),
    "5x5 stride 2 dilation 2": (5, 5, 2, 2, 2, 2),
}
POOL_WINDOWS = {"2x2/2": (2, 2, 2, 2), "3x3/2": (3, 3, 2, 2), "3x3/1": (3, 3, 1, 1)}
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
                                    kern.conv_kernel_source(dtype, tile, geometry, *relu_bias),
                                    (a4, a4, a1, a4, i64, i64), dict(dtype=dtype, tile=tile, geometry=geometry))
        wg_geometries = WEIGHT_GRAD_GEOMETRIES if dtype == f32 else {"3x3": WEIGHT_GRAD_GEOMETRIES["3x3"]}
        for tile in tiling.WEIGHT_GRAD_TILES:
            for label, geometry in wg_geometries.items():
                yield Configuration("weight_grad", f"{dtype.name} {tuple(tile)} {label}",
                                    kern.weight_grad_kernel_source(dtype, tile, geometry),
                                    (a4, a4, a3, i64, i64, i64), dict(dtype=dtype, tile=tile, geometry=geometry))
        yield Configuration("sum_splits", dtype.name, kern.sum_splits_kernel_source(dtype), (a2, a1),
                            dict(dtype=dtype))
        yield Configuration("bias_grad", f"{dtype.name} {tiling.THREADS_1D} threads",
                            kern.bias_grad_kernel_source(dtype, tiling.THREADS_1D), (a3, a1), dict(dtype=dtype))
        for label, window in POOL_WINDOWS.items():
            for mode in ("max", "avg"):
                params = dict(dtype=dtype, window=window)
                yield Configuration(f"{mode}_pool_forward", f"{dtype.name} {label}",
                                    kern.pool_forward_kernel_source(dtype, mode == "max", window),
                                    (a4, a4, _array(i32, 4), i64, i64), params)
                yield Configuration(f"{mode}_pool_backward", f"{dtype.name} {label}",
                                    kern.pool_backward_kernel_source(dtype, mode == "max", window),
                                    (a4, _array(i32, 4), a4, i64, i64), params)
        yield Configuration("relu_forward", dtype.name, kern.relu_forward_kernel_source(dtype), (a1, a1),
                            dict(dtype=dtype))
        yield Configuration("relu_backward", dtype.name, kern.relu_backward_kernel_source(dtype), (a1, a1, a1),
                            dict(dtype=dtype))


def assemble(ptx, arch):
    """Assemble PTX for ``sm_<arch>`` with nvJitLink; return its verbose log."""
    from cuda.bindings import nvjitlink
    handle = nvjitlink.create(2, [f"-arch=sm_{arch}", "-verbose"])
    try:
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, ptx.encode(), len(ptx), "kernel")
        try:
            nvjitlink.complete(handle)
        except nvjitlink.nvJitLinkError as error:
            log = bytearray(nvjitlink.get_error_log_size(handle))
            nvjitlink.get_error_log(handle, log)
            raise RuntimeError(f"PTX does not assemble for sm_{arch}: {log.decode(errors='replace')}") from error
        log = bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_info_log(handle, log)
        return log.decode(errors="replace")
    finally:
        nvjitlink.destroy(handle)


def resources(log):
    """Registers, shared/local memory and spill bytes from a ptxas/nvJitLink verbose log."""
    def number(pattern):
        found = re.findall(pattern, log)
        if not found:
            raise ValueError(f"no {pattern!r} in the assembler log:\n{log}")
        return int(found[-1])
    return {
        "registers": number(r"[Uu]sed (\d+) registers"),
        "shared_bytes": number(r"(\d+) bytes smem"),
        "local_bytes": number(r"(\d+) bytes lmem"),
        "stack_bytes": number(r"(\d+) bytes stack frame"),
        "spill_store_bytes": number(r"(\d+) bytes spill stores"),
        "spill_load_bytes": number(r"(\d+) bytes spill loads"),
    }


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


def collect(configurations, arches, measure, progress=None):
    """One row per (configuration, arch): ``measure(config, arch)`` gives its fields, timed as compile_s."""
    rows = []
    for config in configurations:
        for arch in arches:
            start = time.perf_counter()
            row = dict(kernel=config.kernel, config=config.description, arch=f"sm_{arch}", **measure(config, arch))
            row["compile_s"] = round(time.perf_counter() - start, 3)
            rows.append(row)
            if progress:
                progress(row)
    return rows


def markdown(rows):
    header = ("| kernel | configuration | arch | registers | shared B | local B | spill st/ld B | compile s |\n"
              "|---|---|---|---|---|---|---|---|\n")
    return header + "".join(
        f"| {r['kernel']} | {r['config']} | {r['arch']} | {r['registers']} | {r['shared_bytes']} | "
        f"{r['local_bytes']} | {r['spill_store_bytes']}/{r['spill_load_bytes']} | {r['compile_s']} |\n"
        for r in rows)


def versions():
    """The compiler stack this report comes from, and the date."""
    import datetime
    from importlib import metadata
    found = []
    for package in ("numba", "numba-cuda", "nvidia-nvvm", "nvidia-nvjitlink", "cuda-bindings"):
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return f"{datetime.date.today().isoformat()}: " + ", ".join(found)


def report_main(argv, description, compile_all, versions, title, conv_like):
    """The command line of an offline compile report: compile, print, write the table; 1 on spills."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHES), help="compute capabilities, e.g. 80 90")
    parser.add_argument("--markdown", help="write the table to this file")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args(argv)
    rows = compile_all(args.arch, progress=lambda r: print(
        f"{r['kernel']:<18} {r['config']:<58} {r['arch']} regs {r['registers']:>3} smem {r['shared_bytes']:>6} "
        f"lmem {r['local_bytes']} spills {r['spill_store_bytes']}/{r['spill_load_bytes']}", file=sys.stderr))
    from gpuconv.fileio import atomic_write
    if args.markdown:
        text = f"# {title}\n\n{versions()}\n\n" + markdown(rows)
        atomic_write(args.markdown, lambda f: f.write(text.encode()))
    if args.json:
        atomic_write(args.json, lambda f: f.write(json.dumps(rows, indent=1).encode()))
    bad = [r for r in rows if r["kernel"] in conv_like and (r["local_bytes"] or r["spill_store_bytes"])]
    return 1 if bad else 0


def main(argv=None):
    return report_main(argv, __doc__, compile_all, versions, "Offline compile report", CONV_LIKE)


if __name__ == "__main__":
    sys.exit(main())
