"""Regression tests of the hardening issue's findings on the ops and the autograd (numbers are the issue's)."""
import threading

import numpy as np
import pytest

import gpuconv
import gpuconv.functional as F
import reference as ref
from gpuconv import Tensor


def test_2_zero_channels_and_zero_filters(rng):
    y = F.conv2d(np.zeros((2, 0, 5, 5)), np.zeros((0, 0, 3, 3)), padding="same")
    assert y.shape == (2, 0, 5, 5)
    x, w = Tensor(np.zeros((2, 0, 5, 5)), requires_grad=True), Tensor(np.zeros((3, 0, 3, 3)), requires_grad=True)
    b = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    y = F.conv2d(x, w, b, padding="same")
    np.testing.assert_array_equal(y.numpy(), np.broadcast_to(b.data[None, :, None, None], (2, 3, 5, 5)))
    y.sum().backward()
    assert x.grad.shape == (2, 0, 5, 5) and w.grad.shape == (3, 0, 3, 3)
    np.testing.assert_array_equal(b.grad, [50.0, 50.0, 50.0])


@pytest.mark.parametrize("axes", [(-1, 0, 1), (2, -3, -2), (-1, -2, -3), (0, 2, -2)])
def test_4_transpose_with_negative_axes_has_the_right_gradient(rng, axes):
    a = rng.standard_normal((2, 3, 4))
    ref.check_gradients(lambda t: t.transpose(*axes) * Tensor(np.arange(24.0).reshape(a.transpose(axes).shape)),
                        [a])
    with pytest.raises(ValueError, match=r"axes must be a permutation of the 3 axes"):
        Tensor(a).transpose(0, 0, 1)
    with pytest.raises(ValueError, match=r"axes must be a permutation"):
        Tensor(a).transpose(0, 3, 1)


def test_5_no_grad_is_per_thread():
    x = Tensor(np.ones(3), requires_grad=True)
    inside, release, results = threading.Event(), threading.Event(), {}

    def infer():
        with gpuconv.no_grad():
            inside.set()
            release.wait(10)
            results["worker"] = (x * 2.0).requires_grad

    worker = threading.Thread(target=infer)
    worker.start()
    inside.wait(10)
    results["main"] = (x * 2.0).requires_grad  # another thread is inside no_grad: this one still records
    release.set()
    worker.join(10)
    assert results == {"worker": False, "main": True}
    # two overlapping blocks in two threads leave recording on everywhere afterwards
    first, second = threading.Event(), threading.Event()

    def block(entered, wait_for):
        with gpuconv.no_grad():
            entered.set()
            wait_for.wait(10)

    a = threading.Thread(target=block, args=(first, second))
    b = threading.Thread(target=block, args=(second, first))
    a.start(), b.start(), a.join(10), b.join(10)
    assert (x * 2.0).requires_grad and gpuconv.tensor.is_grad_enabled()


@pytest.mark.parametrize("change", ["input", "weight", "relu output", "fused relu output"])
def test_6_an_array_changed_in_place_before_backward_is_refused(rng, change):
    x = Tensor(rng.standard_normal((1, 2, 5, 5)), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 2, 3, 3)), requires_grad=True)
    if change == "relu output":
        y = F.relu(F.conv2d(x, w))
        y.data *= 2.0  # through the tensor: a new version
        name = r"ReLU's backward needs its output"
    elif change == "fused relu output":
        y = F.conv2d(x, w, activation="relu")
        y[0, 0] = 5.0
        name = r"Conv2d's backward needs its output"
    else:
        y = F.conv2d(x, w)
        tensor = x if change == "input" else w
        tensor.data -= 1.0
        name = rf"Conv2d's backward needs its {'x' if change == 'input' else 'weight'} Tensor\(shape="
    with pytest.raises(RuntimeError, match=name + r".*modified in place since \(version 1, expected 0\)"):
        y.sum().backward()


def test_6_changes_after_backward_or_not_saved_are_fine(rng):
    x = Tensor(rng.standard_normal((4,)), requires_grad=True)
    y = (x + 1.0) * 3.0
    x.data += 1.0  # Add saved nothing of x: its backward does not read it
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, np.full(4, 3.0))
    w = Tensor(rng.standard_normal((2, 1, 3, 3)), requires_grad=True)
    F.conv2d(np.ones((1, 1, 4, 4)), w).sum().backward()
    w.data -= 0.1 * w.grad  # an optimizer step after backward
    F.conv2d(np.ones((1, 1, 4, 4)), w).sum().backward()  # a new forward: new versions recorded


def test_7_relu_keeps_a_0d_shape():
    x = Tensor(np.array(-2.0), requires_grad=True)
    y = F.relu(x)
    assert y.shape == () and y.numpy() == 0
    y.backward()
    assert x.grad.shape == () and x.grad == 0
    x = Tensor(np.array(3.0, np.float32), requires_grad=True)
    F.relu(x).backward()
    assert x.grad.shape == () and x.grad == 1


@pytest.mark.parametrize("kernel", [(0, 3), (3, 0), (0, 0)])
def test_8_a_kernel_of_zero_height_or_width_is_refused(kernel):
    with pytest.raises(ValueError, match=r"weight must have a kernel of at least 1x1, got KCRS shape \(2, 1, "):
        F.conv2d(np.zeros((1, 1, 5, 5)), np.zeros((2, 1) + kernel))
    with pytest.raises(ValueError, match=r"at least 1x1"):
        F.conv2d_output_shape((1, 1, 5, 5), (2, 1) + kernel)


def test_9_shape_helpers_raise_what_the_ops_raise():
    for call in (lambda: F.conv2d_output_shape((1, 3, 4, 4), (8, 3, 5, 5)),
                 lambda: F.conv2d(np.zeros((1, 3, 4, 4)), np.zeros((8, 3, 5, 5)))):
        with pytest.raises(ValueError, match=r"kernel 5x5 \(extent 5x5 after dilation\) is larger than the padded "
                                             r"input 4x4"):
            call()
    for call in (lambda: F.pool2d_output_shape((1, 3, 2, 2), 3),
                 lambda: F.max_pool2d(np.zeros((1, 3, 2, 2)), 3)):
        with pytest.raises(ValueError, match=r"pool window 3x3 .* larger than the padded input 2x2"):
            call()
    assert F.pool2d_output_shape((2, 3, 7, 9), (3, 2), (2, 3), "same") == (2, 3, 4, 3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(padding=10**6), r"padding 1000000 makes the conv2d output of shape \(1, 1, 2000006, 2000006\) float64"),
    (dict(padding=((0, 10**9), (0, 10**9))), r"padding .* makes the conv2d output .* GiB, more than this "
                                              r"machine's"),
])
def test_20_outputs_larger_than_memory_are_refused_before_allocating(kwargs, match):
    with pytest.raises(ValueError, match=match):
        F.conv2d(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 3, 3)), **kwargs)


@pytest.mark.parametrize("call,name", [
    (lambda: F.conv2d(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 3, 3)), stride=2**63), "stride"),
    (lambda: F.conv2d(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 3, 3)), dilation=(1, 10**40)), "dilation"),
    (lambda: F.conv2d(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 3, 3)), padding=2**64, stride=2**63), "stride"),
    (lambda: F.conv2d(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 3, 3)), padding=(2**40, 0)), "padding"),
    (lambda: F.max_pool2d(np.zeros((1, 1, 8, 8)), 2, strides=10**30), "strides"),
    (lambda: F.avg_pool2d(np.zeros((1, 1, 8, 8)), pool_size=(2, 2**62)), "pool_size"),
])
def test_22_huge_ints_name_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name} must be at most 2147483647"):
        call()


def test_inputs_numpy_cannot_hold_are_refused_by_name():
    with pytest.raises(TypeError, match=r"weight must be an array .* nested lists of numbers; got list"):
        F.conv2d(np.zeros((1, 1, 4, 4)), [[[[1.0, 2.0]]], [[[1.0]]]])
    with pytest.raises(TypeError, match=r"x has dtype object"):
        F.relu([object()])
