"""The Tensor autograd: every op against central differences, accumulation, graph sharing."""
import numpy as np
import pytest

import gpuconv
import gpuconv.functional as F
import reference as ref
from gpuconv import Tensor


def test_elementwise_ops_with_broadcasting(rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((1, 4)) + 3.0
    ref.check_gradients(lambda a, b: a + b, [a, b])
    ref.check_gradients(lambda a, b: a - b, [a, b])
    ref.check_gradients(lambda a, b: a * b, [a, b])
    ref.check_gradients(lambda a, b: a / b, [a, b])
    ref.check_gradients(lambda a, b: -(2.0 * a) + b * 3.0 - 1.0, [a, b])


def test_matmul_reshape_transpose_sum_mean(rng):
    a, b = rng.standard_normal((3, 5)), rng.standard_normal((5, 2))
    ref.check_gradients(lambda a, b: a @ b, [a, b])
    ref.check_gradients(lambda a, b: (a.reshape(5, 3).transpose() @ b.T.reshape(1, 10).reshape(5, 2)), [a, b])
    c = rng.standard_normal((2, 3, 4))
    ref.check_gradients(lambda c: c.transpose(2, 0, 1).sum(axis=1), [c])
    ref.check_gradients(lambda c: c.mean(axis=(0, 2), keepdims=True), [c])
    ref.check_gradients(lambda c: c.sum(axis=-1), [c])
    ref.check_gradients(lambda c: c.mean().reshape(1), [c])


def test_a_tensor_used_twice_gets_both_contributions():
    x = Tensor(np.array([2.0, -3.0]), requires_grad=True)
    (x * x + x).sum().backward()
    np.testing.assert_array_equal(x.grad, 2 * x.data + 1)


def test_gradients_accumulate_across_backward_calls():
    x = Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad, [6.0, 6.0])


def test_conv_pool_relu_chain(backend_name, rng):
    x = rng.standard_normal((2, 2, 8, 8))
    w = rng.standard_normal((3, 2, 3, 3)) * 0.5
    b = rng.standard_normal(3) * 0.1

    def net(x, w, b):
        return F.avg_pool2d(F.relu(F.conv2d(x, w, b, padding="same")), 2).reshape(2, -1).sum(axis=1)

    ref.check_gradients(net, [x, w, b], rtol=1e-4, atol=1e-6)


def test_scalar_backward_default_and_errors():
    x = Tensor(np.array([1.0, 2.0], np.float32), requires_grad=True)
    y = (x * x).sum()
    assert y.shape == () and y.dtype == np.float32
    y.backward()
    np.testing.assert_array_equal(x.grad, [2.0, 4.0])
    with pytest.raises(ValueError, match="grad must be given"):
        (x * 2.0).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(2)).sum().backward()


def test_no_grad_records_nothing():
    x = Tensor(np.ones(3), requires_grad=True)
    with gpuconv.no_grad():
        y = x * 2.0
    assert not y.requires_grad and y._ctx is None


def test_tensor_basics():
    t = Tensor([[1.0, 2.0], [3.0, 4.0]])
    assert t.dtype == np.float32 and t.shape == (2, 2) and t.ndim == 2 and len(t) == 2
    assert isinstance(t.numpy(), np.ndarray)
    a = np.arange(3.0)
    assert Tensor(a).data is a  # arrays are kept as given (float64 stays float64)
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3), requires_grad=True)


def test_only_required_gradients_are_computed(rng):
    x, w = rng.standard_normal((1, 1, 5, 5)), Tensor(rng.standard_normal((1, 1, 3, 3)), requires_grad=True)
    F.conv2d(x, w).sum().backward()
    assert w.grad is not None and w.grad.shape == (1, 1, 3, 3)


def test_gradient_keeps_each_tensors_dtype(rng):
    x = Tensor(rng.standard_normal((1, 1, 5, 5)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((1, 1, 3, 3)).astype(np.float32), requires_grad=True)
    scale = Tensor(np.float64(2.0))  # a float64 operand downstream of the conv
    (F.conv2d(x, w) * scale).sum().backward()
    assert x.grad.dtype == np.float32 and w.grad.dtype == np.float32
