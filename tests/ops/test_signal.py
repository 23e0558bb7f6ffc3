"""gpuconv.signal equals scipy.signal for every mode x boundary, including kernels larger than the image."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import signal as scipy_signal

import gpuconv.signal as gs

MODES = ["full", "same", "valid"]
BOUNDARIES = ["fill", "wrap", "symm"]
SHAPES = [((7, 9), (3, 3)), ((6, 5), (2, 4)), ((5, 8), (5, 1)), ((9, 7), (4, 4)), ((3, 4), (6, 7)),
          ((4, 4), (4, 4))]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("name", ["correlate2d", "convolve2d"])
def test_matches_scipy(rng, mode, boundary, shapes, name):
    a, b = rng.standard_normal(shapes[0]), rng.standard_normal(shapes[1])
    ours, theirs = getattr(gs, name), getattr(scipy_signal, name)
    expected = theirs(a, b, mode=mode, boundary=boundary, fillvalue=0.5)
    got = ours(a, b, mode=mode, boundary=boundary, fillvalue=0.5)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 6), st.integers(1, 6),
       st.sampled_from(MODES), st.sampled_from(BOUNDARIES), st.sampled_from(["correlate2d", "convolve2d"]),
       st.integers(0, 2**31 - 1))
def test_property_random_shapes(h1, w1, h2, w2, mode, boundary, name, seed):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((h1, w1)), rng.standard_normal((h2, w2))
    theirs = getattr(scipy_signal, name)
    try:
        expected = theirs(a, b, mode=mode, boundary=boundary)
    except ValueError:
        with pytest.raises(ValueError, match="valid"):
            getattr(gs, name)(a, b, mode=mode, boundary=boundary)
        return
    np.testing.assert_allclose(getattr(gs, name)(a, b, mode=mode, boundary=boundary), expected,
                               rtol=1e-12, atol=1e-12)


def test_dtypes_follow_scipy(rng):
    a = rng.integers(-5, 5, (6, 7))
    k = np.array([[1, 2], [3, 4]])
    expected = scipy_signal.convolve2d(a, k, boundary="symm")
    got = gs.convolve2d(a, k, boundary="symm")
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    # the fill value is converted to the integer result first, as scipy does (1.5 fills with 1)
    np.testing.assert_array_equal(gs.correlate2d(a, k, fillvalue=1.5), scipy_signal.correlate2d(a, k, fillvalue=1.5))
    a32 = rng.standard_normal((8, 8)).astype(np.float32)
    got = gs.correlate2d(a32, gs.SOBEL_LEFT, mode="same")
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, scipy_signal.correlate2d(a32, gs.SOBEL_LEFT, mode="same"), rtol=1e-5, atol=1e-5)


def test_lecture_filters():
    assert set(gs.FILTERS) >= {"sharpen", "laplacian", "emboss", "outline", "sobel_top", "sobel_left",
                               "gaussian_blur"}
    np.testing.assert_array_equal(gs.SHARPEN, [[0, -1, 0], [-1, 5, -1], [0, -1, 0]])
    np.testing.assert_array_equal(gs.SOBEL_TOP, [[1, 2, 1], [0, 0, 0], [-1, -2, -1]])
    assert gs.GAUSSIAN_BLUR.sum() == pytest.approx(1.0)
    assert gs.LAPLACIAN.sum() == 0 and gs.OUTLINE.sum() == 0
    with pytest.raises(ValueError):
        gs.SHARPEN[0, 0] = 1  # constants are read-only
    flat = np.full((6, 6), 3.0)
    assert np.all(gs.correlate2d(flat, gs.LAPLACIAN, mode="valid") == 0)  # edge filters ignore flat regions


def test_bad_arguments():
    with pytest.raises(ValueError, match="in1 must be a 2-D"):
        gs.correlate2d(np.ones(3), np.ones((2, 2)))
    with pytest.raises(ValueError, match="mode"):
        gs.correlate2d(np.ones((3, 3)), np.ones((2, 2)), mode="middle")
    with pytest.raises(ValueError, match="boundary"):
        gs.correlate2d(np.ones((3, 3)), np.ones((2, 2)), boundary="reflect101")
    with pytest.raises(TypeError, match="in2 has dtype complex"):
        gs.convolve2d(np.ones((3, 3)), np.ones((2, 2), complex))
    with pytest.raises(ValueError, match="at least as large"):
        gs.correlate2d(np.ones((3, 5)), np.ones((5, 3)), mode="valid")
