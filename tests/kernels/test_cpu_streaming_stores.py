"""ReLU's non-temporal (streamed) output path against plain NumPy expressions: every alignment of the output
and of the parts, ragged ends, NaN, float32 and float64, and the size switch."""
import numpy as np
import pytest

from gpuconv.kernels.cpu import relu, runtime


@pytest.fixture
def always_stream(monkeypatch):
    monkeypatch.setattr(runtime, "STREAM_MIN_BYTES", 0)


def _misaligned(values, offset):
    """A copy of ``values`` whose data starts ``offset`` elements past a 64-byte boundary."""
    raw = np.empty(values.size + 64, values.dtype)
    start = (-(raw.ctypes.data // values.itemsize)) % (64 // values.itemsize) + offset
    out = raw[start:start + values.size]
    out[...] = values
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 15, 16, 17, 33, 1000, 40_003])
def test_streamed_relu_matches_numpy_at_every_alignment(always_stream, rng, dtype, size):
    x = rng.standard_normal(size).astype(dtype)
    x[::5] = np.nan
    dy = rng.standard_normal(size).astype(dtype)
    for offset in range(0, 64 // np.dtype(dtype).itemsize, 3):
        for parts in (1, 2, 3, 8):
            xs, y = _misaligned(x, offset), _misaligned(np.full(size, -7, dtype), offset)
            relu._relu_forward(xs, y, parts, True)
            np.testing.assert_array_equal(y, np.where(x <= 0, 0, x))  # NaN stays NaN
            dx = _misaligned(np.full(size, -7, dtype), (offset + 1) % 4)
            relu._relu_backward(_misaligned(dy, offset), y, dx, parts, True)
            np.testing.assert_array_equal(dx, np.where(y > 0, dy, 0))


def test_elements_straddling_cache_lines_are_written_plainly(always_stream, rng):
    raw = np.zeros(4 * 101 + 1, np.uint8)
    y = raw[1:].view(np.float32)  # 1 byte past alignment: no element starts a line
    x = rng.standard_normal(101).astype(np.float32)
    assert runtime.line_split(0, 101, -1, 16) == (101, 101)
    relu._relu_forward(x, y, 2, True)
    np.testing.assert_array_equal(y, np.maximum(x, 0))


def test_only_large_outputs_stream():
    small = np.zeros(runtime.STREAM_MIN_BYTES // 4 - 1, np.float32)
    assert not runtime.streams(small) and runtime.streams(np.zeros(runtime.STREAM_MIN_BYTES // 4, np.float32))


def test_large_relu_through_the_public_kernels(rng):
    x = rng.standard_normal((2, 3, 700, 701)).astype(np.float32)  # 11.8 MB: streamed
    assert runtime.streams(x)
    y = relu.relu_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(relu.relu_backward(dy, y), np.where(x > 0, dy, 0))
