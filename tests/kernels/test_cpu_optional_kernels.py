"""The CPU backend's optional kernels (beyond the contract): fused Adam and the split matrix product."""
import numpy as np
import pytest

import gpuconv
from gpuconv import backend
from gpuconv.kernels.cpu import backend as cpu, matmul


@pytest.mark.parametrize("size", [1000, 100_003])  # one chunk on one thread; ragged chunks and parts
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_update_against_the_formula_in_float64(rng, dtype, size):
    p, g = rng.standard_normal(size).astype(dtype), rng.standard_normal(size).astype(dtype)
    m, v = (rng.standard_normal(size) * 0.1).astype(dtype), rng.random(size).astype(dtype)
    b1, b2, eps, step = 0.9, 0.999, 1e-7, 3e-3
    m64 = b1 * m.astype(np.float64) + (1 - b1) * g
    v64 = b2 * v.astype(np.float64) + (1 - b2) * g.astype(np.float64) ** 2
    p64 = p - step * m64 / (np.sqrt(v64) + eps)
    cpu.adam_update(p, g, m, v, b1, b2, eps, step)
    tolerance = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(m, m64, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(v, v64, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(p, p64, rtol=tolerance, atol=tolerance)


def test_adam_takes_the_fused_kernel_and_marks_the_parameter_changed(rng, monkeypatch):
    calls = []
    original = cpu.adam_update
    monkeypatch.setattr(cpu, "adam_update", lambda *a: calls.append(a[0].shape) or original(*a))
    weight = gpuconv.Tensor(rng.standard_normal((3, 4)).astype(np.float32), requires_grad=True)
    expected = weight.data.copy()
    weight.grad = np.ones((3, 4), np.float32)
    version = weight._version
    gpuconv.optimizers.Adam(0.1).step([weight])
    assert calls == [(3, 4)] and weight._version == version + 1
    np.testing.assert_allclose(weight.data, expected - 0.1, rtol=1e-5)  # first step: lr * g / |g|
    assert backend.optional_kernel("adam_update", weight.data) is cpu.adam_update


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(256, 300, 128), (64, 3136, 128), (3136, 64, 128), (64, 128, 3136), (5, 7, 3),
                                   (37, 501, 1003)])
def test_split_matmul_equals_numpy_and_repeats_itself(rng, shape, dtype):
    """Split by rows or by columns (whichever operand is larger), each operand C or F (a transposed view, as
    the dense layer's gradients pass them), against float64 products."""
    m, k, n = shape
    a, b = rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype)
    expected = a.astype(np.float64) @ b
    tolerance = dict(rtol=1e-4, atol=1e-4 * np.sqrt(k)) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12 * k)
    got = matmul.matmul(a, b)
    assert got.dtype == dtype and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, **tolerance)
    np.testing.assert_array_equal(got, matmul.matmul(a, b))
    for a_layout, b_layout in ((a.T.copy().T, b), (a, b.T.copy().T), (a.T.copy().T, b.T.copy().T)):
        np.testing.assert_allclose(matmul.matmul(a_layout, b_layout), expected, **tolerance)
    np.testing.assert_allclose(matmul.matmul(b.T, a.T), expected.T, **tolerance)  # both transposed views


def test_split_matmul_leaves_other_products_to_numpy(rng):
    a, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4, 5))
    np.testing.assert_array_equal(matmul.matmul(a, b), a @ b)
    np.testing.assert_array_equal(matmul.matmul(a[0], b[0].astype(np.float32)), a[0] @ b[0].astype(np.float32))
