"""The 'cupy' backend's launches on the CUDA C emulator: what reaches each kernel, and the vector ReLU path.

Run for 'cupy' only (tests/backends/test_simulated_gpu.py runs test_cupy_* files under the emulator alone).
"""
import numpy as np
import pytest

import gpuconv.functional as F
from gpu_under_test import BACKEND
from gpuconv import Tensor, use_backend
from gpuconv.kernels.cuda_c import sources
from gpuconv.kernels.gpu import tiling

if BACKEND != "cupy":
    raise RuntimeError("test_cupy_launches.py runs on the CUDA C emulator only")

from gpuconv.kernels.cuda_c import backend as cupy_rawkernel, runtime  # noqa: E402


@pytest.fixture
def launches(monkeypatch):
    """Every launch as (module, kernel, grid, block, packed arguments), still run for real."""
    seen = []
    real = runtime.kernel

    def recording(module, kernel, device_id):
        function = real(module, kernel, device_id)

        def launch(grid, block, args):
            seen.append((module, kernel, grid, block, args))
            return function(grid, block, args)
        return launch

    monkeypatch.setattr(runtime, "kernel", recording)
    return seen


def test_every_kernel_gets_exactly_its_declared_types(rng, launches):
    x = rng.standard_normal((2, 1, 7, 6)).astype(np.float32)
    w = rng.standard_normal((2, 1, 3, 3)).astype(np.float32)  # few dW tiles: the reduction is split
    b = rng.standard_normal(2).astype(np.float32)
    with use_backend("cupy"):
        xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
        y = F.max_pool2d(F.avg_pool2d(F.conv2d(xt, wt, bt, stride=(2, 1), padding="same", activation="relu"),
                                      2, 1, "same"), 2, 1)
        y.sum().backward()
    kernels = {kernel for _, kernel, *_ in launches}
    assert {"conv2d", "conv2d_weight_grad", "sum_splits", "bias_grad", "pool_forward", "pool_backward"} <= kernels
    for module, kernel, grid, block, args in launches:
        params = sources.parameters(kernel)
        assert len(args) == len(params)
        for param, arg in zip(params, args):
            if param.pointee is None:
                assert type(arg) is np.int64, (kernel, param.name, type(arg))
            elif param.pointee == "T":
                assert arg.dtype == np.float32 or type(arg) is np.uintp, (kernel, param.name)
            else:
                assert arg.dtype == np.int32 or type(arg) is np.uintp, (kernel, param.name)
        assert 1 <= grid[0] <= tiling.MAX_BLOCKS
        defines = dict(module.defines)
        if kernel == "conv2d":
            assert block[0] == defines["TILE_ROWS"] * defines["TILE_COLS"]
        elif kernel == "conv2d_weight_grad":
            assert block[0] == defines["THREADS_K"] * defines["THREADS_J"]
        else:
            assert block[0] == defines["BLOCK_THREADS"] == tiling.THREADS_1D


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_uses_16_byte_packets_when_aligned_and_single_elements_when_not(rng, dtype, launches):
    flat = rng.standard_normal(1 + 4 * 37 + 3).astype(dtype)  # 150 elements: a ragged tail of packets
    flat[::5] = -0.0
    flat[7] = np.nan
    aligned, offset = flat[:-1], flat[1:]  # flat is 16-byte aligned (NumPy), flat[1:] is not
    assert aligned.ctypes.data % 16 == 0 and offset.ctypes.data % 16 != 0
    for x, vector in ((aligned, 16 // np.dtype(dtype).itemsize), (offset, 1)):
        launches.clear()
        y = cupy_rawkernel.relu_forward(x)
        np.testing.assert_array_equal(y, np.where(x > 0, x, 0) + np.where(np.isnan(x), np.nan, 0))
        dy = rng.standard_normal(x.shape).astype(dtype)
        if vector == 1:
            dy = np.concatenate([[0], dy]).astype(dtype)[1:]  # misaligned too
        np.testing.assert_array_equal(cupy_rawkernel.relu_backward(dy, y), np.where(y > 0, dy, 0))
        assert [dict(m.defines)["VEC"] for m, *_ in launches] == [vector, vector]
