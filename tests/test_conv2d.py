"""conv2d against scipy.signal (reference.conv2d), gradients against central differences."""
import itertools

import numpy as np
import pytest

import gpuconv
import gpuconv.functional as F
import reference as ref
from gpuconv.kernels import cpu

STRIDES = [1, 2, (2, 3)]
PADDINGS = [0, 1, (1, 2), ((0, 2), (1, 0)), "valid", "same"]
DILATIONS = [1, 2, (1, 2)]
# (N, C, H, W, K, R, S): odd sizes, non-square images and kernels
GEOMETRIES = [(2, 3, 9, 11, 4, 3, 3), (1, 2, 8, 7, 3, 2, 3), (3, 1, 13, 6, 2, 5, 1), (2, 4, 7, 10, 5, 1, 4)]
CASES = [(g, s, p, d) for (s, p, d), g in zip(itertools.product(STRIDES, PADDINGS, DILATIONS),
                                                 itertools.cycle(GEOMETRIES))]


def case_arrays(rng, geometry, dtype=np.float64):
    N, C, H, W, K, R, S = geometry
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    return x, w, b


def expected(x, w, b, stride, padding, dilation, relu=False):
    stride, dilation = ref.pair(stride), ref.pair(dilation)
    pads = ref.explicit_padding(padding, x.shape[2:], w.shape[2:], stride, dilation)
    return ref.conv2d(x, w, b, stride, pads, dilation, relu)


@pytest.mark.parametrize("geometry,stride,padding,dilation", CASES)
def test_forward_matches_scipy(rng, geometry, stride, padding, dilation):
    x, w, b = case_arrays(rng, geometry)
    y = F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation)
    np.testing.assert_allclose(y.numpy(), expected(x, w, b, stride, padding, dilation), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_float32_forward(rng, geometry):
    x, w, b = case_arrays(rng, geometry, np.float32)
    y = F.conv2d(x, w, b, stride=2, padding="same", dilation=1)
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


def test_fused_relu(rng):
    x, w, b = case_arrays(rng, GEOMETRIES[0])
    y = F.conv2d(x, w, b, padding="same", activation="relu")
    np.testing.assert_allclose(y.numpy(), expected(x, w, b, 1, "same", 1, relu=True), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("workspace_bytes", [1, 3000, 40000])
def test_chunked_workspace_gives_same_result(rng, workspace_bytes):
    """Tiny budgets force chunking by output rows (1 byte: one row at a time) and by image groups."""
    x, w, b = case_arrays(rng, (5, 3, 11, 9, 4, 3, 2))
    dy = rng.standard_normal((5, 4, 6, 9))
    geometry = ((2, 1), ((1, 1), (1, 0)), (1, 1))
    y = cpu.conv2d_forward(x, w, b, *geometry, workspace_bytes=workspace_bytes)
    np.testing.assert_allclose(y, ref.conv2d(x, w, b, *geometry), rtol=1e-12, atol=1e-12)
    dx = cpu.conv2d_backward_input(dy, w, x.shape, *geometry, workspace_bytes=workspace_bytes)
    dw = cpu.conv2d_backward_weight(dy, x, w.shape, *geometry, workspace_bytes=workspace_bytes)
    np.testing.assert_allclose(dx, cpu.conv2d_backward_input(dy, w, x.shape, *geometry), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dw, cpu.conv2d_backward_weight(dy, x, w.shape, *geometry), rtol=1e-12, atol=1e-12)


def test_workspace_stays_under_budget(rng, monkeypatch):
    requested = []
    original = cpu._scratch
    monkeypatch.setattr(cpu, "_scratch", lambda count, dtype: requested.append(count * np.dtype(dtype).itemsize)
                        or original(count, dtype))
    x, w, _ = case_arrays(rng, (64, 8, 16, 16, 8, 3, 3), np.float32)
    budget = 64 << 10
    cpu.conv2d_forward(x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), workspace_bytes=budget)
    assert requested and max(requested) <= budget
    assert cpu._budget(1 << 40) == cpu.WORKSPACE_LIMIT and 2 * cpu.WORKSPACE_LIMIT <= 256 << 20


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


GRAD_CASES = [((2, 2, 5, 6, 3, 3, 2), 1, "same", 1), ((1, 2, 7, 6, 2, 2, 3), (2, 1), ((1, 0), (2, 1)), 1),
              ((2, 1, 8, 7, 2, 3, 3), 2, "same", (2, 1)), ((1, 3, 6, 5, 2, 1, 1), 1, "valid", 1)]


@pytest.mark.parametrize("geometry,stride,padding,dilation", GRAD_CASES)
def test_gradients_central_differences(rng, geometry, stride, padding, dilation):
    x, w, b = case_arrays(rng, geometry)
    ref.check_gradients(lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation),
                        [x, w, b])


def test_gradients_fused_relu(rng):
    x, w, b = case_arrays(rng, (1, 2, 5, 5, 2, 3, 3))
    y = expected(x, w, b, 1, "same", 1)
    b -= np.where(np.abs(y) < 1e-3, 1e-2, 0).mean()  # keep pre-activations away from the kink at 0
    ref.check_gradients(lambda x, w, b: F.conv2d(x, w, b, padding="same", activation="relu"), [x, w, b])


def test_backward_is_deterministic(rng):
    x, w, _ = case_arrays(rng, (16, 8, 12, 12, 8, 3, 3), np.float32)
    dy = rng.standard_normal((16, 8, 12, 12)).astype(np.float32)
    geometry = ((1, 1), ((1, 1), (1, 1)), (1, 1))
    first = (cpu.conv2d_backward_input(dy, w, x.shape, *geometry), cpu.conv2d_backward_weight(dy, x, w.shape, *geometry))
    second = (cpu.conv2d_backward_input(dy, w, x.shape, *geometry), cpu.conv2d_backward_weight(dy, x, w.shape, *geometry))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
