"""Kept output buffers (runtime.empty): a buffer is reused only once no array views it, and the cap holds."""
import threading

import numpy as np
import pytest

from gpuconv.kernels.cpu import backend as cpu, runtime

SHAPE = (64, 64)  # float32: 16 KiB, over the threshold the tests set
NBYTES = 64 * 64 * 4


@pytest.fixture
def small_threshold(monkeypatch):
    """Keep outputs from 1 KiB up, in a list of the test's own."""
    monkeypatch.setattr(runtime, "MMAP_THRESHOLD_BYTES", 1024)
    monkeypatch.setattr(runtime, "_kept_outputs", [])


def test_a_freed_output_is_reused_and_a_viewed_one_never(small_threshold):
    first = runtime.empty(SHAPE, np.float32)
    address = first.ctypes.data
    del first
    again = runtime.empty(SHAPE, np.float32)
    assert again.ctypes.data == address

    again[...] = 1.0
    views = [again[1:, ::2], again.reshape(-1), memoryview(again), again.T]
    del again
    for view in views:
        other = runtime.empty(SHAPE, np.float32)
        assert other.ctypes.data != address
        other[...] = 2.0
        assert np.all(np.asarray(views[0]) == 1.0)
        del other
    del views, view
    assert runtime.empty(SHAPE, np.float32).ctypes.data == address


def test_same_bytes_other_dtype_reuses_and_other_sizes_do_not(small_threshold):
    address = runtime.empty(SHAPE, np.float32).ctypes.data
    assert runtime.empty((32, 64), np.float64).ctypes.data == address
    assert runtime.empty((64, 65), np.float32).ctypes.data != address
    out = runtime.empty((2, 3, 64, 32), np.float32)
    assert out.shape == (2, 3, 64, 32) and out.dtype == np.float32 and out.flags.c_contiguous


def test_kept_bytes_stay_within_the_cap(small_threshold, monkeypatch):
    monkeypatch.setattr(runtime, "KEPT_OUTPUT_BYTES", 3 * NBYTES)
    held = [runtime.empty(SHAPE, np.float32) for _ in range(5)]
    assert len({a.ctypes.data for a in held}) == 5
    assert sum(b.nbytes for b in runtime._kept_outputs) == 3 * NBYTES
    del held
    bigger = runtime.empty((128, 64), np.float32)  # makes room: drops the two oldest unviewed buffers
    assert sum(b.nbytes for b in runtime._kept_outputs) == 3 * NBYTES
    assert any(b.ctypes.data == bigger.ctypes.data for b in runtime._kept_outputs)
    too_big = runtime.empty((64, 64 * 4), np.float32)  # over the cap alone: a plain array
    assert not any(b.ctypes.data == too_big.ctypes.data for b in runtime._kept_outputs)


def test_no_buffer_kept_below_the_threshold_or_with_a_zero_cap(small_threshold, monkeypatch):
    runtime.empty((16, 16), np.float32)  # 1024 bytes: the threshold itself is kept
    assert len(runtime._kept_outputs) == 1
    runtime.empty((15, 16), np.float32)
    assert len(runtime._kept_outputs) == 1
    monkeypatch.setattr(runtime, "KEPT_OUTPUT_BYTES", 0)
    runtime.empty(SHAPE, np.float32)
    assert len(runtime._kept_outputs) == 1


def test_ops_outputs_stay_right_while_later_calls_reuse_freed_ones(small_threshold, rng):
    xs = [rng.standard_normal((2, 3, 24, 24)).astype(np.float32) for _ in range(4)]
    outputs = [cpu.relu_forward(x) for x in xs[:2]]
    del outputs[0]  # its buffer is free now: the next call takes it
    outputs.append(cpu.relu_forward(xs[2]))
    pooled, argmax = cpu.pool2d_forward(xs[3], "max", (2, 2), (2, 2), ((0, 0), (0, 0)))
    dx = cpu.pool2d_backward(pooled, argmax, xs[3].shape, "max", (2, 2), (2, 2), ((0, 0), (0, 0)))
    np.testing.assert_array_equal(outputs[0], np.maximum(xs[1], 0))
    np.testing.assert_array_equal(outputs[1], np.maximum(xs[2], 0))
    windows = xs[3].reshape(2, 3, 12, 2, 12, 2)
    np.testing.assert_array_equal(pooled, windows.max(axis=(3, 5)))
    spread = np.where(windows == pooled[:, :, :, None, :, None], pooled[:, :, :, None, :, None], 0)
    np.testing.assert_array_equal(dx, spread.reshape(xs[3].shape))
    assert len(runtime._kept_outputs) >= 4


def test_threads_never_share_a_live_output(small_threshold):
    errors = []

    def worker(value):
        for _ in range(300):
            out = runtime.empty(SHAPE, np.float32)
            out[...] = value
            if not np.all(out == value):
                errors.append(value)
            del out

    threads = [threading.Thread(target=worker, args=(v,)) for v in (1.0, 2.0, 3.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and len(runtime._kept_outputs) <= 3
