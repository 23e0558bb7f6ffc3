"""Threads and processes on the CPU backend: forked and spawned children, overlapping callers, BLAS limits.

Hardening issue items 1 (a forked child hung in the thread pool), 5 (no_grad across threads, see
tests/ops/test_hardening.py) and 21 (BLAS left at one thread), and the stress test.
"""
import multiprocessing
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import gpuconv
import gpuconv.functional as F
from gpuconv import Tensor

STRESS_SECONDS = 8


def blas_threads():
    """Threads of NumPy's BLAS, the one gpuconv's GEMMs run on (SciPy may load a BLAS of its own)."""
    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]


def network(x, w, b, record):
    """conv + ReLU + max-pool, forward and (when recording) backward; everything it produced, on the host."""
    context = gpuconv.no_grad() if not record else _nothing()
    with context:
        xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
        y = F.max_pool2d(F.relu(F.conv2d(xt, wt, bt, padding="same")), 2)
        if not record:
            assert not y.requires_grad
            return (y.numpy(),)
        y.backward(np.ones(y.shape, y.dtype))
        return y.numpy(), xt.grad, wt.grad, bt.grad


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((6, 3, 12, 10)).astype(np.float32), rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            rng.standard_normal(4).astype(np.float32))


def _child_conv(queue):
    x, w, b = inputs()
    queue.put(F.conv2d(x, w, b, padding="same").numpy())


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_1_a_child_process_runs_ops_after_the_parent_has(method):
    x, w, b = inputs()
    expected = F.conv2d(x, w, b, padding="same").numpy()  # the parent's thread pool now exists
    assert x.shape[0] >= 2
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=_child_conv, args=(queue,))
    child.start()
    try:
        result = queue.get(timeout=120)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
    np.testing.assert_array_equal(result, expected)


def test_21_blas_threads_are_restored_after_overlapping_callers():
    before = blas_threads()
    x, w, b = inputs()
    start = threading.Barrier(3)

    def convs():
        start.wait(10)
        for _ in range(30):
            F.conv2d(x, w, b, padding="same")

    threads = [threading.Thread(target=convs) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert blas_threads() == before
    with gpuconv.backend.session():  # a training session inside, overlapping a kernel's own limit
        F.conv2d(x, w, b, padding="same")
        assert blas_threads() == [1]
    assert blas_threads() == before


def test_stress_four_threads_match_a_serial_run():
    """4 threads run conv + ReLU + pool forward/backward, half under no_grad, for a bounded time."""
    cases = [inputs(seed) for seed in range(4)]
    serial = {(i, record): network(*cases[i], record) for i in range(4) for record in (True, False)}
    before = blas_threads()
    deadline = time.monotonic() + STRESS_SECONDS
    failures, runs = [], [0] * 4

    def worker(i):
        record = True
        while time.monotonic() < deadline and not failures:
            got = network(*cases[i], record)
            for a, e in zip(got, serial[(i, record)]):
                if not np.array_equal(a, e):
                    failures.append(f"thread {i}, record={record}: differs from the serial run")
            runs[i] += 1
            record = not record

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(STRESS_SECONDS + 60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert failures == [] and min(runs) >= 2, (failures, runs)
    assert blas_threads() == before and gpuconv.tensor.is_grad_enabled()
    print(f"stress: {sum(runs)} network runs in {STRESS_SECONDS} s over 4 threads ({runs})")


def test_serial_runs_split_kernels_on_the_calling_thread():
    """Inside ``serial()`` a kernel split into parts (ReLU, pooling and Adam take several per thread) runs every
    part on the calling thread, in the main thread and in others; the thread count comes back after."""
    import numba

    from gpuconv.kernels.cpu import runtime

    @numba.njit(parallel=True)
    def part_threads(out):
        for p in numba.prange(out.size):
            spin = 0.0
            for i in range(200_000):  # long enough for another thread to take parts, if it may
                spin += i * 1e-9
            out[p] = numba.get_thread_id() + spin * 0

    def check(results):
        before = numba.get_num_threads()
        with gpuconv.backend.use_backend("cpu"), gpuconv.backend.serial():
            out = np.full(8, -1.0)
            runtime.launch(part_threads, out)
            results.append((out.tolist(), numba.get_num_threads()))
        results.append(numba.get_num_threads() == before)

    results = []
    check(results)
    worker = threading.Thread(target=check, args=(results,))
    worker.start()
    worker.join()
    for inside, restored in (results[0:2], results[2:4]):
        assert inside == ([0.0] * 8, 1) and restored


def test_thread_count_follows_numba_per_thread():
    """``runtime.threads()`` (read through the threading layer's own getter) is Numba's count for the calling
    thread: a thread that sets its count sees it, the main thread keeps its own, and parts follow."""
    import numba

    from gpuconv.kernels.cpu import runtime

    main_count = runtime.threads()
    assert main_count == numba.get_num_threads() >= 1
    seen = []

    def one_thread():
        numba.set_num_threads(1)
        seen.append((runtime.threads(), runtime.parts(10**7, 1, runtime.SPLIT)))

    worker = threading.Thread(target=one_thread)
    worker.start()
    worker.join()
    assert seen == [(1, runtime.SPLIT)]
    assert runtime.threads() == main_count == numba.get_num_threads()
