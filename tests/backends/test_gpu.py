"""The GPU backends ('numba' and 'cupy') on a real GPU (marker ``gpu``; skipped without a CUDA GPU and CuPy).

Realistic sizes against the CPU backend and the float64 references, the three
backends on the same inputs, determinism, streams, the errors for arrays on the
wrong device, out-of-memory, and short MNIST training runs.
"""
import numpy as np
import pytest

import gpuconv
import gpuconv.functional as F
import reference as ref
from gpuconv import Tensor, backend, use_backend

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not backend.gpu_present(), reason="needs a CUDA GPU"),
              pytest.mark.usefixtures("poison_gpu_outputs")]  # outputs start as NaN: unwritten elements fail
cupy = pytest.importorskip("cupy") if backend.gpu_present() else None
GPU_BACKENDS = ("numba", "cupy")

# (N, C, H, W, K, R, S, stride, padding): the benchmark shapes, a strided and a dilated one
CONV_SHAPES = [
    (64, 1, 28, 28, 32, 3, 3, 1, "same"),       # mnist_conv1
    (64, 32, 14, 14, 64, 3, 3, 1, "same"),      # mnist_conv2
    (16, 64, 32, 32, 64, 3, 3, 1, "same"),      # cifar_conv (smaller batch)
    (8, 16, 57, 45, 24, 5, 5, 2, "valid"),
    (4, 8, 40, 33, 16, 3, 3, (2, 1), ((2, 0), (1, 3))),
]


def on_backend(name, fn, *arrays):
    with use_backend(name):
        tensors = [Tensor(backend.to_device(a), requires_grad=True) for a in arrays]
        y = fn(*tensors)
        dy = backend.to_device(np.random.default_rng(7).standard_normal(y.shape).astype(y.dtype))
        y.backward(dy)
        return [backend.to_host(y.data)] + [backend.to_host(t.grad) for t in tensors]


def assert_close(got, want, what):
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=what)


@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS)
@pytest.mark.parametrize("shape", CONV_SHAPES)
def test_conv2d_forward_and_gradients_match_the_cpu(gpu_backend, shape):
    N, C, H, W, K, R, S, stride, padding = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((K, C, R, S)) / np.sqrt(C * R * S)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)

    def fn(x, w, b):
        return F.conv2d(x, w, b, stride=stride, padding=padding, activation="relu")

    on_gpu, on_cpu = on_backend(gpu_backend, fn, x, w, b), on_backend("cpu", fn, x, w, b)
    for name, got, want in zip(("y", "dx", "dw", "db"), on_gpu, on_cpu):
        assert_close(got, want, name)


@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS)
def test_float64_conv_matches_the_reference(gpu_backend):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((4, 6, 19, 23)), rng.standard_normal((5, 6, 3, 4))
    y, dx, dw = on_backend(gpu_backend, lambda x, w: F.conv2d(x, w, stride=2, padding="same", dilation=(1, 2)), x, w)
    pads = ref.explicit_padding("same", (19, 23), (3, 4), (2, 2), (1, 2))
    np.testing.assert_allclose(y, ref.conv2d(x, w, None, (2, 2), pads, (1, 2)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("pool,strides,padding", [(2, None, "valid"), (3, 2, "same"), ((3, 2), 1, "valid")])
def test_pooling_matches_the_cpu(gpu_backend, mode, pool, strides, padding):
    x = np.random.default_rng(2).standard_normal((32, 16, 31, 29)).astype(np.float32)
    fn = (lambda x: F.max_pool2d(x, pool, strides, padding)) if mode == "max" else \
        (lambda x: F.avg_pool2d(x, pool, strides, padding))
    for name, got, want in zip(("y", "dx"), on_backend(gpu_backend, fn, x), on_backend("cpu", fn, x)):
        assert_close(got, want, name)


@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS)
def test_relu_matches_the_cpu(gpu_backend):
    x = np.random.default_rng(3).standard_normal((3, 1 << 20)).astype(np.float32)
    for got, want in zip(on_backend(gpu_backend, F.relu, x), on_backend("cpu", F.relu, x)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS)
def test_backward_is_bit_identical_run_to_run(gpu_backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 32, 28, 28)).astype(np.float32)
    w = rng.standard_normal((64, 32, 3, 3)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)

    def fn(x, w, b):
        return F.max_pool2d(F.conv2d(x, w, b, padding="same", activation="relu"), 3, 2, "same")

    first, second = on_backend(gpu_backend, fn, x, w, b), on_backend(gpu_backend, fn, x, w, b)
    for a, c in zip(first, second):
        assert np.array_equal(a, c)


@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS)
def test_kernels_run_on_cupys_current_stream(gpu_backend):
    x = cupy.asarray(np.random.default_rng(5).standard_normal((8, 4, 64, 64)).astype(np.float32))
    w = cupy.asarray(np.random.default_rng(6).standard_normal((8, 4, 3, 3)).astype(np.float32))
    with use_backend(gpu_backend):
        expected = cupy.asnumpy(F.conv2d(x, w, padding=1).data)
        stream = cupy.cuda.Stream(non_blocking=True)
        with stream:
            x2 = x * 1  # CuPy work on the stream that the kernel must wait for
            y = F.relu(F.conv2d(x2, w, padding=1)).data
            result = y.copy()
        stream.synchronize()
    np.testing.assert_allclose(cupy.asnumpy(result), np.maximum(expected, 0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS)
def test_arrays_on_the_wrong_device_are_refused(gpu_backend):
    with use_backend(gpu_backend):
        with pytest.raises(TypeError, match=rf"x is a host array .* backend is '{gpu_backend}'"):
            F.relu(np.ones(3, np.float32))
    with use_backend("cpu"):
        with pytest.raises(TypeError, match=r"x is a GPU array .* backend is 'cpu'"):
            F.relu(cupy.ones(3, cupy.float32))


@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS)
def test_out_of_memory_names_the_sizes(gpu_backend):
    _, total = cupy.cuda.runtime.memGetInfo()
    filters = int(total // (4 * 64 * 64)) + 1024  # 1x1 filters whose output outgrows the whole GPU
    x = cupy.zeros((1, 1, 64, 64), cupy.float32)
    w = cupy.zeros((filters, 1, 1, 1), cupy.float32)
    with use_backend(gpu_backend):
        with pytest.raises(MemoryError, match=rf"GPU out of memory allocating the conv2d output: "
                                              rf"shape \(1, {filters}, 64, 64\) float32"):
            F.conv2d(x, w)


@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS)
def test_short_mnist_run_reaches_the_cpu_accuracy(gpu_backend):
    import os
    import sys
    from gpuconv.datasets import mnist
    try:
        (x_train, y_train), (x_test, y_test) = mnist.load_data(progress=False)
    except mnist.DataError as error:
        pytest.skip(f"MNIST not available here: {error}")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    from train_mnist import build_model, prepare
    accuracy = {}
    for name in (gpu_backend, "cpu"):
        with use_backend(name):
            gpuconv.set_seed(0)
            model = build_model()
            model.compile(optimizer=gpuconv.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"])
            model.fit(prepare(x_train[:12000]), y_train[:12000], batch_size=64, epochs=1, verbose=0)
            accuracy[name] = model.evaluate(prepare(x_test[:5000]), y_test[:5000])[1]
    assert accuracy[gpu_backend] > 0.95
    assert abs(accuracy[gpu_backend] - accuracy["cpu"]) < 0.01, accuracy


@pytest.mark.parametrize("gpu_backend", GPU_BACKENDS)
def test_signal_on_the_gpu_keeps_arrays_where_they_were(gpu_backend):
    scipy_signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(8)
    image, kernel = rng.standard_normal((300, 200)), rng.standard_normal((5, 3))
    expected = scipy_signal.correlate2d(image, kernel, "same", boundary="symm")
    with use_backend(gpu_backend):
        on_host = gpuconv.signal.correlate2d(image, kernel, "same", boundary="symm")
        on_gpu = gpuconv.signal.correlate2d(cupy.asarray(image), cupy.asarray(kernel), "same", boundary="symm")
    assert isinstance(on_host, np.ndarray) and isinstance(on_gpu, cupy.ndarray)
    np.testing.assert_allclose(on_host, expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(cupy.asnumpy(on_gpu), expected, rtol=1e-10, atol=1e-10)


def test_the_three_backends_agree_on_the_same_inputs():
    """cpu, numba and cupy on one random conv + pool + ReLU network, forward and backward, float32 and float64."""
    rng = np.random.default_rng(9)
    for dtype, tolerance in ((np.float32, 1e-4), (np.float64, 1e-11)):
        x = rng.standard_normal((8, 5, 23, 19)).astype(dtype)
        w = (rng.standard_normal((7, 5, 3, 3)) / 6).astype(dtype)
        b = rng.standard_normal(7).astype(dtype)

        def fn(x, w, b):
            y = F.conv2d(x, w, b, stride=(1, 2), padding="same", dilation=(2, 1), activation="relu")
            return F.avg_pool2d(F.max_pool2d(y, 3, 2, "same"), 2, 1)

        results = {name: on_backend(name, fn, x, w, b) for name in ("cpu",) + GPU_BACKENDS}
        for name in GPU_BACKENDS:
            for what, got, want in zip(("y", "dx", "dw", "db"), results[name], results["cpu"]):
                scale = max(1.0, float(np.abs(want).max()))
                np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * scale,
                                           err_msg=f"{name} {what} {np.dtype(dtype).name}")


def test_mnist_example_runs_with_backend_cupy(tmp_path):
    """The README's example script, on the 'cupy' backend, for a short run."""
    import os
    import re
    import subprocess
    import sys
    from gpuconv.datasets import mnist
    try:
        mnist.load_data(progress=False)
    except mnist.DataError as error:
        pytest.skip(f"MNIST not available here: {error}")
    script = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "train_mnist.py")
    result = subprocess.run([sys.executable, script, "--backend", "cupy", "--epochs", "1", "--limit", "6000",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    found = re.search(r"test accuracy ([0-9.]+)%", result.stdout)
    assert found and float(found.group(1)) > 90, result.stdout[-2000:]
