"""The CUDA C kernels (``*.cu`` beside this file) as the host sees them: sources, options, signatures, packing.

No GPU and no CuPy needed: the 'cupy' backend (``backend``, ``runtime``) loads these
with ``cupy.RawModule``, the offline check (``tools.nvrtc_report``) compiles the same
source with the same options through NVRTC, and the host emulator
(``tools.cuda_emulator``) compiles it with g++ for tests on machines without a GPU.

A configuration is a source file plus ``-D`` defines (dtype, tile, geometry);
each compiles to one module. ``SIGNATURES`` declares every kernel's parameters
in C syntax. The compiled source ends with a ``static_assert`` per kernel that
the declaration matches the kernel's real type, and ``pack`` converts launch
arguments to exactly those types: CuPy passes whatever it is given, so an
``int32`` where the kernel reads ``long long`` would otherwise be silent garbage.
"""
import functools
import pathlib
import re
from collections import namedtuple

import numpy as np

SOURCE_DIR = pathlib.Path(__file__).parent
STANDARD = "--std=c++17"

# kernel -> (source file, parameters in C; T is the configuration's DTYPE, i64 is long long)
SIGNATURES = {
    "conv2d": ("conv.cu", "const T* x, const T* w, const T* bias, T* y, i64 N, i64 C, i64 H, i64 W, i64 K, "
                          "i64 OH, i64 OW, i64 pad_top, i64 pad_left"),
    "conv2d_weight_grad": ("weight_grad.cu", "const T* dy, const T* x, T* partial, i64 N, i64 C, i64 H, i64 W, "
                                             "i64 K, i64 OH, i64 OW, i64 splits, i64 pad_top, i64 pad_left, "
                                             "i64 chunks_per_split"),
    "sum_splits": ("reduce.cu", "const T* partial, T* out, i64 splits, i64 M"),
    "bias_grad": ("reduce.cu", "const T* dy, T* db, i64 N, i64 K, i64 P"),
    "pool_forward": ("pool.cu", "const T* x, T* y, int* argmax, i64 N, i64 C, i64 H, i64 W, i64 OH, i64 OW, "
                                "i64 pad_top, i64 pad_left"),
    "pool_backward": ("pool.cu", "const T* dy, const int* argmax, T* dx, i64 N, i64 C, i64 H, i64 W, i64 OH, "
                                 "i64 OW, i64 pad_top, i64 pad_left"),
    "relu_forward": ("relu.cu", "const T* x, T* y, i64 n"),
    "relu_backward": ("relu.cu", "const T* dy, const T* y, T* dx, i64 n"),
}
C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
SCALARS = {"i64": np.dtype(np.int64), "int": np.dtype(np.int32)}
POINTEES = {"int": np.dtype(np.int32)}  # T: the configuration's dtype

Parameter = namedtuple("Parameter", "name ctype pointee writable")
Parameter.__doc__ = """One kernel parameter: ``ctype`` as written in C; ``pointee`` 'T', 'int' or None for a scalar."""


@functools.lru_cache(maxsize=None)
def parameters(kernel):
    """The declared parameters of ``kernel``, in order."""
    found = []
    for item in SIGNATURES[kernel][1].split(","):
        match = re.fullmatch(r"\s*(const )?(\w+)(\*)? (\w+)\s*", item)
        const, base, pointer, pname = match.groups()
        found.append(Parameter(pname, f"{const or ''}{base}{pointer or ''}", base if pointer else None,
                               bool(pointer) and not const))
    return tuple(found)


Module = namedtuple("Module", "file defines")
Module.__doc__ = """A compile unit: ``file`` (a .cu) and ``defines``, a tuple of (NAME, value) pairs."""


def conv_module(dtype, tile, geometry, relu, use_bias):
    """conv.cu for a ``gpu.tiling.ConvTile`` and ``geometry`` = (R, S, SH, SW, DH, DW, UH, UW)."""
    names = ("KR", "KS", "STRIDE_H", "STRIDE_W", "DIL_H", "DIL_W", "UP_H", "UP_W")
    return Module("conv.cu", (("DTYPE", C_TYPES[np.dtype(dtype)]), ("TILE_ROWS", tile.rows),
                              ("TILE_COLS", tile.cols), ("COLS_PER_THREAD", tile.cols_per_thread),
                              ("TILE_FILTERS", tile.filters), ("TILE_CHANNELS", tile.channels),
                              *zip(names, geometry), ("RELU", int(relu)), ("USE_BIAS", int(use_bias))))


def weight_grad_module(dtype, tile, geometry):
    """weight_grad.cu for a ``gpu.tiling.WeightGradTile`` and ``geometry`` = (R, S, SH, SW, DH, DW)."""
    names = ("KR", "KS", "STRIDE_H", "STRIDE_W", "DIL_H", "DIL_W")
    return Module("weight_grad.cu", (("DTYPE", C_TYPES[np.dtype(dtype)]), ("TILE_FILTERS", tile.filters),
                                     ("TILE_TAPS", tile.taps), ("CHUNK", tile.chunk), ("THREADS_K", tile.threads_k),
                                     ("THREADS_J", tile.threads_j), *zip(names, geometry)))


def reduce_module(dtype, threads):
    return Module("reduce.cu", (("DTYPE", C_TYPES[np.dtype(dtype)]), ("BLOCK_THREADS", threads)))


def pool_module(dtype, is_max, window, threads):
    """pool.cu for ``window`` = (PH, PW, SH, SW)."""
    return Module("pool.cu", (("DTYPE", C_TYPES[np.dtype(dtype)]), ("IS_MAX", int(is_max)),
                              *zip(("PH", "PW", "SH", "SW"), window), ("BLOCK_THREADS", threads)))


def relu_module(dtype, vector, threads):
    """relu.cu with ``vector`` elements per packet (16 bytes' worth, or 1)."""
    return Module("relu.cu", (("DTYPE", C_TYPES[np.dtype(dtype)]), ("VEC", vector), ("BLOCK_THREADS", threads)))


def kernels_of(module):
    return tuple(k for k, (file, _) in SIGNATURES.items() if file == module.file)


def options(module):
    """Compiler options of a module: the same for CuPy at run time, NVRTC offline and the emulator."""
    return (STANDARD,) + tuple(f"-D{name}={value}" for name, value in module.defines)


def _inlined(file):
    """The text of ``file`` with its ``#include "..."`` of our headers replaced by their text."""
    text = (SOURCE_DIR / file).read_text()
    return re.sub(r'^#include "([\w.]+)"$', lambda m: _inlined(m.group(1)), text, flags=re.M)


def c_type(param, dtype):
    """The plain C type of a parameter for ``dtype`` (T and i64 spelled out)."""
    return param.ctype.replace("T*", C_TYPES[np.dtype(dtype)] + "*").replace("i64", "long long")


def signature_type(kernel, dtype):
    """The C function-pointer type ``SIGNATURES`` declares for ``kernel``."""
    return f"void (*)({', '.join(c_type(p, dtype) for p in parameters(kernel))})"


def source(module):
    """The code to compile: the .cu with headers inlined (so a header edit changes CuPy's cache key),
    then one ``static_assert`` per kernel that its type is what ``SIGNATURES`` declares."""
    dtype = dtype_of(module)
    checks = "".join(
        f'static_assert(gpuconv_same_type<decltype(&{k}), {signature_type(k, dtype)}>::value,\n'
        f'              "{k}: the parameters declared in kernels/cuda_c/sources.py SIGNATURES differ from {module.file}");\n'
        for k in kernels_of(module))
    return (_inlined(module.file)
            + "\n// Launch arguments are packed from kernels/cuda_c/sources.py SIGNATURES: check it matches.\n"
              "template <class A, class B> struct gpuconv_same_type { static const bool value = false; };\n"
              "template <class A> struct gpuconv_same_type<A, A> { static const bool value = true; };\n" + checks)


def dtype_of(module):
    return {v: k for k, v in C_TYPES.items()}[dict(module.defines)["DTYPE"]]


def pack(kernel, dtype, args):
    """Launch arguments of ``kernel`` converted to exactly its declared types.

    Pointers: an array of the declared element type (``T`` is ``dtype``),
    C-contiguous, or ``None`` for a null pointer (an unused argument). Scalars:
    a Python int (range-checked) or a NumPy integer of exactly the declared type.
    Anything else raises ``TypeError`` naming the kernel and the parameter.
    """
    params = parameters(kernel)
    if len(args) != len(params):
        raise TypeError(f"kernel {kernel} takes {len(params)} arguments ({SIGNATURES[kernel][1]}); got {len(args)}")
    packed = []
    for p, value in zip(params, args):
        where = f"argument {p.name!r} of kernel {kernel}"
        if p.pointee is not None:
            expected = np.dtype(dtype) if p.pointee == "T" else POINTEES[p.pointee]
            if value is None:
                packed.append(np.uintp(0))
                continue
            if getattr(value, "dtype", None) != expected or not value.flags.c_contiguous:
                raise TypeError(f"{where} must be a C-contiguous {expected} array ({p.ctype}); got "
                                f"{type(value).__name__} {getattr(value, 'dtype', '')}")
            packed.append(value)
            continue
        expected = SCALARS[p.ctype]
        if isinstance(value, np.generic):
            if value.dtype != expected:
                raise TypeError(f"{where} is {p.ctype} ({expected}); got a {value.dtype} scalar, which the "
                                f"kernel would misread")
            packed.append(value)
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            info = np.iinfo(expected)
            if not info.min <= value <= info.max:
                raise OverflowError(f"{where} = {value} does not fit {p.ctype} ({expected})")
            packed.append(expected.type(value))
        else:
            raise TypeError(f"{where} must be an integer ({p.ctype}); got {type(value).__name__}")
    return tuple(packed)
