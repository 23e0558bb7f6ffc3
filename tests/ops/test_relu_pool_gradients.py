"""A max-pool over a ReLU output carries the ReLU's mask on its small gradient, and the ReLU's own
full-size backward pass is then skipped, but only when the pool is the ReLU output's only consumer.
Gradients against float64 central differences in every arrangement, and the skip itself observed."""
import numpy as np
import pytest

import gpuconv
import gpuconv.functional as F
import reference as ref
from gpuconv import backend


def _arrays(rng):
    x = rng.standard_normal((2, 2, 8, 8))
    w = rng.standard_normal((3, 2, 3, 3)) * 0.5
    b = rng.standard_normal(3) * 0.3
    return x, w, b


@pytest.mark.parametrize("pool", [(2, None, "valid"), (3, 2, "valid"), (2, None, "same"), (3, 1, "same")])
def test_conv_relu_then_max_pool(backend_name, rng, pool):
    """Fused conv ReLU, one consumer: windows tiling or overlapping, 'same' padding."""
    x, w, b = _arrays(rng)
    size, strides, padding = pool
    ref.check_gradients(lambda x, w, b: F.max_pool2d(F.conv2d(x, w, b, padding="same", activation="relu"), size,
                                                     strides, padding), [x, w, b], rtol=1e-4, atol=1e-6)


def test_relu_function_then_max_pool(backend_name, rng):
    x, w, b = _arrays(rng)
    ref.check_gradients(lambda x, w, b: F.max_pool2d(F.relu(F.conv2d(x, w, b, padding="same"))), [x, w, b],
                        rtol=1e-4, atol=1e-6)


def test_relu_output_with_a_second_consumer_keeps_its_mask(backend_name, rng):
    """The conv's output also feeds a product: its gradient is a new sum, masked by the ReLU as usual."""
    x, w, b = _arrays(rng)
    c = rng.standard_normal((2, 3, 8, 8))

    def net(x, w, b, c):
        y = F.conv2d(x, w, b, padding="same", activation="relu")
        return F.max_pool2d(y).sum() + (y * c).sum()

    ref.check_gradients(net, [x, w, b, c], rtol=1e-4, atol=1e-6)

    def net_relu(x, w, b, c):
        y = F.relu(F.conv2d(x, w, b, padding="same"))
        return (F.max_pool2d(y) * 2.0).sum() + (y * c).mean()

    ref.check_gradients(net_relu, [x, w, b, c], rtol=1e-4, atol=1e-6)


def test_average_pool_and_max_pool_of_non_relu_inputs_are_unchanged(backend_name, rng):
    x, w, b = _arrays(rng)
    ref.check_gradients(lambda x, w, b: F.avg_pool2d(F.conv2d(x, w, b, padding="same", activation="relu")),
                        [x, w, b], rtol=1e-4, atol=1e-6)
    ref.check_gradients(lambda x, w, b: F.max_pool2d(F.conv2d(x, w, b, padding="same")), [x, w, b],
                        rtol=1e-4, atol=1e-6)


def test_nan_maxima_pass_no_gradient(rng):
    """relu(NaN) is NaN and its gradient is 0; the pool's mask gives the same."""
    x = rng.standard_normal((1, 1, 4, 4))
    w = np.ones((1, 1, 1, 1))
    x[0, 0, 0, 0] = np.nan
    xt, wt = gpuconv.Tensor(x, requires_grad=True), gpuconv.Tensor(w, requires_grad=True)
    F.max_pool2d(F.conv2d(xt, wt, activation="relu")).backward(np.ones((1, 1, 2, 2)))
    assert xt.grad[0, 0, 0, 0] == 0 and np.isfinite(xt.grad).all()
    expected = np.zeros((4, 4))
    y = np.maximum(x[0, 0], 0)
    for i in range(2):
        for j in range(2):
            window = y[2 * i:2 * i + 2, 2 * j:2 * j + 2]
            if not np.isnan(window).any() and window.max() > 0:
                r, s = np.unravel_index(window.argmax(), (2, 2))
                expected[2 * i + r, 2 * j + s] = 1
    np.testing.assert_array_equal(xt.grad[0, 0], expected)


def test_the_full_size_relu_pass_is_skipped_only_for_a_single_consumer(rng, monkeypatch):
    kern = backend.kernels()
    sizes = []
    original = kern.relu_backward
    monkeypatch.setattr(kern, "relu_backward", lambda dy, y: sizes.append(dy.size) or original(dy, y))
    x, w, b = (gpuconv.Tensor(a, requires_grad=True) for a in _arrays(rng))
    F.max_pool2d(F.conv2d(x, w, b, padding="same", activation="relu")).sum().backward()
    assert sizes == [2 * 3 * 4 * 4]  # the pooled gradient only: 4x smaller than the conv's output
    sizes.clear()
    y = F.conv2d(x, w, b, padding="same", activation="relu")
    (F.max_pool2d(y).sum() + y.sum()).backward()
    assert sorted(sizes) == [2 * 3 * 4 * 4, 2 * 3 * 8 * 8]  # two consumers: the full-size mask too
