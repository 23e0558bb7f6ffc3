"""ReLU's non-temporal (streamed) output path against plain NumPy expressions: every alignment of the output
and of the parts, ragged ends, NaN, float32 and float64, and the size switch; the runtime's prefetch hint."""
import platform

import numpy as np
import pytest
from numba import njit

from gpuconv.kernels.cpu import relu, runtime


@pytest.fixture
def always_stream(monkeypatch):
    monkeypatch.setattr(runtime, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(runtime, "CACHE_KEEP_BYTES", 0)


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


def test_only_large_outputs_stream(monkeypatch):
    monkeypatch.setattr(runtime, "CACHE_KEEP_BYTES", 8 * runtime.STREAM_MIN_BYTES)
    small = np.zeros(runtime.STREAM_MIN_BYTES // 4 - 1, np.float32)
    assert not runtime.streams(small) and runtime.streams(np.zeros(runtime.STREAM_MIN_BYTES // 4, np.float32))
    kept = np.zeros(runtime.CACHE_KEEP_BYTES // 8 - 1)
    assert runtime.streams(kept) and not runtime.streams(kept, reread=True)
    assert runtime.streams(np.zeros(runtime.CACHE_KEEP_BYTES // 8), reread=True)


def _fake_caches(root, sizes):
    for i, (level, kind, size) in enumerate(sizes):
        index = root / f"index{i}"
        index.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (index / name).write_text(f"{value}\n")
    return str(root)


def test_caches_read_from_sysfs(tmp_path):
    root = _fake_caches(tmp_path, [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"),
                                   (3, "Unified", "32768K")])
    caches = runtime.cpu_caches(root)
    assert caches == {"L1d": "48K", "L2": "2048K", "L3": "32768K"}
    assert runtime.last_level_cache_bytes(caches) == 32 << 20
    assert runtime.cpu_caches(str(tmp_path / "missing")) == {}


@pytest.mark.parametrize("caches, keep", [
    ({"L1d": "32K", "L2": "1024K", "L3": "32768K"}, 16 << 20),   # half the last level
    ({"L2": "2M", "L3": "491520K"}, 48 << 20),                   # capped: a VM's share of a large shared cache
    ({"L2": "2048K"}, 4 << 20),                                  # floored at STREAM_MIN_BYTES
    ({}, 4 << 20),                                               # unknown: as every output
    ({"L3": "unknown"}, 4 << 20),
])
def test_outputs_read_next_stay_in_half_the_last_level_cache(caches, keep):
    assert runtime.cache_keep_bytes(caches) == keep


@pytest.mark.parametrize("keep", [runtime.STREAM_MIN_BYTES, 64 << 20])  # forward's y streamed, then kept
def test_large_relu_through_the_public_kernels(rng, monkeypatch, keep):
    monkeypatch.setattr(runtime, "CACHE_KEEP_BYTES", keep)
    x = rng.standard_normal((2, 3, 700, 701)).astype(np.float32)  # 11.8 MB
    assert runtime.streams(x) and runtime.streams(x, reread=True) == (keep < x.nbytes)
    y = relu.relu_forward(x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(relu.relu_backward(dy, y), np.where(x > 0, dy, 0))


def test_prefetch_hint_is_emitted_and_changes_nothing():
    @njit(cache=False)
    def hinted_sum(a, ahead):
        total = 0.0
        for i in range(a.size):
            runtime.prefetch_to_l2(a, i + ahead)  # past the end too: a prefetch never faults
            total += a[i]
        return total

    a = np.arange(1000, dtype=np.float32)
    assert hinted_sum(a, 64) == a.sum(dtype=np.float64)
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "prefetcht1" in hinted_sum.inspect_asm(hinted_sum.signatures[0])
