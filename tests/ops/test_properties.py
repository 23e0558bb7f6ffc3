"""Hypothesis property tests: random shapes and arguments against the float64 references."""
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import gpuconv.functional as F
import reference as ref

small = st.integers(1, 3)
sizes = st.integers(1, 12)
pairs = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
paddings = st.one_of(
    st.sampled_from(["valid", "same"]), st.integers(0, 3), st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)), st.tuples(st.integers(0, 3), st.integers(0, 3))))


@given(n=small, c=small, k=small, h=sizes, w=sizes, r=st.integers(1, 4), s=st.integers(1, 4),
       stride=pairs, dilation=pairs, padding=paddings, bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_conv2d_property(n, c, k, h, w, r, s, stride, dilation, padding, bias, seed):
    rng = np.random.default_rng(seed)
    x, wt = rng.standard_normal((n, c, h, w)), rng.standard_normal((k, c, r, s))
    b = rng.standard_normal(k) if bias else None
    st_, dl = ref.pair(stride), ref.pair(dilation)
    pads = ref.explicit_padding(padding, (h, w), (r, s), st_, dl)
    fits = all(d * (kk - 1) + 1 <= i + sum(p) for d, kk, i, p in zip(dl, (r, s), (h, w), pads))
    if not fits:
        with pytest.raises(ValueError, match="larger than the padded input"):
            F.conv2d(x, wt, b, stride=stride, padding=padding, dilation=dilation)
        return
    y = F.conv2d(x, wt, b, stride=stride, padding=padding, dilation=dilation).numpy()
    np.testing.assert_allclose(y, ref.conv2d(x, wt, b, st_, pads, dl), rtol=1e-11, atol=1e-11)


@given(n=small, c=small, h=sizes, w=sizes, pool=pairs, strides=st.one_of(st.none(), pairs),
       padding=st.sampled_from(["valid", "same"]), mode=st.sampled_from(["max", "avg"]),
       seed=st.integers(0, 2**31 - 1))
def test_pool_property(n, c, h, w, pool, strides, padding, mode, seed):
    p = ref.pair(pool)
    stride = p if strides is None else ref.pair(strides)
    pads = ref.explicit_padding(padding, (h, w), p, stride)
    assume(all(pp <= i + sum(q) for pp, i, q in zip(p, (h, w), pads)))
    x = np.random.default_rng(seed).standard_normal((n, c, h, w))
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    y = fn(x, pool, strides, padding).numpy()
    np.testing.assert_allclose(y, ref.pool2d(x, mode, p, stride, pads), rtol=1e-12, atol=1e-12)


@given(n=small, c=small, k=small, h=st.integers(3, 7), w=st.integers(3, 7), stride=pairs,
       padding=st.sampled_from(["valid", "same", 1]), seed=st.integers(0, 2**31 - 1))
def test_conv2d_gradient_property(n, c, k, h, w, stride, padding, seed):
    rng = np.random.default_rng(seed)
    x, wt, b = rng.standard_normal((n, c, h, w)), rng.standard_normal((k, c, 3, 2)), rng.standard_normal(k)
    ref.check_gradients(lambda x, wt, b: F.conv2d(x, wt, b, stride=stride, padding=padding), [x, wt, b],
                        rtol=1e-5, atol=1e-6)
