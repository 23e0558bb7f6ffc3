"""gpuconv.signal on Dask arrays: equal to scipy.signal on the whole image for any chunking, lazily; the
distributed scheduler; no oversubscription; the example's memory (needs the dask extra)."""
import os
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import signal as scipy_signal

da = pytest.importorskip("dask.array")

import gpuconv.signal as gs  # noqa: E402

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


@st.composite
def chunkings(draw, size):
    """Chunk sizes summing to ``size``: ragged, sometimes a single chunk, sometimes of one pixel."""
    chunks, left = [], size
    while left:
        chunks.append(draw(st.integers(1, left)))
        left -= chunks[-1]
    return tuple(chunks)


@settings(max_examples=4 * int(os.environ.get("HYPOTHESIS_EXAMPLES", 40)), deadline=None)
@given(data=st.data(), h1=st.integers(1, 24), w1=st.integers(1, 24), h2=st.integers(1, 6), w2=st.integers(1, 6),
       mode=st.sampled_from(["full", "same", "valid"]), boundary=st.sampled_from(["fill", "wrap", "symm"]),
       name=st.sampled_from(["correlate2d", "convolve2d"]), dtype=st.sampled_from([np.float32, np.float64, np.int64]),
       seed=st.integers(0, 2**31 - 1))
def test_equals_scipy_for_any_chunking(data, h1, w1, h2, w2, mode, boundary, name, dtype, seed):
    rng = np.random.default_rng(seed)
    if dtype == np.int64:
        image, kernel = rng.integers(-9, 9, (h1, w1)), rng.integers(-3, 4, (h2, w2))
    else:
        image, kernel = rng.standard_normal((h1, w1)).astype(dtype), rng.standard_normal((h2, w2)).astype(dtype)
    chunks = (data.draw(chunkings(h1)), data.draw(chunkings(w1)))
    lazy = da.from_array(image, chunks=chunks)
    try:
        expected = getattr(scipy_signal, name)(image, kernel, mode=mode, boundary=boundary, fillvalue=1.5)
    except ValueError:  # 'valid' with neither input containing the other
        with pytest.raises(ValueError, match="valid"):
            getattr(gs, name)(lazy, kernel, mode=mode, boundary=boundary, fillvalue=1.5)
        return
    result = getattr(gs, name)(lazy, kernel, mode=mode, boundary=boundary, fillvalue=1.5)
    assert isinstance(result, da.Array)  # lazy
    got = result.compute(scheduler="threads")
    assert got.shape == expected.shape and got.dtype == expected.dtype
    if dtype == np.int64:
        np.testing.assert_array_equal(got, expected)  # scipy's integer result, exactly
    else:
        tolerance = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)


def test_bad_arguments_name_themselves():
    lazy = da.zeros((8, 8), chunks=4)
    with pytest.raises(ValueError, match="in1 must be a 2-D array"):
        gs.correlate2d(da.zeros((2, 8, 8), chunks=4), np.ones((3, 3)))
    with pytest.raises(TypeError, match="in1 has dtype complex128"):
        gs.correlate2d(lazy.astype(complex), np.ones((3, 3)))
    with pytest.raises(ValueError, match="in2 must not be empty"):
        gs.convolve2d(lazy, np.ones((0, 3)))
    with pytest.raises(ValueError, match="boundary must be"):
        gs.convolve2d(lazy, np.ones((3, 3)), boundary="reflect")


def test_each_block_runs_without_threads_of_its_own(monkeypatch):
    """Dask's threads are the parallelism: inside a task the CPU backend neither splits work over its threads
    nor lets BLAS spawn threads (their counts would multiply)."""
    from gpuconv.kernels.cpu import runtime
    seen = []
    real = runtime.parts

    def spy(count, cost_per_item, per_thread=1):
        parts = real(count, cost_per_item, per_thread)
        seen.append((parts, runtime.threads(), runtime._blas_users))
        return parts

    monkeypatch.setattr(runtime, "parts", spy)
    image = np.random.default_rng(0).standard_normal((64, 64))
    gs.correlate2d(da.from_array(image, chunks=16), np.ones((3, 3)), "same").compute(scheduler="threads",
                                                                                     num_workers=2)
    assert seen and all(parts == 1 and threads == 1 and blas_users >= 1 for parts, threads, blas_users in seen)
    seen.clear()
    gs.correlate2d(np.zeros((64, 64)), np.ones((3, 3)))  # outside Dask: all cores again
    assert seen[0][1] == runtime.threads() == max(1, __import__("numba").get_num_threads())


def test_distributed_scheduler_on_a_two_worker_local_cluster():
    distributed = pytest.importorskip("distributed")
    image = np.random.default_rng(1).standard_normal((96, 80)).astype(np.float32)
    expected = scipy_signal.convolve2d(image, gs.SOBEL_LEFT, mode="same", boundary="wrap")
    start = time.monotonic()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  death_timeout=60) as cluster, distributed.Client(cluster, timeout=60) as client:
        lazy = gs.convolve2d(da.from_array(image, chunks=(30, 25)), gs.SOBEL_LEFT, mode="same", boundary="wrap")
        got = client.compute(lazy).result(timeout=120)
        workers = {w.address for w in cluster.workers.values()}
        assert len(workers) == 2
    assert time.monotonic() - start < 180
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_the_example_never_holds_the_image(tmp_path):
    """4096^2 float32 (64 MiB) in 512^2 chunks (1 MiB): the peak stays a fraction of the image, a multiple of
    one chunk row (the example writes row bands), though the image, its blurred copy and two edge maps pass."""
    import tracemalloc
    sys.path.insert(0, EXAMPLES)
    import filter_large_image
    filter_large_image.run(1024, 512, "threads", 2, str(tmp_path / "warm-up.npy"), progress=False)  # JIT, imports
    os.unlink(tmp_path / "warm-up.npy")
    tracemalloc.start()
    figures = filter_large_image.run(4096, 512, "threads", 2, str(tmp_path / "edges.npy"), progress=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    chunk = 512 * 512 * 4
    print(f"example 4096^2/512^2: peak {peak / 2**20:.1f} MiB traced = {peak / chunk:.1f} chunks; "
          f"{figures['megapixels_per_s']:.1f} megapixels/s")
    assert peak < 44 * chunk  # measured 36; the image alone is 64 chunks
    written = np.load(tmp_path / "edges.npy", mmap_mode="r")
    assert written.shape == (4096, 4096) and os.listdir(tmp_path) == ["edges.npy"]
    image = filter_large_image.synthetic_image(4096, 512)[:40, :40].compute().astype(np.float64)
    blurred = scipy_signal.correlate2d(image, gs.GAUSSIAN_BLUR, "same", "symm")
    left = scipy_signal.correlate2d(blurred, gs.SOBEL_LEFT, "same", "symm")
    top = scipy_signal.correlate2d(blurred, gs.SOBEL_TOP, "same", "symm")
    # the top-left corner, away from the crop's right and bottom edges, matches the whole image's result
    np.testing.assert_allclose(written[:30, :30], np.hypot(left, top)[:30, :30], rtol=1e-4, atol=1e-4)
