"""Pooling and ReLU against plain float64 loops; gradients against central differences."""
import numpy as np
import pytest

import gpuconv.functional as F
import reference as ref
from cases import POOL_CASES, distinct_values, explicit
from gpuconv.backend import to_device

@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("shape,pool_size,strides,padding", POOL_CASES)
def test_pool_forward_matches_loops(backend_name, rng, mode, shape, pool_size, strides, padding):
    x = rng.standard_normal(shape)
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    y = fn(to_device(x), pool_size, strides, padding).numpy()
    pool, stride, pads = explicit(shape, pool_size, strides, padding)
    np.testing.assert_allclose(y, ref.pool2d(x, mode, pool, stride, pads), rtol=1e-12, atol=1e-12)
    y32 = fn(to_device(x.astype(np.float32)), pool_size, strides, padding).numpy()
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape,pool_size,strides,padding", POOL_CASES)
def test_pool_output_sizes(shape, pool_size, strides, padding):
    pool, stride, _ = explicit(shape, pool_size, strides, padding)
    y = F.max_pool2d(np.zeros(shape), pool_size, strides, padding)
    if padding.lower() == "same":
        expected = tuple(-(-i // s) for i, s in zip(shape[2:], stride))
    else:
        expected = tuple((i - p) // s + 1 for i, p, s in zip(shape[2:], pool, stride))
    assert y.shape[2:] == expected


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("shape,pool_size,strides,padding", POOL_CASES)
def test_pool_gradients(backend_name, rng, mode, shape, pool_size, strides, padding):
    x = distinct_values(rng, shape)
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    ref.check_gradients(lambda x: fn(x, pool_size, strides, padding), [x])


def test_seed_max_pool_example():
    """cnn-lecture-leong-filters: 2x2 max-pool of the 4x4 example."""
    x = np.array([[12, 20, 30, 0], [8, 12, 2, 0], [34, 70, 37, 4], [112, 100, 25, 12]], np.float32)
    np.testing.assert_array_equal(F.max_pool2d(x[None, None]).numpy()[0, 0], [[20, 30], [112, 37]])


def test_same_pads_with_minus_infinity_and_averages_real_elements():
    x = -np.arange(1, 10, dtype=np.float64).reshape(1, 1, 3, 3) - 100  # all very negative
    y = F.max_pool2d(x, 2, 2, "same").numpy()[0, 0]  # pads one row/col at bottom/right
    np.testing.assert_array_equal(y, [[-101, -103], [-107, -109]])  # padding (0 or -inf) never chosen
    a = F.avg_pool2d(np.ones((1, 1, 3, 3)), 2, 2, "same").numpy()[0, 0]
    np.testing.assert_array_equal(a, np.ones((2, 2)))  # padded cells not counted


def test_max_pool_tie_goes_to_first_in_row_major_order():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, :2, :2] = [[5, 5], [5, 5]]  # four-way tie: first is (0, 0)
    x[0, 0, :2, 2:] = [[1, 7], [7, 7]]  # three-way tie: first is (0, 3)
    x[0, 0, 2:, :2] = [[0, 0], [0, 0]]  # all equal zeros: first is (2, 0)
    x[0, 0, 2:, 2:] = [[2, 3], [9, 9]]  # tie on the bottom row: first is (3, 2)
    t = F.max_pool2d(x)
    import gpuconv
    xt = gpuconv.Tensor(x, requires_grad=True)
    F.max_pool2d(xt).backward(np.ones((1, 1, 2, 2)))
    expected = np.zeros((4, 4))
    expected[0, 0] = expected[0, 3] = expected[2, 0] = expected[3, 2] = 1
    np.testing.assert_array_equal(xt.grad[0, 0], expected)
    np.testing.assert_array_equal(t.numpy()[0, 0], [[5, 7], [0, 9]])


def test_max_pool_tie_policy_with_overlapping_windows():
    x = np.full((1, 1, 3, 3), 4.0)  # every element ties; 2x2 windows with stride 1
    xt = __import__("gpuconv").Tensor(x, requires_grad=True)
    F.max_pool2d(xt, 2, 1).backward(np.array([[[[1.0, 10.0], [100.0, 1000.0]]]]))
    # each window picks its top-left element
    np.testing.assert_array_equal(xt.grad[0, 0], [[1, 10, 0], [100, 1000, 0], [0, 0, 0]])


def test_max_pool_nan_propagates():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan
    y = F.max_pool2d(x).numpy()[0, 0]
    assert np.isnan(y[0, 0]) and not np.isnan(y[1:, :]).any() and not np.isnan(y[:, 1]).any()


def test_relu_forward_backward(backend_name, rng):
    x = rng.standard_normal((3, 4, 5, 6))
    x[np.abs(x) < 1e-3] = 0.5  # away from the kink
    np.testing.assert_array_equal(F.relu(to_device(x)).numpy(), np.maximum(x, 0))
    ref.check_gradients(F.relu, [x])


def test_relu_gradient_is_zero_at_and_below_zero():
    import gpuconv
    x = gpuconv.Tensor(np.array([-2.0, -0.0, 0.0, 1e-30, 3.0]), requires_grad=True)
    F.relu(x).backward(np.ones(5))
    np.testing.assert_array_equal(x.grad, [0, 0, 0, 1, 1])


def test_relu_any_shape_and_dtype(rng):
    for shape in [(7,), (3, 5), (2, 3, 4, 5, 2)]:
        x = rng.standard_normal(shape).astype(np.float32)
        y = F.relu(x).numpy()
        assert y.dtype == np.float32 and y.shape == shape
        np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_non_contiguous_inputs(rng):
    x = rng.standard_normal((2, 6, 9, 10)).transpose(0, 1, 3, 2)[:, ::2]  # (2, 3, 10, 9), strided view
    assert not x.flags.c_contiguous
    dense = np.ascontiguousarray(x)
    np.testing.assert_array_equal(F.max_pool2d(x, 3, 2, "same").numpy(), F.max_pool2d(dense, 3, 2, "same").numpy())
    np.testing.assert_allclose(F.avg_pool2d(x, 2).numpy(), ref.pool2d(dense, "avg", (2, 2), (2, 2), ((0, 0), (0, 0))))
    np.testing.assert_array_equal(F.relu(x).numpy(), np.maximum(dense, 0))
