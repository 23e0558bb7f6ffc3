"""The CPU conv algorithms (im2col, Winograd F(2x2, 3x3) and F(4x4, 3x3), direct) against float64
references, each forced by name, and the choice ``'auto'`` makes per pass.

References are independent: scipy.signal (``reference.conv2d``) for the forward pass, float64 NumPy
loops over the taps (``reference.conv2d_grads``) for the gradients.
"""
import numpy as np
import pytest

import reference as ref
from gpuconv.kernels.cpu import backend as cpu, conv, winograd

# (N, C, H, W, K, padding): odd and even sizes, 1-row and 1-column images, paddings of 0..3 and asymmetric
WINOGRAD_CASES = [
    ((2, 5, 9, 11, 4), ((1, 1), (1, 1))),
    ((1, 4, 8, 7, 6), ((0, 0), (0, 0))),
    ((3, 6, 5, 6, 4), ((0, 2), (1, 0))),
    ((2, 4, 14, 14, 8), ((1, 1), (1, 1))),
    ((1, 4, 3, 3, 4), ((2, 2), (2, 2))),
    ((1, 5, 6, 5, 4), ((3, 1), (0, 3))),   # padding past the filter: outputs that see padding only
    ((2, 4, 1, 9, 5), ((1, 1), (1, 1))),   # one input row
    ((1, 4, 10, 1, 4), ((1, 1), (1, 1))),  # one input column
    ((1, 2, 6, 61, 3), ((1, 1), (1, 1))),  # wide rows: with 3000 bytes, blocks of 4-5 tiles a row (vectors)
    # output rows of 8, 16 + a ragged column, and 20 tiles: every vector width of the output tiles, and
    # a row's last vector overlapping the one before
    ((1, 4, 4, 16, 4), ((1, 1), (0, 0))),
    ((2, 4, 5, 33, 4), ((1, 1), (1, 1))),
    ((1, 4, 6, 40, 5), ((0, 1), (1, 1))),
    # F(4x4): rows of 4 full tiles and 3 ragged columns; of 16 full tiles (vectors of 8, the last overlapping)
    ((2, 3, 13, 19, 5), ((1, 1), (1, 1))),
    ((1, 3, 7, 66, 4), ((1, 1), (1, 1))),
    # planes of 4 KiB and more: the weight gradient's pack reads input rows front to back
    ((2, 2, 9, 120, 3), ((1, 1), (1, 1))),
]
DIRECT_CASES = [
    ((2, 1, 9, 11, 4), ((1, 1), (1, 1))),
    ((3, 2, 8, 7, 3), ((0, 0), (0, 0))),
    ((3, 3, 5, 6, 2), ((0, 2), (1, 0))),
    ((2, 1, 28, 28, 5), ((1, 1), (1, 1))),
    ((1, 1, 3, 3, 1), ((2, 2), (2, 2))),
    ((1, 2, 4, 9, 3), ((3, 0), (2, 3))),
]
STRIDE1 = (1, 1)


def _arrays(rng, shape, dtype):
    N, C, H, W, K = shape
    return (rng.standard_normal((N, C, H, W)).astype(dtype), rng.standard_normal((K, C, 3, 3)).astype(dtype),
            rng.standard_normal(K).astype(dtype))


def _tolerance(dtype, expected):
    scale = max(1.0, float(np.abs(expected).max()))
    return dict(rtol=0, atol=(1e-12 if dtype == np.float64 else 2e-5) * scale)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("workspace_bytes", [None, 3000])  # 3000: blocks of a few tiles, split rows and columns
@pytest.mark.parametrize("shape,padding", WINOGRAD_CASES)
@pytest.mark.parametrize("algorithm", ["winograd_2x2", "winograd_4x4"])
def test_winograd_against_float64_references(rng, shape, padding, workspace_bytes, dtype, algorithm):
    x, w, b = _arrays(rng, shape, dtype)
    options = dict(algorithm=algorithm, workspace_bytes=workspace_bytes)
    expected = ref.conv2d(x, w, b, STRIDE1, padding)
    y = cpu.conv2d_forward(x, w, b, STRIDE1, padding, STRIDE1, **options)
    assert y.dtype == dtype and y.shape == expected.shape
    np.testing.assert_allclose(y, expected, **_tolerance(dtype, expected))
    y_relu = cpu.conv2d_forward(x, w, b, STRIDE1, padding, STRIDE1, relu=True, **options)
    np.testing.assert_allclose(y_relu, np.maximum(expected, 0), **_tolerance(dtype, expected))
    unbiased = ref.conv2d(x, w, None, STRIDE1, padding)
    y_unbiased = cpu.conv2d_forward(x, w, None, STRIDE1, padding, STRIDE1, relu=True, **options)
    np.testing.assert_allclose(y_unbiased, np.maximum(unbiased, 0), **_tolerance(dtype, unbiased))
    dy = rng.standard_normal(expected.shape).astype(dtype)
    dx_ref, dw_ref, _ = ref.conv2d_grads(x, w, dy, STRIDE1, padding, STRIDE1)
    dx = cpu.conv2d_backward_input(dy, w, x.shape, STRIDE1, padding, STRIDE1, **options)
    np.testing.assert_allclose(dx, dx_ref, **_tolerance(dtype, dx_ref))
    dw = cpu.conv2d_backward_weight(dy, x, w.shape, STRIDE1, padding, STRIDE1, **options)
    np.testing.assert_allclose(dw, dw_ref, **_tolerance(dtype, dw_ref))


@pytest.mark.parametrize("points", [(0, 1, -1), (0, 1, -1, 2, -2), winograd.F4_POINTS, (0, 1, -1, 2)])
def test_toom_cook_transforms_compute_the_correlation(rng, points):
    """Aᵀ [(G g) ⊙ (Bᵀ d)] is the 1-D correlation of d with g, in float64 to rounding, for F(m, 3) from any
    distinct points; nested, the 2-D form is the 3x3 correlation of an n x n patch."""
    m = len(points) - 1
    AT, G, BT = winograd.toom_cook(m, points)
    assert AT.shape == (m, m + 2) and G.shape == (m + 2, 3) and BT.shape == (m + 2, m + 2)
    assert np.array_equal(BT, np.round(BT))  # Bᵀ scaled to integers
    for _ in range(5):
        d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
        np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), [d[i:i + 3] @ g for i in range(m)], rtol=0, atol=1e-13)
        patch, taps = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
        y = AT @ ((G @ taps @ G.T) * (BT @ patch @ BT.T)) @ AT.T
        expected = [[np.sum(patch[i:i + 3, j:j + 3] * taps) for j in range(m)] for i in range(m)]
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="distinct"):
        winograd.toom_cook(2, (0, 1, 1))


def test_f2_kernels_use_the_toom_cook_transforms():
    """The F(2x2) kernels' hand-written transforms (B_ROWS, F2_AT, _g_rows) are toom_cook's from 0, ±1 (with the
    point at infinity's sign flipped in Bᵀ and Aᵀ alike)."""
    AT, G, BT = winograd.toom_cook(2, (0, 1, -1))
    flip = np.diag([1, 1, 1, -1])
    np.testing.assert_array_equal(winograd.F2_AT, AT @ flip)
    by_rows = np.zeros((4, 4))
    for p, (i1, i2, sign) in enumerate(winograd.B_ROWS):
        by_rows[p, i1], by_rows[p, i2] = 1, sign
    np.testing.assert_array_equal(by_rows, flip @ BT)
    np.testing.assert_array_equal([winograd._g_rows.py_func(*row) for row in np.eye(3)], G.T)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape,padding", DIRECT_CASES)
def test_direct_against_float64_references(rng, shape, padding, dtype):
    x, w, b = _arrays(rng, shape, dtype)
    expected = ref.conv2d(x, w, b, STRIDE1, padding)
    y = cpu.conv2d_forward(x, w, b, STRIDE1, padding, STRIDE1, algorithm="direct")
    np.testing.assert_allclose(y, expected, **_tolerance(dtype, expected))
    y_relu = cpu.conv2d_forward(x, w, None, STRIDE1, padding, STRIDE1, relu=True, algorithm="direct")
    np.testing.assert_allclose(y_relu, ref.conv2d(x, w, None, STRIDE1, padding, relu=True),
                               **_tolerance(dtype, expected))
    dy = rng.standard_normal(expected.shape).astype(dtype)
    _, dw_ref, _ = ref.conv2d_grads(x, w, dy, STRIDE1, padding, STRIDE1)
    dw = cpu.conv2d_backward_weight(dy, x, w.shape, STRIDE1, padding, STRIDE1, algorithm="direct")
    np.testing.assert_allclose(dw, dw_ref, **_tolerance(dtype, dw_ref))


def test_direct_with_no_channels_gives_the_bias(rng):
    y = cpu.conv2d_forward(np.zeros((2, 0, 5, 4)), np.zeros((3, 0, 3, 3)), np.array([1.0, -2.0, 3.0]), STRIDE1,
                           ((1, 1), (1, 1)), STRIDE1, relu=True, algorithm="direct")
    np.testing.assert_array_equal(y, np.broadcast_to(np.array([1.0, 0.0, 3.0])[None, :, None, None], (2, 3, 5, 4)))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("where", ["x", "weight", "dy"])
def test_winograd_leaves_non_finite_inputs_to_im2col(rng, bad, where):
    """Winograd would mix an inf into its whole tile (NaN where the direct sum gives inf or a finite value):
    with any NaN or inf in an input, the call gives exactly im2col's result."""
    x, w, b = _arrays(rng, (2, 4, 7, 8, 5), np.float32)
    padding = ((1, 1), (1, 1))
    dy = rng.standard_normal((2, 5, 7, 8)).astype(np.float32)
    {"x": x, "weight": w, "dy": dy}[where].reshape(-1)[17] = bad
    passes = {  # the passes that read the bad input
        "forward": (lambda a: cpu.conv2d_forward(x, w, b, STRIDE1, padding, STRIDE1, algorithm=a), ("x", "weight")),
        "backward_input": (lambda a: cpu.conv2d_backward_input(dy, w, x.shape, STRIDE1, padding, STRIDE1, algorithm=a),
                           ("dy", "weight")),
        "backward_weight": (lambda a: cpu.conv2d_backward_weight(dy, x, w.shape, STRIDE1, padding, STRIDE1,
                                                                 algorithm=a), ("dy", "x")),
    }
    for name, (run, reads) in passes.items():
        if where in reads:
            expected = run("im2col")
            assert not np.isfinite(expected).all(), name
            for algorithm in ("winograd_2x2", "winograd_4x4", "auto"):
                np.testing.assert_array_equal(run(algorithm), expected, err_msg=f"{name} {algorithm}")


def test_winograd_input_limit_and_magnitudes():
    assert winograd.max_magnitude(np.array([1.0, -3.0, 2.0], np.float32)) == 3.0
    assert winograd.max_magnitude(np.array([-7.5, 2.0])) == 7.5
    for bad in (np.inf, -np.inf, np.nan):
        assert winograd.max_magnitude(np.array([1.0, bad], np.float32)) == np.inf
        assert winograd.input_limit(np.float32, 9, winograd.max_magnitude(np.array([bad]))) == 0.0
    limit = winograd.input_limit(np.float32, 9 * 64, 10.0)
    assert 1e25 < limit < 1e33  # float32: room for inputs up to ~1e30 against filters of 10
    assert winograd.input_limit(np.float64, 10**6) > 1e140  # two checked inputs share the room
    # F(4x4)'s transforms grow values more: less room
    assert winograd.input_limit(np.float32, 9 * 64, 10.0, tile=4) < limit / 2


def test_winograd_leaves_huge_inputs_to_im2col(rng):
    """Finite inputs large enough for Winograd's sums to overflow float32: the result is im2col's, exactly."""
    x, w, b = _arrays(rng, (2, 4, 6, 6, 4), np.float32)
    x[1, 2, 3, 3] = 3e37
    padding = ((1, 1), (1, 1))
    expected = cpu.conv2d_forward(x, w, b, STRIDE1, padding, STRIDE1, algorithm="im2col")
    for algorithm in ("winograd_2x2", "winograd_4x4"):
        np.testing.assert_array_equal(cpu.conv2d_forward(x, w, b, STRIDE1, padding, STRIDE1, algorithm=algorithm),
                                      expected)
    dy = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    for algorithm in ("winograd_2x2", "winograd_4x4"):
        np.testing.assert_array_equal(
            cpu.conv2d_backward_weight(dy, x, w.shape, STRIDE1, padding, STRIDE1, algorithm=algorithm),
            cpu.conv2d_backward_weight(dy, x, w.shape, STRIDE1, padding, STRIDE1, algorithm="im2col"))


@pytest.mark.parametrize("name,shape,expected", [
    # (forward, backward-input, backward-weight) of the benchmark suite's layers and the MNIST model's
    ("mnist_conv1", (128, 1, 28, 28, 32), ("direct", "im2col", "direct")),
    ("mnist_conv2", (128, 32, 14, 14, 64), ("winograd_2x2", "winograd_2x2", "winograd_2x2")),
    ("neu_conv1", (16, 1, 200, 200, 32), ("direct", "im2col", "direct")),
    ("neu_conv3", (16, 64, 50, 50, 128), ("winograd_4x4", "winograd_4x4", "winograd_4x4")),
    ("resnet_conv", (64, 64, 56, 56, 64), ("winograd_4x4", "winograd_4x4", "winograd_4x4")),
    ("cifar_conv", (128, 64, 32, 32, 64), ("winograd_4x4", "winograd_4x4", "winograd_4x4")),
    ("24x24 images", (128, 32, 24, 24, 64), ("winograd_4x4", "winograd_4x4", "winograd_2x2")),
    ("few channels", (128, 8, 32, 32, 8), ("winograd_2x2", "winograd_2x2", "winograd_2x2")),
    ("16x16 images", (128, 32, 16, 16, 64), ("winograd_2x2", "winograd_2x2", "winograd_2x2")),
])
def test_the_algorithm_table(name, shape, expected):
    N, C, H, W, K = shape
    passes = ("forward", "backward_input", "backward_weight")
    chosen = tuple(conv.choose_algorithm(p, (N, C, H, W), (K, C, 3, 3), STRIDE1, STRIDE1, (H, W)) for p in passes)
    assert chosen == expected, name


def test_the_algorithm_table_outside_winograd():
    for weight_shape, stride, dilation in [((8, 8, 5, 5), (1, 1), (1, 1)), ((8, 8, 3, 3), (2, 2), (1, 1)),
                                           ((8, 8, 3, 3), (1, 1), (2, 2)), ((8, 8, 3, 1), (1, 1), (1, 1))]:
        assert conv.choose_algorithm("forward", (4, 8, 16, 16), weight_shape, stride, dilation, (12, 12)) == "im2col"
    # an image whose scratch exceeds the workspace: im2col, which splits images into rows
    assert conv.choose_algorithm("forward", (1, 1, 4000, 4000), (8, 1, 3, 3), STRIDE1, STRIDE1, (4000, 4000)) \
        == "im2col"


def test_forcing_an_algorithm_that_cannot_compute_the_conv_says_why(rng):
    x, w, b = _arrays(rng, (1, 4, 8, 8, 4), np.float32)
    with pytest.raises(ValueError, match="algorithm 'winograd' needs 3x3 filters, stride 1"):
        cpu.conv2d_forward(x, w, b, (2, 2), ((1, 1), (1, 1)), STRIDE1, algorithm="winograd")
    with pytest.raises(ValueError, match="algorithm 'winograd_4x4' needs 3x3 filters, stride 1"):
        cpu.conv2d_backward_input(x, w, x.shape, (1, 2), ((1, 1), (1, 1)), STRIDE1, algorithm="winograd_4x4")
    with pytest.raises(ValueError, match="'direct' has no backward-input pass"):
        cpu.conv2d_backward_input(x, w, x.shape, STRIDE1, ((1, 1), (1, 1)), STRIDE1, algorithm="direct")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        cpu.conv2d_forward(x, w, b, STRIDE1, ((1, 1), (1, 1)), STRIDE1, algorithm="fft")


@pytest.mark.parametrize("algorithm", ["winograd", "winograd_4x4", "direct"])
def test_fast_algorithms_are_deterministic(rng, algorithm):
    x, w, b = _arrays(rng, (16, 2 if algorithm == "direct" else 8, 12, 12, 8), np.float32)
    padding = ((1, 1), (1, 1))
    dy = rng.standard_normal((16, 8, 12, 12)).astype(np.float32)
    passes = [lambda: cpu.conv2d_forward(x, w, b, STRIDE1, padding, STRIDE1, algorithm=algorithm),
              lambda: cpu.conv2d_backward_weight(dy, x, w.shape, STRIDE1, padding, STRIDE1, algorithm=algorithm)]
    if algorithm != "direct":
        passes.append(lambda: cpu.conv2d_backward_input(dy, w, x.shape, STRIDE1, padding, STRIDE1, algorithm=algorithm))
    runs = [[run() for run in passes] for _ in range(2)]
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)
