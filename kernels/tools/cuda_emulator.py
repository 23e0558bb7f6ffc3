"""Host emulation of the CUDA C kernels, for tests on machines without a GPU (``GPUCONV_CUDA_EMULATOR=1``).

Each module (``cuda_c.sources.Module``) is built with g++ from the very source and
options that CuPy compiles, plus ``cuda_emulator.h``, which runs the threads of a
block as real threads (``__syncthreads`` is a barrier, shared memory is shared)
and blocks one after another. ``EmulatedModule.get_function(name)`` returns a
kernel called like ``cupy.RawKernel``: ``kernel(grid, block, args)``, with the
arguments ``sources.pack`` made, passed as raw bytes as CUDA's launch does.

Every array argument is copied into a buffer with 64 bytes of canary (0xFF: a
NaN as float) on each side: a write outside the array fails the launch, a read
outside it brings NaN into the result.
"""
import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

import numpy as np

from ..cuda_c import sources

HEADER = pathlib.Path(__file__).parent / "cuda_emulator.h"
GUARD = 64
CANARY = 0xFF
COMPILER_FLAGS = ("-O1", "-shared", "-fPIC", "-pthread", "-w")


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "gpuconv" / "cuda-emulator"


def _wrappers(module):
    """One ``extern "C"`` launcher per kernel, reading each argument as the type ``SIGNATURES`` declares."""
    dtype = sources.dtype_of(module)
    text = ""
    for kernel in sources.kernels_of(module):
        reads = ", ".join(f"*({sources.c_type(p, dtype)}*)args[{i}]" for i, p in enumerate(sources.parameters(kernel)))
        text += (f'extern "C" int gpuconv_launch_{kernel}(unsigned grid, unsigned block, void** args)\n'
                 f'{{\n    return gpuconv_emulator::launch(grid, block, [args] {{ {kernel}({reads}); }});\n}}\n')
    return text


def _compiler():
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise RuntimeError("the CUDA C emulator needs a C++17 compiler (g++); none found on PATH")
    return compiler


@functools.lru_cache(maxsize=None)
def build(module):
    """Compile ``module`` for the host (cached on disk by content); return the shared library's path."""
    code = sources.source(module) + "\n" + _wrappers(module)
    flags = tuple(o.replace("--std=", "-std=") for o in sources.options(module)) + COMPILER_FLAGS
    compiler = _compiler()
    key = hashlib.sha256("\0".join((code, HEADER.read_text(), compiler, *flags)).encode()).hexdigest()[:20]
    target = cache_dir() / f"{pathlib.Path(module.file).stem}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            cpp, built = pathlib.Path(tmp) / "module.cpp", pathlib.Path(tmp) / "module.so"
            cpp.write_text(code)
            result = subprocess.run([compiler, *flags, "-include", str(HEADER), "-x", "c++", str(cpp),
                                     "-o", str(built)], capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(f"emulator build of {module.file} {' '.join(sources.options(module))} "
                                   f"failed:\n{result.stderr[-6000:]}")
            os.replace(built, target)  # atomic: no half-written library is ever loaded
    return target


class EmulatedModule:
    """Stands for ``cupy.RawModule``: ``get_function(name)``."""

    def __init__(self, module):
        self.module = module
        self.library = ctypes.CDLL(str(build(module)))

    def get_function(self, name):
        return EmulatedKernel(self, name)


class EmulatedKernel:
    """Stands for ``cupy.RawKernel``: ``kernel(grid, block, args)``."""

    def __init__(self, module, name):
        self.name = name
        self.params = sources.parameters(name)
        self._entry = getattr(module.library, f"gpuconv_launch_{name}")
        self._entry.restype = ctypes.c_int
        self._entry.argtypes = (ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p))

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        (grid,), (block,) = tuple(grid), tuple(block)  # our launches are one-dimensional
        if not (1 <= block <= 1024 and 1 <= grid < 2**31):
            raise ValueError(f"invalid launch of {self.name}: grid {grid}, block {block}")
        keep, pointers, guarded = [], [], []
        for param, value in zip(self.params, args):
            if isinstance(value, np.ndarray):
                buffer, offset = _guarded_copy(value)
                holder = ctypes.c_void_p(buffer.ctypes.data + offset)
                guarded.append((param, value, buffer, offset))
                keep.append(holder)
                pointers.append(ctypes.addressof(holder))
            else:
                holder = np.array(value)  # the scalar's exact bytes, as cuLaunchKernel reads them
                keep.append(holder)
                pointers.append(holder.ctypes.data)
        if self._entry(grid, block, (ctypes.c_void_p * len(pointers))(*pointers)):
            raise RuntimeError(f"kernel {self.name}: threads of a block left the kernel while others waited at "
                               f"__syncthreads (divergent barrier)")
        for param, array, buffer, offset in guarded:
            end = offset + array.nbytes
            if (buffer[:offset] != CANARY).any() or (buffer[end:] != CANARY).any():
                raise RuntimeError(f"kernel {self.name} wrote outside argument {param.name!r} "
                                   f"({array.dtype} {array.shape})")
            if param.writable and array.size:
                array.reshape(-1).view(np.uint8)[:] = buffer[offset:end]


def _guarded_copy(array):
    """A copy of ``array`` inside canary bytes, at the same address alignment mod 64 (vector paths agree)."""
    buffer = np.full(array.nbytes + 3 * GUARD, CANARY, np.uint8)
    offset = GUARD + (array.ctypes.data - buffer.ctypes.data) % GUARD
    if array.size:
        buffer[offset:offset + array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return buffer, offset
