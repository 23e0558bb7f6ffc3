"""The CPU backend's own machinery: workspace chunking and its budget, determinism, planning past 2**31."""
import re

import numpy as np
import pytest

import reference as ref
from cases import case_arrays
from gpuconv.kernels.cpu import backend as cpu, conv, runtime


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


@pytest.mark.parametrize("threads", [None, 8, 16])
@pytest.mark.parametrize("algorithm", ["winograd", "winograd_4x4", "im2col"])
def test_workspace_stays_under_budget(rng, monkeypatch, threads, algorithm):
    """Every pass's scratch within the budget, also planned for more threads than this machine has
    (Winograd's parts each have a floor: 16 parts of a 64 KiB budget once asked for 118 KiB)."""
    from gpuconv.kernels.cpu import winograd
    requested = []
    original = runtime.scratch
    monkeypatch.setattr(runtime, "scratch", lambda count, dtype: requested.append(count * np.dtype(dtype).itemsize)
                        or original(count, dtype))
    if threads:
        monkeypatch.setattr(runtime, "threads", lambda: threads)
        winograd._blocks.cache_clear()
    x, w, _ = case_arrays(rng, (64, 8, 16, 16, 8, 3, 3), np.float32)
    dy = rng.standard_normal((64, 8, 16, 16)).astype(np.float32)
    geometry = ((1, 1), ((1, 1), (1, 1)), (1, 1))
    budget = 64 << 10
    y = cpu.conv2d_forward(x, w, None, *geometry, workspace_bytes=budget, algorithm=algorithm)
    dx = cpu.conv2d_backward_input(dy, w, x.shape, *geometry, workspace_bytes=budget, algorithm=algorithm)
    dw = cpu.conv2d_backward_weight(dy, x, w.shape, *geometry, workspace_bytes=budget, algorithm=algorithm)
    winograd._blocks.cache_clear()  # plans made under the patched thread count
    assert requested and max(requested) <= budget
    dx_ref, dw_ref, _ = ref.conv2d_grads(x, w, dy, *geometry)
    for got, expected in ((y, ref.conv2d(x, w, None, *geometry)), (dx, dx_ref), (dw, dw_ref)):
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert runtime.workspace_budget(1 << 40) == runtime.WORKSPACE_LIMIT and 2 * runtime.WORKSPACE_LIMIT <= 256 << 20


def test_backward_is_deterministic(rng):
    x, w, _ = case_arrays(rng, (16, 8, 12, 12, 8, 3, 3), np.float32)
    dy = rng.standard_normal((16, 8, 12, 12)).astype(np.float32)
    geometry = ((1, 1), ((1, 1), (1, 1)), (1, 1))
    first = (cpu.conv2d_backward_input(dy, w, x.shape, *geometry), cpu.conv2d_backward_weight(dy, x, w.shape, *geometry))
    second = (cpu.conv2d_backward_input(dy, w, x.shape, *geometry), cpu.conv2d_backward_weight(dy, x, w.shape, *geometry))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_pool_backward_is_deterministic(rng):
    x = rng.standard_normal((8, 16, 15, 15)).astype(np.float32)
    y, argmax = cpu.pool2d_forward(x, "max", (3, 3), (1, 1), ((1, 1), (1, 1)))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    args = (argmax, x.shape, "max", (3, 3), (1, 1), ((1, 1), (1, 1)))
    np.testing.assert_array_equal(cpu.pool2d_backward(dy, *args), cpu.pool2d_backward(dy, *args))


def test_chunk_planning_for_a_batch_past_2_to_the_31_elements():
    """Planning a conv over 2**32 output elements: no overflow, every chunk within budget, all images covered."""
    n, oh, ow, column_bytes = 2**16, 256, 256, 4 * 40
    budget = 256 << 20
    units = runtime.image_units(n, oh, ow, column_bytes, budget)
    covered = 0
    for a, b in units:
        for n0, n1, oh0, oh1, ow0, ow1 in runtime.blocks(a, b, oh, ow, column_bytes, budget):
            assert (n1 - n0) * (oh1 - oh0) * (ow1 - ow0) * column_bytes <= budget and (ow0, ow1) == (0, ow)
            covered += (n1 - n0) * (oh1 - oh0)
    assert covered == n * oh


@pytest.mark.parametrize("n,oh,ow,budget", [(2, 3, 1000, 4000), (1, 1, 7, 1), (3, 2, 10, 400), (2, 5, 4, 10**6)])
def test_chunks_split_rows_and_then_columns_and_cover_every_output_once(n, oh, ow, budget):
    column_bytes = 40
    seen = np.zeros((n, oh, ow), int)
    for n0, n1, oh0, oh1, ow0, ow1 in runtime.blocks(0, n, oh, ow, column_bytes, budget):
        assert (n1 - n0) * (oh1 - oh0) * (ow1 - ow0) * column_bytes <= max(budget, column_bytes)
        assert ow1 - ow0 == ow or (n1 - n0, oh1 - oh0) == (1, 1)  # partial rows only one row at a time
        seen[n0:n1, oh0:oh1, ow0:ow1] += 1
    assert (seen == 1).all()


def test_very_wide_images_stay_within_the_workspace(rng, monkeypatch):
    """One output row of 200k columns: its im2col alone would be 442 MiB; the budget splits it by columns."""
    requested = []
    original = runtime.scratch
    monkeypatch.setattr(runtime, "scratch", lambda count, dtype: requested.append(count * np.dtype(dtype).itemsize)
                        or original(count, dtype))
    x = rng.standard_normal((1, 64, 1, 200000)).astype(np.float32)
    w = rng.standard_normal((4, 64, 1, 9)).astype(np.float32)
    geometry = ((1, 1), ((0, 0), (0, 0)), (1, 1))
    y = cpu.conv2d_forward(x, w, None, *geometry)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = cpu.conv2d_backward_input(dy, w, x.shape, *geometry)
    dw = cpu.conv2d_backward_weight(dy, x, w.shape, *geometry)
    assert max(requested) <= runtime.WORKSPACE_BYTES
    # a slice against the float64 reference (outputs 0..1990 read inputs 0..1999 only)
    np.testing.assert_allclose(y[..., :1990], ref.conv2d(x[..., :2000], w)[..., :1990], rtol=1e-4, atol=1e-4)
    dx_ref, _, _ = ref.conv2d_grads(x[..., :2000], w, dy[..., :1992], *geometry)
    np.testing.assert_allclose(dx[..., :1980], dx_ref[..., :1980], rtol=1e-4, atol=1e-4)
    assert dw.shape == w.shape and np.isfinite(dw).all()


def test_zero_channels_and_zero_filters(rng):
    """C = 0 and K = 0 (empty sums, empty outputs): no division by zero, the bias alone where C = 0."""
    geometry = ((1, 1), ((1, 1), (1, 1)), (1, 1))
    assert cpu.conv2d_forward(np.zeros((2, 0, 5, 5)), np.zeros((0, 0, 3, 3)), None, *geometry).shape == (2, 0, 5, 5)
    y = cpu.conv2d_forward(np.zeros((2, 0, 5, 5)), np.zeros((3, 0, 3, 3)), np.arange(3.0), *geometry)
    np.testing.assert_array_equal(y, np.broadcast_to(np.arange(3.0)[None, :, None, None], (2, 3, 5, 5)))
    dy = rng.standard_normal((2, 0, 5, 5))
    assert cpu.conv2d_backward_input(dy, np.zeros((0, 0, 3, 3)), (2, 0, 5, 5), *geometry).shape == (2, 0, 5, 5)
    assert cpu.conv2d_backward_weight(dy, np.zeros((2, 0, 5, 5)), (0, 0, 3, 3), *geometry).shape == (0, 0, 3, 3)
    dw = cpu.conv2d_backward_weight(np.ones((2, 3, 5, 5)), np.zeros((2, 0, 5, 5)), (3, 0, 3, 3), *geometry)
    assert dw.shape == (3, 0, 3, 3)


@pytest.mark.parametrize("shape, window", [
    ((2, 3, 7, 9), 2),     # ragged: the last row and column are in no window
    ((1, 2, 9, 10), 3),    # 3x3 windows tiling with a ragged column
    ((2, 2, 6, 40), 2),    # rows of 20 windows: a 16-wide vector, then one overlapping it
    ((1, 1, 5, 33), 2),    # 16 windows per row and a ragged column
    ((2, 1, 4, 64), 2),    # 32 windows per row: two 16-wide vectors, no overlap
    ((1, 2, 3, 31), 2),    # 15 windows per row: 8-wide vectors overlapping; ragged row and column
    ((2, 3, 6, 14), 2),    # 7 windows per row (MNIST's second pool): 4-wide vectors overlapping
    ((1, 1, 4, 8), 2),     # 4 windows per row: one 4-wide vector
    ((1, 2, 5, 7), 2),     # 3 windows per row: the scalar path
    ((3, 1, 8, 12), (2, 3)),  # non-square windows: the division path
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tiled_max_pool_backward_against_loops(shape, window, dtype, rng):
    """The tiled fast paths (stride == window, no padding): gradients at the first maximum, zeros elsewhere
    and in uncovered edges; with ties (a constant plane), a NaN in x and a NaN and infinity in dy."""
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0] = 1.0  # ties everywhere: the first maximum in row-major window order gets the gradient
    x[-1, -1, 1, 1] = np.nan
    pool, padding = (window, window) if isinstance(window, int) else window, ((0, 0), (0, 0))
    y, argmax = cpu.pool2d_forward(x, "max", pool, pool, padding)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy.reshape(-1)[1] = np.nan
    dy.reshape(-1)[-1] = -np.inf
    dx = cpu.pool2d_backward(dy, argmax, shape, "max", pool, pool, padding)
    finite = np.nan_to_num(x, nan=np.inf)  # the reference's argmax takes NaN as the maximum, like ours
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, ref.pool2d_grad(finite, dy, "max", pool, pool, padding).astype(dtype))


@pytest.mark.parametrize("shape", [
    (2, 3, 7, 9), (1, 2, 2, 2), (3, 2, 8, 8), (1, 1, 5, 3),  # 4 windows a row (one vector), 1 (scalar)
    (2, 1, 4, 14), (2, 2, 5, 30), (1, 1, 3, 33), (1, 2, 6, 41), (1, 1, 2, 64),  # 7, 15, 16, 20, 32 a row
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_2x2_max_pool_fast_path_against_loops(shape, dtype, rng):
    """2x2 windows at stride 2 (the fast path, a vector of windows at a time with overlapping row ends):
    maxima and argmax against float64 loops, with ties (first maximum in row-major order), NaNs (the first
    in a window wins and propagates), infinities and ragged edges."""
    x = rng.standard_normal(shape).astype(dtype)
    x[0, 0] = 1.0
    flat = x.reshape(-1)
    flat[[5, -3, -5]] = np.nan, np.inf, -np.inf
    flat[(flat.size - 9) % flat.size] = np.nan
    x[-1, -1, 0, 1] = x[-1, -1, 1, 1] = np.nan  # two NaNs in one window: the first (tap 1) wins
    y, argmax = cpu.pool2d_forward(x, "max", (2, 2), (2, 2), ((0, 0), (0, 0)))
    assert y.dtype == dtype and argmax.dtype == np.uint8
    assert argmax[-1, -1, 0, 0] == 1
    N, C, H, W = shape
    for n in range(N):
        for c in range(C):
            for oh in range(H // 2):
                for ow in range(W // 2):
                    window = x[n, c, 2 * oh:2 * oh + 2, 2 * ow:2 * ow + 2].astype(np.float64).reshape(-1)
                    nan = np.flatnonzero(np.isnan(window))
                    tap = nan[0] if nan.size else int(np.argmax(window))  # argmax: the first maximum
                    assert argmax[n, c, oh, ow] == tap
                    np.testing.assert_array_equal(y[n, c, oh, ow], dtype(window[tap]))


@pytest.mark.parametrize("shape", [
    (2, 3, 7, 9), (1, 2, 2, 2), (3, 2, 8, 8), (1, 1, 5, 3),  # 4 windows a row (one vector), 1 (scalar)
    (2, 1, 4, 14), (2, 2, 5, 30), (1, 1, 3, 33), (1, 2, 6, 41), (1, 1, 2, 64),  # 7, 15, 16, 20, 32 a row
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_2x2_average_pool_fast_path_against_loops(shape, dtype, rng):
    """2x2 average pooling at stride 2 (the fast path): means against float64 loops, and the backward's
    quarter of each gradient on each pixel of its window, zeros on the rows and columns outside every window;
    infinities and NaN propagate into their window alone."""
    x = rng.standard_normal(shape).astype(dtype)
    flat = x.reshape(-1)
    flat[[5, -3]] = np.nan, np.inf
    y, argmax = cpu.pool2d_forward(x, "avg", (2, 2), (2, 2), ((0, 0), (0, 0)))
    assert y.dtype == dtype and argmax is None
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = cpu.pool2d_backward(dy, None, shape, "avg", (2, 2), (2, 2), ((0, 0), (0, 0)))
    assert dx.dtype == dtype
    N, C, H, W = shape
    expected_dx = np.zeros(shape)
    for n in range(N):
        for c in range(C):
            for oh in range(H // 2):
                for ow in range(W // 2):
                    window = x[n, c, 2 * oh:2 * oh + 2, 2 * ow:2 * ow + 2].astype(np.float64)
                    scale = np.abs(window[np.isfinite(window)]).max(initial=0.0)  # three roundings of sums
                    tolerance = 4 * np.finfo(dtype).eps * scale
                    np.testing.assert_allclose(y[n, c, oh, ow], window.mean(), rtol=0, atol=tolerance)
                    expected_dx[n, c, 2 * oh:2 * oh + 2, 2 * ow:2 * ow + 2] = float(dy[n, c, oh, ow]) / 4
    np.testing.assert_array_equal(dx, expected_dx.astype(dtype))  # a quarter is exact


def _own_function_ir(llvm_ir, name):
    """The LLVM IR of the Numba function ``name`` itself (not its CPython wrapper) in a module's IR."""
    for function in llvm_ir.split("\ndefine ")[1:]:
        header = function.split("\n", 1)[0]
        if f"{len(name)}{name}" in header and "cpython." not in header:
            return function.split("\n}\n")[0]
    raise AssertionError(f"no function {name} in the IR")


def _count_in_loops(function_ir, text):
    """Occurrences of ``text`` in the basic blocks that lie on a cycle of the function's control-flow graph."""
    blocks, label = {}, "entry"
    for line in function_ir.split("\n")[1:]:
        start = re.match(r"([\w.$-]+):", line)
        if start:
            label = start.group(1)
        else:
            blocks.setdefault(label, []).append(line)
    successors = {b: set(re.findall(r"label %([\w.$-]+)", "\n".join(lines))) for b, lines in blocks.items()}

    def on_cycle(block):
        seen, todo = set(), list(successors[block])
        while todo:
            b = todo.pop()
            if b == block:
                return True
            if b not in seen:
                seen.add(b)
                todo.extend(successors.get(b, ()))
        return False
    return sum("\n".join(lines).count(text) for b, lines in blocks.items() if on_cycle(b))


@pytest.mark.parametrize("dtype, tap_dtype", [(np.float32, np.uint8), (np.float64, np.int32)])
def test_2x2_pool_loops_make_no_reference_count_calls(dtype, tap_dtype):
    """The 2x2 kernels' row loops make no reference-count calls. When one path of a row released an array
    early (the average rows' scalar path never reads the taps), Numba kept three atomic incref/decref pairs
    per row and the average-pool backward ran 2.8x slower than the max-pool backward."""
    from numba import njit
    from gpuconv.kernels.cpu import pool
    x, dx = np.zeros((2, 3, 6, 10), dtype), np.zeros((2, 3, 6, 10), dtype)
    y, dy, taps = np.zeros((2, 3, 3, 5), dtype), np.zeros((2, 3, 3, 5), dtype), np.zeros((2, 3, 3, 5), tap_dtype)
    for kernel, args in ((pool._pool_2x2, (0, 6, x, y, taps, True)),
                         (pool._pool_backward_2x2, (0, 6, dy, taps, dx, True))):
        fresh = njit(**runtime.JIT | dict(cache=False))(kernel.py_func)  # uncached: its IR can be read
        fresh(*args)
        body = _own_function_ir(fresh.inspect_llvm(fresh.signatures[0]), kernel.__name__)
        assert _count_in_loops(body, "shufflevector") > 0  # the vector rows, in the loop over rows
        assert "@NRT_incref(" in body  # outside the loops: the reshaped arrays
        assert _count_in_loops(body, "@NRT_incref(") == 0 and _count_in_loops(body, "@NRT_decref(") == 0


@pytest.mark.parametrize("pool, dtype", [((2, 2), np.uint8), ((3, 3), np.uint8), ((16, 16), np.uint8),
                                         ((17, 16), np.int32)])
def test_argmax_dtype_and_wide_windows_against_loops(pool, dtype, rng):
    """The CPU argmax takes one byte up to 256 taps per window (taps 0..255) and int32 beyond; both ways, and
    an int32 or int64 copy of a uint8 argmax, give the float64 loops' gradient."""
    shape = (2, 2, 2 * pool[0] + 1, 2 * pool[1] + 3)
    x = rng.standard_normal(shape)
    x[0, 0, pool[0] - 1, pool[1] - 1] = 10.0  # the last tap (255 for 16x16) of the first window
    for stride, padding in ((pool, ((0, 0), (0, 0))), ((3, 2), ((1, 1), (0, 1)))):
        y, argmax = cpu.pool2d_forward(x, "max", pool, stride, padding)
        assert argmax.dtype == dtype
        dy = rng.standard_normal(y.shape)
        want = ref.pool2d_grad(x, dy, "max", pool, stride, padding)
        for taps in (argmax, argmax.astype(np.int32), argmax.astype(np.int64)):
            np.testing.assert_array_equal(cpu.pool2d_backward(dy, taps, shape, "max", pool, stride, padding), want)
    assert cpu.pool2d_forward(x, "max", pool, pool, ((0, 0), (0, 0)))[1][0, 0, 0, 0] == pool[0] * pool[1] - 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64, 32, 28, 28), (5, 3, 7, 9), (2, 1, 3, 3), (0, 4, 5, 5), (2, 3, 0, 4)])
def test_bias_gradient_against_float64_sums(rng, shape, dtype):
    """Split over channels (one per thread at a time) or not, summed in float64: within a float64 running sum's
    error bound and one rounding to the dtype; NaN and inf propagate to their channel only."""
    dy = rng.standard_normal(shape).astype(dtype)
    expected = dy.astype(np.float64).sum(axis=(0, 2, 3))
    got = cpu.conv2d_backward_bias(dy)
    assert got.dtype == dtype and got.shape == (shape[1],)
    magnitude = np.abs(dy.astype(np.float64)).sum(axis=(0, 2, 3))
    count = dy.size // max(shape[1], 1)  # values summed per channel: float64's bound for a running sum
    bound = np.finfo(dtype).eps * np.abs(expected) + count * np.finfo(np.float64).eps * magnitude
    assert np.all(np.abs(got - expected) <= bound)
    if dy.size:
        dy[0, 0, 0, 0], dy[-1, -1, -1, -1] = np.inf, np.nan
        got = cpu.conv2d_backward_bias(dy)
        assert np.isnan(got[-1]) and (got[0] == np.inf if shape[1] > 1 else np.isnan(got[0]))
        np.testing.assert_array_equal(np.isfinite(got[1:-1]), True)
