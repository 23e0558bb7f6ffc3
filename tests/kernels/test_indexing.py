"""Index arithmetic: the shared helpers against brute force, and past 2**31 as plain Python and compiled."""
import itertools

from numba import njit

from gpuconv.kernels import indexing


def brute_valid_range(tap, pad, stride, in_size, out_size):
    inside = [o for o in range(out_size) if 0 <= o * stride - pad + tap < in_size]
    return (inside[0], inside[-1] + 1) if inside else None


def test_valid_output_range_brute_force():
    for tap, pad, stride, in_size, out_size in itertools.product(range(0, 7), range(0, 4), range(1, 4),
                                                                 range(1, 8), range(0, 9)):
        lo, hi = indexing.valid_output_range(tap, pad, stride, in_size, out_size)
        expected = brute_valid_range(tap, pad, stride, in_size, out_size)
        if expected is None:
            assert lo == hi
        else:
            assert (lo, hi) == expected


def test_clipped_window_brute_force():
    for o, stride, pad, window, in_size in itertools.product(range(6), range(1, 4), range(3), range(1, 5),
                                                             range(1, 9)):
        lo, hi = indexing.clipped_window(o, stride, pad, window, in_size)
        real = [t for t in range(window) if 0 <= o * stride - pad + t < in_size]
        assert (lo, hi) == ((real[0], real[-1] + 1) if real else (lo, lo))


def test_covering_windows_brute_force():
    for i, stride, pad, window, out_size in itertools.product(range(9), range(1, 4), range(3), range(1, 5),
                                                              range(0, 7)):
        lo, hi = indexing.covering_windows(i, stride, pad, window, out_size)
        covering = [o for o in range(out_size) if o * stride - pad <= i < o * stride - pad + window]
        assert (lo, hi) == ((covering[0], covering[-1] + 1) if covering else (lo, lo)) and lo <= hi


def test_unravel_nchw_matches_numpy():
    import numpy as np
    shape = (3, 4, 5, 7)
    for i in range(0, 420, 11):
        assert indexing.unravel_nchw(i, *shape[1:]) == tuple(int(v) for v in np.unravel_index(i, shape))
    big = (2**33 + 3) * 4 * 5 * 7 + 123
    assert njit(indexing.unravel_nchw)(big, 4, 5, 7) == (2**33 + 3, 3, 2, 4)


def test_helpers_past_2_to_the_31_compiled_and_plain():
    big = 3 * 2**31 + 5  # an axis (or flattened offset) beyond int32
    compiled = njit(indexing.valid_output_range)
    for f in (indexing.valid_output_range, compiled):
        assert f(2, 1, 2, big, big) == (0, (big - 1 + 1 - 2) // 2 + 1)
    assert njit(indexing.conv_output_size)(big, 2, 3, 1, 1) == big
    assert njit(indexing.clipped_window)(big // 4, 2, 0, 4, big) == (0, 4)
    assert njit(indexing.clipped_window)(big // 2, 2, 0, 4, big) == (0, 1)  # starts at big - 1
    assert njit(indexing.covering_windows)(big - 1, 2, 0, 4, big // 2 + 1) == ((big - 4) // 2 + 1, big // 2 + 1)
