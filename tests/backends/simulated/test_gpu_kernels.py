"""A GPU backend simulated on the host ('numba' on Numba's CUDA simulator, 'cupy' on the CUDA C emulator),
against the float64 references and the CPU backend.

Tiles are tiny (see conftest.py). The whole conv case matrix (cases.SIMULATED_CASES) runs
forward and backward; pooling runs cases.POOL_CASES.
"""
import numpy as np
import pytest

import gpuconv
import gpuconv.functional as F
import reference as ref
from cases import POOL_CASES, SIMULATED_CASES as CASES, case_arrays, conv_case, distinct_values, explicit
from gpu_under_test import BACKEND, conv_with_grads, gpu
from gpuconv import Tensor, use_backend
from gpuconv.kernels.cpu import backend as cpu
from gpuconv.kernels.gpu import tiling


@pytest.mark.parametrize("case", [0, 7, 13, 22, 40])
def test_conv2d_float32_fused_relu(rng, case):
    geometry, stride, padding, dilation = CASES[case]
    x, w, b = (a.astype(np.float32) for a in case_arrays(rng, geometry))
    stride_hw, pads, dilation_hw = conv_case(geometry, stride, padding, dilation)
    y_ref = ref.conv2d(x, w, b, stride_hw, pads, dilation_hw, relu=True)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    y, dx, dw, db = conv_with_grads(BACKEND, x, w, b, dy, stride, padding, dilation, activation="relu")
    assert y.dtype == dx.dtype == dw.dtype == db.dtype == np.float32
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    masked = np.where(y_ref > 0, dy, 0)
    for got, want in zip((dx, dw, db), ref.conv2d_grads(x, w, masked, stride_hw, pads, dilation_hw)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for got, want in zip((y, dx, dw, db), conv_with_grads("cpu", x, w, b, dy, stride, padding, dilation, "relu")):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile", tiling.CONV_TILES)  # the tiny tiles of conftest.py
@pytest.mark.parametrize("case", [3, 29, 53])
def test_every_conv_tile(rng, tile, case):
    geometry, stride, padding, dilation = CASES[case]
    x, w, b = case_arrays(rng, geometry)
    stride_hw, pads, dilation_hw = conv_case(geometry, stride, padding, dilation)
    y = gpu.conv2d_forward(x, w, b, stride_hw, pads, dilation_hw, tile=tile)
    np.testing.assert_allclose(y, ref.conv2d(x, w, b, stride_hw, pads, dilation_hw), rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    dx = gpu.conv2d_backward_input(dy, w, x.shape, stride_hw, pads, dilation_hw, tile=tile)
    np.testing.assert_allclose(dx, ref.conv2d_grads(x, w, dy, stride_hw, pads, dilation_hw)[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tile", tiling.WEIGHT_GRAD_TILES)
@pytest.mark.parametrize("target_blocks", [1, 3, 1000])
def test_weight_grad_tiles_and_splits(rng, tile, target_blocks):
    geometry, stride, padding, dilation = CASES[10]
    x, w, _ = case_arrays(rng, geometry)
    stride_hw, pads, dilation_hw = conv_case(geometry, stride, padding, dilation)
    dy = rng.standard_normal(ref.conv2d(x, w, None, stride_hw, pads, dilation_hw).shape)
    dw = gpu.conv2d_backward_weight(dy, x, w.shape, stride_hw, pads, dilation_hw, tile=tile,
                                           target_blocks=target_blocks)
    np.testing.assert_allclose(dw, ref.conv2d_grads(x, w, dy, stride_hw, pads, dilation_hw)[1], rtol=1e-10, atol=1e-10)


def test_gradients_central_differences(rng):
    x, w, b = case_arrays(rng, (1, 2, 5, 4, 2, 3, 2))
    with use_backend(BACKEND):
        ref.check_gradients(lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding="same", dilation=(1, 2),
                                                     activation="relu"), [x, w, b])
        ref.check_gradients(lambda x: F.max_pool2d(x, 3, 2, "same"), [distinct_values(rng, (1, 2, 5, 6))])
        ref.check_gradients(lambda x: F.avg_pool2d(x, (2, 3), 1, "same"), [rng.standard_normal((1, 1, 4, 5))])


def test_backward_is_deterministic(rng):
    x, w, b = case_arrays(rng, (2, 3, 5, 9, 3, 3, 3))
    dy = rng.standard_normal((2, 3, 5, 9))
    first = conv_with_grads(BACKEND, x, w, b, dy, 1, "same", 1)
    second = conv_with_grads(BACKEND, x, w, b, dy, 1, "same", 1)
    for a, c in zip(first, second):
        assert np.array_equal(a, c)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("shape,pool_size,strides,padding", POOL_CASES)
def test_pooling_forward_and_backward(rng, mode, shape, pool_size, strides, padding):
    x = distinct_values(rng, shape)
    pool, stride, pads = explicit(shape, pool_size, strides, padding)
    dy = rng.standard_normal(ref.pool2d(x, mode, pool, stride, pads).shape)
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    results = {}
    for backend in (BACKEND, "cpu"):
        with use_backend(backend):
            xt = Tensor(x, requires_grad=True)
            y = fn(xt, pool_size, strides, padding)
            y.backward(dy)
            results[backend] = y.numpy(), xt.grad
    (y, dx), (y_cpu, dx_cpu) = results[BACKEND], results["cpu"]
    np.testing.assert_allclose(y, ref.pool2d(x, mode, pool, stride, pads), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, ref.pool2d_grad(x, dy, mode, pool, stride, pads), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, y_cpu, rtol=1e-12, atol=0)
    np.testing.assert_allclose(dx, dx_cpu, rtol=1e-12, atol=1e-15)
    if mode == "max":
        _, argmax = gpu.pool2d_forward(x, mode, pool, stride, pads)
        assert np.array_equal(argmax, cpu.pool2d_forward(x, mode, pool, stride, pads)[1])


def test_max_pool_ties_and_nan_follow_the_cpu_backend():
    x = np.zeros((1, 2, 5, 6), np.float32)
    x[0, 1, 1, 2] = np.nan
    x[0, 1, 3, 3] = 1.0
    pool, stride, pads = (3, 3), (1, 2), ((1, 1), (0, 1))
    y, argmax = gpu.pool2d_forward(x, "max", pool, stride, pads)
    y_cpu, argmax_cpu = cpu.pool2d_forward(x, "max", pool, stride, pads)
    np.testing.assert_array_equal(y, y_cpu)  # NaN where the window holds one, in the same places
    assert np.isnan(y[0, 1]).any() and not np.isnan(y[0, 0]).any()
    np.testing.assert_array_equal(argmax, argmax_cpu)  # all-zero windows: the first tap in row-major order
    dy = np.arange(y.size, dtype=np.float32).reshape(y.shape)
    np.testing.assert_array_equal(gpu.pool2d_backward(dy, argmax, x.shape, "max", pool, stride, pads),
                                  cpu.pool2d_backward(dy, argmax_cpu, x.shape, "max", pool, stride, pads))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_forward_and_backward(rng, dtype):
    x = rng.standard_normal((3, 5, 7, 11)).astype(dtype)  # more elements than the capped grid has threads
    x.flat[::17] = 0
    x.flat[5] = np.nan
    y = gpu.relu_forward(x)
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0) + np.where(np.isnan(x), np.nan, 0))
    dy = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(gpu.relu_backward(dy, y), np.where(y > 0, dy, 0))


def test_bias_gradient(rng):
    dy = rng.standard_normal((3, 5, 4, 7))
    np.testing.assert_allclose(gpu.conv2d_backward_bias(dy), dy.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_signal_on_the_simulated_gpu(rng):
    scipy_signal = pytest.importorskip("scipy.signal")
    image, kernel = rng.standard_normal((9, 12)), rng.standard_normal((3, 4))
    with use_backend(BACKEND):
        for mode in ("full", "same", "valid"):
            np.testing.assert_allclose(gpuconv.signal.correlate2d(image, kernel, mode),
                                       scipy_signal.correlate2d(image, kernel, mode), rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(gpuconv.signal.convolve2d(image, kernel, mode, boundary="symm"),
                                       scipy_signal.convolve2d(image, kernel, mode, boundary="symm"),
                                       rtol=1e-10, atol=1e-10)


def test_a_small_model_trains_the_same_as_on_the_cpu(rng):
    from gpuconv.layers import Conv2D, Dense, Flatten, MaxPool2D
    x = rng.standard_normal((6, 1, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 6)
    losses = {}
    for backend in (BACKEND, "cpu"):
        with use_backend(backend):
            gpuconv.set_seed(3)
            model = gpuconv.Sequential([Conv2D(3, 3, padding="same", activation="relu"), MaxPool2D(), Flatten(),
                                        Dense(3)], input_shape=(1, 8, 8))
            model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
            losses[backend] = [float(np.ravel(model.train_on_batch(x, labels))[0]) for _ in range(3)]
    assert losses[BACKEND][2] < losses[BACKEND][0]
    np.testing.assert_allclose(losses[BACKEND], losses["cpu"], rtol=1e-5)


def test_host_arrays_are_refused_on_a_real_gpu(monkeypatch):
    monkeypatch.setattr(gpu.ops, "emulated", False)
    with pytest.raises(TypeError, match=rf"x is a host array .*numpy.*'{BACKEND}' \(GPU\).*cupy.asarray"):
        gpu.check_array(np.zeros(3), "x")


def test_out_of_memory_names_the_allocation(monkeypatch):
    def refuse(shape, dtype):
        raise MemoryError("out of memory")
    monkeypatch.setattr(gpu.xp, "empty", refuse)
    with pytest.raises(MemoryError, match=r"allocating the conv2d output: shape \(64, 512, 224, 224\) float32 "
                                          r"\(6272\.0 MiB\)"):
        gpu.conv2d_forward(np.zeros((64, 3, 224, 224), np.float32), np.zeros((512, 3, 1, 1), np.float32),
                                  None, (1, 1), ((0, 0), (0, 0)), (1, 1))


def test_benchmark_suite_runs_the_backend(tmp_path):
    import json
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).parents[3]))
    from bench import counts, suite
    assert suite.main(["--shapes", "tiny", "--backends", BACKEND, "--anchors", "--no-end-to-end",
                       "--repeats", "2", "--warmup", "0", "--out", str(tmp_path)]) == 0
    (directory,) = tmp_path.glob("simulated-gpu-*")
    rows = json.loads((directory / "results.json").read_text())["ops"]
    assert {r["op"] for r in rows} == set(counts.OPS)
    assert all(r["target"] == BACKEND and r["correct"] and r["median_s"] > 0 for r in rows)
