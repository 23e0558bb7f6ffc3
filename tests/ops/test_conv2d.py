"""conv2d against scipy.signal (reference.conv2d), gradients against central differences."""
import numpy as np
import pytest

import gpuconv
import gpuconv.functional as F
import reference as ref
from cases import CASES, GEOMETRIES, GRAD_CASES, case_arrays
from gpuconv.backend import to_device

def expected(x, w, b, stride, padding, dilation, relu=False):
    stride, dilation = ref.pair(stride), ref.pair(dilation)
    pads = ref.explicit_padding(padding, x.shape[2:], w.shape[2:], stride, dilation)
    return ref.conv2d(x, w, b, stride, pads, dilation, relu)


@pytest.mark.parametrize("geometry,stride,padding,dilation", CASES)
def test_forward_matches_scipy(backend_name, rng, geometry, stride, padding, dilation):
    x, w, b = case_arrays(rng, geometry)
    y = F.conv2d(*map(to_device, (x, w, b)), stride=stride, padding=padding, dilation=dilation)
    np.testing.assert_allclose(y.numpy(), expected(x, w, b, stride, padding, dilation), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_float32_forward(backend_name, rng, geometry):
    x, w, b = case_arrays(rng, geometry, np.float32)
    y = F.conv2d(*map(to_device, (x, w, b)), stride=2, padding="same", dilation=1)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.numpy(), expected(x, w, b, 2, "same", 1), rtol=1e-4, atol=1e-5)


def test_same_padding_output_size_and_odd_pad_goes_bottom_right(rng):
    x = rng.standard_normal((1, 1, 6, 8))
    w = rng.standard_normal((1, 1, 3, 3))
    y = F.conv2d(x, w, stride=2, padding="same").numpy()
    assert y.shape == (1, 1, 3, 4)  # ceil(6/2), ceil(8/2)
    # total padding is 1 on both axes: TensorFlow puts it after (bottom/right), not before
    np.testing.assert_allclose(y, F.conv2d(x, w, stride=2, padding=((0, 1), (0, 1))).numpy())
    assert not np.allclose(y, F.conv2d(x, w, stride=2, padding=((1, 0), (1, 0))).numpy())


def test_output_size_formula(rng):
    x = rng.standard_normal((1, 1, 17, 12))
    w = rng.standard_normal((2, 1, 3, 2))
    y = F.conv2d(x, w, stride=(3, 2), padding=((2, 1), (0, 3)), dilation=(2, 3))
    oh = (17 + 3 - 2 * 2 - 1) // 3 + 1
    ow = (12 + 3 - 3 * 1 - 1) // 2 + 1
    assert y.shape == (1, 2, oh, ow)
    assert F.conv2d_output_shape(x.shape, w.shape, (3, 2), ((2, 1), (0, 3)), (2, 3)) == y.shape


IMAGE_5x5 = np.array([[0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [1, 0, 0, 1, 1], [0, 1, 1, 0, 1], [1, 1, 1, 1, 1]], float)


def test_seed_sharpen_examples():
    """cnn-lecture-leong-filters: the 5x5 image with the sharpen kernel (its one misprint corrected to 4)."""
    x, w = IMAGE_5x5[None, None], gpuconv.signal.SHARPEN.astype(float)[None, None]
    np.testing.assert_array_equal(F.conv2d(x, w).numpy()[0, 0], [[3, 3, -2], [-3, -3, 4], [3, 3, -4]])
    np.testing.assert_array_equal(F.conv2d(x, w, padding=1).numpy()[0, 0],
                                  [[-1, 3, 3, -1, 0], [-2, 3, 3, -2, -1], [5, -3, -3, 4, 3],
                                   [-3, 3, 3, -4, 3], [4, 2, 2, 3, 3]])
    np.testing.assert_array_equal(F.conv2d(x, w, padding=1, stride=2).numpy()[0, 0],
                                  [[-1, 3, 0], [5, -3, 3], [4, 2, 3]])


def test_seed_diagonal_filter_and_box_filter():
    """cnn-lecture-prevost-keras: the 6x6 image with the diagonal filter; the 1/9 box filter step."""
    image = np.array([[1, 0, 0, 0, 0, 1], [0, 1, 0, 0, 1, 0], [0, 0, 1, 1, 0, 0],
                      [1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 1, 0]], float)
    diagonal = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float)
    vertical = np.array([[-1, 1, -1]] * 3, float)
    y = F.conv2d(image[None, None], np.stack([diagonal, vertical])[:, None]).numpy()[0]
    assert y.shape == (2, 4, 4)  # "two 4x4 images forming a 2x4x4 matrix"
    np.testing.assert_array_equal(y[0], [[3, -1, -3, -1], [-3, 1, 0, -3], [-3, -3, 0, 1], [3, -2, -2, -1]])
    np.testing.assert_array_equal(F.conv2d(image[None, None], diagonal[None, None], stride=2).numpy()[0, 0],
                                  [[3, -3], [-3, 0]])
    box_input = np.array([[1, 2, 0, 1, 3], [2, 1, 4, 2, 2], [1, 0, 1, 0, 1], [1, 2, 1, 0, 2], [2, 5, 3, 1, 2]],
                         float)
    y = F.conv2d(box_input[None, None], np.full((1, 1, 3, 3), 1 / 9)).numpy()[0, 0]
    assert y[0, 0] == pytest.approx(12 / 9)


def test_fused_relu(backend_name, rng):
    x, w, b = case_arrays(rng, GEOMETRIES[0])
    y = F.conv2d(*map(to_device, (x, w, b)), padding="same", activation="relu")
    np.testing.assert_allclose(y.numpy(), expected(x, w, b, 1, "same", 1, relu=True), rtol=1e-12, atol=1e-12)


def test_non_contiguous_inputs(rng):
    x = rng.standard_normal((3, 4, 12, 10)).transpose(0, 1, 3, 2)[:, ::2]  # (3, 2, 10, 12), strided
    w = rng.standard_normal((2, 3, 3, 5)).transpose(1, 0, 3, 2)[:, :, ::2]  # (3, 2, 3, 3), strided
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    y = F.conv2d(x, w, padding="same")
    np.testing.assert_allclose(y.numpy(), expected(np.ascontiguousarray(x), np.ascontiguousarray(w), None,
                                                   1, "same", 1), rtol=1e-12, atol=1e-12)


def test_empty_batch(rng):
    x = np.zeros((0, 2, 5, 5), np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    assert F.conv2d(x, w, padding="same").shape == (0, 3, 5, 5)


@pytest.mark.parametrize("geometry,stride,padding,dilation", GRAD_CASES)
def test_gradients_central_differences(backend_name, rng, geometry, stride, padding, dilation):
    x, w, b = case_arrays(rng, geometry)
    ref.check_gradients(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation),
                        [x, w, b])


def test_gradients_fused_relu(backend_name, rng):
    x, w, b = case_arrays(rng, (1, 2, 5, 5, 2, 3, 3))
    y = expected(x, w, b, 1, "same", 1)
    b -= np.where(np.abs(y) < 1e-3, 1e-2, 0).mean()  # keep pre-activations away from the kink at 0
    ref.check_gradients(lambda x, w, b: F.conv2d(x, w, b, padding="same", activation="relu"), [x, w, b])
