"""Host side of the CUDA C kernels, on the CPU without a GPU: argument packing, modules, index helpers.

CuPy passes launch arguments as raw bytes without checking them against the
kernel, so ``sources.pack`` must turn every argument into exactly the declared C
type or refuse it; these tests hold it to that.
"""
import ctypes
import itertools
import subprocess

import numpy as np
import pytest

from gpuconv.kernels import indexing
from gpuconv.kernels.cuda_c import sources
from gpuconv.kernels.gpu.tiling import ConvTile
from gpuconv.kernels.tools import cuda_emulator

CONV_ARGS = 13


def conv_args(dtype=np.float32, **changes):
    arrays = dict(x=np.zeros((1, 2, 5, 5), dtype), w=np.zeros((3, 2, 3, 3), dtype), bias=None,
                  y=np.zeros((1, 3, 5, 5), dtype))
    sizes = dict(N=1, C=2, H=5, W=5, K=3, OH=5, OW=5, pad_top=1, pad_left=1)
    values = {**arrays, **sizes, **changes}
    return [values[p.name] for p in sources.parameters("conv2d")]


def test_signatures_parse_into_typed_parameters():
    params = sources.parameters("pool_backward")
    assert [p.name for p in params[:3]] == ["dy", "argmax", "dx"]
    assert [(p.ctype, p.pointee, p.writable) for p in params[:4]] == [
        ("const T*", "T", False), ("const int*", "int", False), ("T*", "T", True), ("i64", None, False)]
    assert len(sources.parameters("conv2d")) == CONV_ARGS
    assert sources.signature_type("relu_backward", np.float64) == \
        "void (*)(const double*, const double*, double*, long long)"


def test_pack_gives_every_scalar_its_declared_type():
    packed = sources.pack("conv2d", np.float32, conv_args(N=np.int64(1), pad_top=-2))
    scalars = packed[4:]
    assert all(type(s) is np.int64 for s in scalars) and scalars[-2] == -2
    assert packed[2] == np.uintp(0) and type(packed[2]) is np.uintp  # bias None: a null pointer


@pytest.mark.parametrize("wrong", [np.int32(5), np.uint64(5), np.float64(5.0), 5.0, True, "5"])
def test_pack_refuses_a_scalar_of_another_type(wrong):
    with pytest.raises(TypeError, match=r"argument 'H' of kernel conv2d"):
        sources.pack("conv2d", np.float32, conv_args(H=wrong))


def test_pack_refuses_what_the_kernel_would_misread():
    with pytest.raises(OverflowError, match=r"argument 'W' of kernel conv2d = 9223372036854775808 does not fit"):
        sources.pack("conv2d", np.float32, conv_args(W=2**63))
    with pytest.raises(TypeError, match=r"argument 'x' of kernel conv2d must be a C-contiguous float32 array"):
        sources.pack("conv2d", np.float32, conv_args(np.float64))
    with pytest.raises(TypeError, match=r"argument 'y' .* C-contiguous"):
        sources.pack("conv2d", np.float32, conv_args(y=np.zeros((1, 3, 5, 10), np.float32)[..., ::2]))
    with pytest.raises(TypeError, match=r"argument 'argmax' of kernel pool_forward must be a C-contiguous int32"):
        sources.pack("pool_forward", np.float32, [np.zeros(4, np.float32), np.zeros(1, np.float32),
                                                 np.zeros(1, np.int64)] + [1] * 8)
    with pytest.raises(TypeError, match=r"kernel conv2d takes 13 arguments .*; got 12"):
        sources.pack("conv2d", np.float32, conv_args()[:-1])


def test_modules_carry_their_configuration_as_defines():
    module = sources.conv_module(np.float64, ConvTile(8, 16, 4, 8, 4), (3, 5, 2, 1, 1, 2, 1, 1), True, False)
    options = sources.options(module)
    assert options[0] == "--std=c++17"
    assert {"-DDTYPE=double", "-DTILE_ROWS=8", "-DTILE_COLS=16", "-DCOLS_PER_THREAD=4", "-DTILE_FILTERS=8",
            "-DTILE_CHANNELS=4", "-DKR=3", "-DKS=5", "-DSTRIDE_H=2", "-DSTRIDE_W=1", "-DDIL_H=1", "-DDIL_W=2",
            "-DRELU=1", "-DUSE_BIAS=0"} <= set(options)
    assert sources.kernels_of(module) == ("conv2d",)
    assert sources.kernels_of(sources.reduce_module(np.float32, 256)) == ("sum_splits", "bias_grad")
    # modules are hashable cache keys: equal configurations are one module
    assert module == sources.conv_module(np.float64, ConvTile(8, 16, 4, 8, 4), (3, 5, 2, 1, 1, 2, 1, 1), 1, 0)


def test_source_inlines_the_shared_header_and_checks_every_signature():
    source = sources.source(sources.pool_module(np.float32, True, (2, 2, 2, 2), 256))
    assert "#include" not in source and "covering_windows" in source
    assert source.count("static_assert(gpuconv_same_type<decltype(&") == 2


@pytest.fixture(scope="module")
def index_helpers(tmp_path_factory):
    """common.cuh's clipped_window and covering_windows built for the host with the emulator header."""
    directory = tmp_path_factory.mktemp("helpers")
    code = (sources.SOURCE_DIR / "common.cuh").read_text() + """
extern "C" void clipped(long long o, long long st, long long pad, long long win, long long n, long long* out)
{ IndexRange r = clipped_window(o, st, pad, win, n); out[0] = r.lo; out[1] = r.hi; }
extern "C" void covering(long long i, long long st, long long pad, long long win, long long n, long long* out)
{ IndexRange r = covering_windows(i, st, pad, win, n); out[0] = r.lo; out[1] = r.hi; }
"""
    (directory / "helpers.cpp").write_text(code)
    subprocess.run([cuda_emulator._compiler(), "-std=c++17", "-shared", "-fPIC", "-pthread", "-include",
                    str(cuda_emulator.HEADER), str(directory / "helpers.cpp"), "-o", str(directory / "h.so")],
                   check=True)
    library = ctypes.CDLL(str(directory / "h.so"))
    out = (ctypes.c_longlong * 2)()

    def call(name, *args):
        getattr(library, name)(*map(ctypes.c_longlong, args), out)
        return out[0], out[1]
    return call


def test_c_index_helpers_match_the_python_ones(index_helpers):
    """The CUDA C twins of indexing.py agree everywhere on small ranges, padding beyond the window included."""
    checked = 0
    for stride, pad, window, size in itertools.product(range(1, 4), range(0, 4), range(1, 5), range(1, 7)):
        out_size = indexing.conv_output_size(size, 2 * pad, window, stride, 1)
        for o in range(-1, max(out_size, 0) + 2):
            assert index_helpers("clipped", o, stride, pad, window, size) == \
                indexing.clipped_window(o, stride, pad, window, size)
            checked += 1
        for i in range(size):
            assert index_helpers("covering", i, stride, pad, window, max(out_size, 0)) == \
                indexing.covering_windows(i, stride, pad, window, max(out_size, 0))
            checked += 1
    assert checked > 2000
