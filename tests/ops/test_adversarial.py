"""Adversarial property tests over the public ops and layers (hypothesis).

Random shapes (zero-size dimensions included), dtypes, memory layouts (non-contiguous, negative
strides, Fortran order, read-only), geometries (valid and not) and NaN/Inf values. Every call either
matches the float64 reference or raises ValueError/TypeError whose message names the argument at
fault; no other exception escapes. Each test runs ADVERSARIAL_EXAMPLES cases (HYPOTHESIS_EXAMPLES
scales it).
"""
import collections
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import gpuconv
import gpuconv.functional as F
import gpuconv.signal as gs
import reference as ref
from gpuconv.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPool2D

ADVERSARIAL_EXAMPLES = 6 * int(os.environ.get("HYPOTHESIS_EXAMPLES", 40))
adversarial = settings(max_examples=ADVERSARIAL_EXAMPLES, deadline=None)

DTYPES = [np.float32, np.float64, np.float16, np.int32, np.uint8, np.bool_, np.complex64]
LAYOUTS = ["c", "fortran", "negative strides", "strided view", "read-only"]
OUTCOMES = collections.Counter()  # (test, 'matched' or 'refused'): both sides must be exercised
small_ints = st.integers(0, 4)
good_int = st.integers(1, 3)
bad_int = st.sampled_from([0, -1, 2**31, 2**63, 10**40, True, 1.5, None, "2"])
int_arg = st.one_of(good_int, good_int, good_int, bad_int)  # mostly valid, so that many calls get computed
pair_args = st.one_of(int_arg, st.tuples(int_arg, int_arg), st.lists(good_int, min_size=2, max_size=2),
                      st.just((1, 2, 3)))
padding_args = st.one_of(st.sampled_from(["valid", "same", "SAME", 0, 1, 2]),
                         st.sampled_from(["full", "", -1, 2**40, 1.0, None]),
                         st.tuples(st.integers(-1, 3), st.integers(0, 3)),
                         st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
                                   st.tuples(st.integers(0, 3), st.integers(-1, 3))))


def common_dtype(data):
    """Mostly one float dtype for every array of a call (so that calls get computed), sometimes anything."""
    return data.draw(st.sampled_from([np.float32, np.float64, np.float32, np.float64, None]))


def named(error, *names):
    """The error is ValueError/TypeError and its message names one of ``names``."""
    assert isinstance(error, (ValueError, TypeError)), f"{type(error).__name__}: {error}"
    pattern = r"\b(" + "|".join(map(re.escape, names)) + r")\b"
    assert re.search(pattern, str(error)), f"{error!s} names none of {names}"


@st.composite
def arrays(draw, shape, dtypes=DTYPES, specials=True, dtype=None):
    """An array of ``shape`` in ``dtype`` (else a random one) and a random memory layout, sometimes with NaN/Inf."""
    dtype = np.dtype(dtype or draw(st.sampled_from(dtypes)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    values = rng.standard_normal(shape)
    if specials and values.size and draw(st.booleans()):
        flat = values.reshape(-1)
        for special in draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf]), min_size=1, max_size=3)):
            flat[rng.integers(flat.size)] = special
    with np.errstate(invalid="ignore"):
        array = values.astype(dtype) if dtype.kind != "b" else values > 0
    layout = draw(st.sampled_from(LAYOUTS))
    if layout == "fortran":
        array = np.asfortranarray(array)
    elif layout == "negative strides" and array.ndim:
        array = np.flip(np.flip(array, -1).copy(), -1)
    elif layout == "strided view":
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype) if array.ndim else None
        if wide is not None:
            wide[..., ::2] = array
            array = wide[..., ::2]
    elif layout == "read-only":
        array = array.copy()
        array.setflags(write=False)
    return array


def is_real_float(*arrays):
    return all(a.dtype in (np.float32, np.float64) for a in arrays) and len({a.dtype for a in arrays}) == 1


def tolerance(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-9)


# half the calls draw valid arguments only (so that many are computed), half anything
VALID_CONV = dict(n=small_ints, c=small_ints, h=st.integers(1, 6), w=st.integers(1, 6), k=small_ints,
                  r=st.integers(1, 3), s=st.integers(1, 3), stride=st.one_of(good_int, st.tuples(good_int, good_int)),
                  dilation=st.one_of(good_int, st.tuples(good_int, good_int)),
                  padding=st.sampled_from(["valid", "same", "SAME", 0, 1, 2, (1, 0), ((0, 2), (1, 0))]),
                  activation=st.sampled_from([None, "relu"]))
ANY_CONV = dict(n=small_ints, c=small_ints, h=small_ints, w=small_ints, k=small_ints, r=st.integers(0, 3),
                s=st.integers(0, 3), stride=pair_args, dilation=pair_args, padding=padding_args,
                activation=st.sampled_from([None, "relu", "tanh"]))


@adversarial
@given(data=st.data(), valid=st.booleans(), bias=st.booleans())
def test_conv2d(data, valid, bias):
    args = {name: data.draw(strategy, label=name) for name, strategy in (VALID_CONV if valid else ANY_CONV).items()}
    n, c, h, w, k, r, s, stride, dilation, padding, activation = args.values()
    dtype = common_dtype(data)
    x = data.draw(arrays((n, c, h, w), dtype=dtype))
    weight = data.draw(arrays((k, c, r, s), specials=False, dtype=dtype))
    b = data.draw(arrays((k,), specials=False, dtype=dtype)) if bias else None
    try:
        y = F.conv2d(x, weight, b, stride=stride, padding=padding, dilation=dilation, activation=activation)
    except Exception as error:  # noqa: BLE001  (the point: which exceptions escape)
        named(error, "x", "weight", "bias", "stride", "padding", "dilation", "activation", "kernel")
        OUTCOMES["conv2d", "refused"] += 1
        return
    OUTCOMES["conv2d", "matched"] += 1
    assert is_real_float(x, weight, *(() if b is None else (b,))) and activation in (None, "relu")
    stride_hw, dilation_hw = ref.pair(stride), ref.pair(dilation)
    pads = ref.explicit_padding(padding.lower() if isinstance(padding, str) else padding, (h, w), (r, s),
                                stride_hw, dilation_hw)
    expected = ref.conv2d(x, weight, b, stride_hw, pads, dilation_hw, relu=activation == "relu")
    assert y.dtype == x.dtype and y.shape == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, **tolerance(x.dtype))
    if x.dtype == np.float64 and np.isfinite(x).all() and activation is None and y.size:
        xt, wt = gpuconv.Tensor(x, requires_grad=True), gpuconv.Tensor(weight, requires_grad=True)
        dy = np.random.default_rng(0).standard_normal(y.shape)
        F.conv2d(xt, wt, stride=stride, padding=padding, dilation=dilation).backward(dy)
        dx, dw, _ = ref.conv2d_grads(x, weight, dy, stride_hw, pads, dilation_hw)
        np.testing.assert_allclose(xt.grad, dx, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(wt.grad, dw, rtol=1e-9, atol=1e-9)


VALID_POOL = dict(h=st.integers(1, 6), w=st.integers(1, 6), pool=st.one_of(good_int, st.tuples(good_int, good_int)),
                  strides=st.one_of(st.none(), good_int, st.tuples(good_int, good_int)),
                  padding=st.sampled_from(["valid", "same", "Same"]))
ANY_POOL = dict(h=small_ints, w=small_ints, pool=pair_args, strides=st.one_of(st.none(), pair_args),
                padding=st.sampled_from(["valid", "same", "Same", "full", 1, None]))


@adversarial
@given(data=st.data(), valid=st.booleans(), n=small_ints, c=small_ints, mode=st.sampled_from(["max", "avg"]))
def test_pooling(data, valid, n, c, mode):
    h, w, pool, strides, padding = (data.draw(strategy, label=name)
                                    for name, strategy in (VALID_POOL if valid else ANY_POOL).items())
    x = data.draw(arrays((n, c, h, w), dtype=common_dtype(data)))
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    try:
        y = fn(x, pool, strides, padding)
    except Exception as error:  # noqa: BLE001
        named(error, "x", "pool_size", "strides", "padding", "pool window")
        OUTCOMES["pooling", "refused"] += 1
        return
    OUTCOMES["pooling", "matched"] += 1
    assert is_real_float(x)
    p = ref.pair(pool)
    stride = p if strides is None else ref.pair(strides)
    pads = ref.explicit_padding(padding.lower(), (h, w), p, stride)
    with np.errstate(invalid="ignore"):
        expected = ref.pool2d(x, mode, p, stride, pads)
    assert y.dtype == x.dtype
    np.testing.assert_allclose(y.numpy(), expected, **tolerance(x.dtype))
    if y.size:
        xt = gpuconv.Tensor(x, requires_grad=True)
        fn(xt, pool, strides, padding).backward(np.ones(y.shape, x.dtype))
        assert xt.grad.shape == x.shape and xt.grad.dtype == x.dtype


@adversarial
@given(data=st.data(), shape=st.lists(st.integers(0, 4), min_size=0, max_size=4))
def test_relu(data, shape):
    x = data.draw(arrays(tuple(shape), dtype=common_dtype(data)))
    try:
        y = F.relu(x)
    except Exception as error:  # noqa: BLE001
        named(error, "x")
        OUTCOMES["relu", "refused"] += 1
        return
    OUTCOMES["relu", "matched"] += 1
    assert is_real_float(x) and y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(y.numpy(), np.maximum(x, 0))
    xt = gpuconv.Tensor(x, requires_grad=True)
    F.relu(xt).backward(np.ones(x.shape, x.dtype))
    np.testing.assert_array_equal(xt.grad, (x > 0).astype(x.dtype))


@adversarial
@given(data=st.data(), h1=small_ints, w1=small_ints, h2=small_ints, w2=small_ints,
       mode=st.sampled_from(["full", "same", "valid", "middle"]),
       boundary=st.sampled_from(["fill", "wrap", "symm", "reflect"]), name=st.sampled_from(["correlate2d", "convolve2d"]))
def test_signal(data, h1, w1, h2, w2, mode, boundary, name):
    scipy_signal = pytest.importorskip("scipy.signal")
    in1 = data.draw(arrays((h1, w1), DTYPES[:6], specials=False))
    in2 = data.draw(arrays((h2, w2), DTYPES[:6], specials=False))
    # scipy refuses float16 and bool; gpuconv computes them in float32/float64 and returns the result type
    widened = {np.dtype(np.float16): np.float32, np.dtype(np.bool_): np.float64}
    half = np.float16 in (in1.dtype, in2.dtype)
    expected = None
    if in1.size and in2.size:  # scipy itself dies of SIGFPE on some empty inputs; gpuconv refuses them
        try:
            expected = getattr(scipy_signal, name)(*(a.astype(widened.get(a.dtype, a.dtype)) for a in (in1, in2)),
                                                   mode=mode, boundary=boundary)
        except ValueError:
            pass
    if expected is not None and not half:
        expected = expected.astype(np.result_type(in1.dtype, in2.dtype))
    try:
        got = getattr(gs, name)(in1, in2, mode=mode, boundary=boundary)
    except Exception as error:  # noqa: BLE001
        named(error, "in1", "in2", "mode", "boundary", "valid")
        assert expected is None, f"scipy accepts it: {error}"
        OUTCOMES["signal", "refused"] += 1
        return
    OUTCOMES["signal", "matched"] += 1
    assert expected is not None and got.shape == expected.shape
    if half:
        np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2 * max(1.0, float(np.abs(expected).max())))
    else:
        assert got.dtype == expected.dtype
        np.testing.assert_allclose(got, expected, **tolerance(got.dtype if got.dtype.kind == "f" else np.float64))


LAYERS = {
    "Conv2D": lambda d: Conv2D(d.draw(st.one_of(st.integers(1, 3), st.sampled_from([0, True, 2.0]))), d.draw(pair_args),
                               strides=d.draw(pair_args), padding=d.draw(padding_args),
                               activation=d.draw(st.sampled_from([None, "relu", "softmax", "gelu"]))),
    "MaxPool2D": lambda d: MaxPool2D(d.draw(pair_args), padding=d.draw(st.sampled_from(["valid", "same", 2, "x"]))),
    "Dense": lambda d: Dense(d.draw(st.one_of(st.integers(1, 3), st.sampled_from([0, False, "3"])))),
    "BatchNormalization": lambda d: BatchNormalization(axis=d.draw(st.integers(-5, 5))),
    "Dropout": lambda d: Dropout(d.draw(st.sampled_from([0.0, 0.5, 1.0, -0.1, "0.1", np.nan]))),
    "Flatten": lambda d: Flatten(),
}
LAYER_ARGUMENTS = ("filters", "kernel_size", "strides", "padding", "activation", "pool_size", "units", "axis",
                   "rate", "layer", "x", "weight", "kernel", "pool window", "input")


@adversarial
@given(data=st.data(), kind=st.sampled_from(sorted(LAYERS)), shape=st.lists(st.integers(0, 4), min_size=2, max_size=4),
       training=st.booleans())
def test_layers(data, kind, shape, training):
    x = data.draw(arrays(tuple(shape), [np.float32, np.float64, np.int32], specials=False))
    try:
        layer = LAYERS[kind](data)
        y = layer(x, training=training)
    except Exception as error:  # noqa: BLE001
        named(error, *LAYER_ARGUMENTS)
        OUTCOMES["layers", "refused"] += 1
        return
    OUTCOMES["layers", "matched"] += 1
    assert y.dtype.kind == "f" and y.shape[0] == x.shape[0]
    if kind in ("Conv2D", "MaxPool2D", "Dense", "Flatten"):
        assert y.shape[1:] == tuple(layer.output_shape(x.shape[1:]))
    if kind == "Conv2D":
        stride = ref.pair(layer.strides)
        pads = ref.explicit_padding(layer.padding.lower() if isinstance(layer.padding, str) else layer.padding,
                                    x.shape[2:], layer.kernel_size, stride)
        expected = ref.conv2d(x, layer.weights["kernel"].data, layer.weights["bias"].data, stride, pads,
                              relu=layer.activation == "relu")
        if layer.activation == "softmax":
            expected = np.exp(expected - expected.max(axis=1, keepdims=True))
            expected /= expected.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(y.numpy(), expected, **tolerance(y.dtype))


def test_every_property_was_computed_and_refused_many_times():
    """Run after the properties above (file order): each side of each property was exercised."""
    print("adversarial outcomes:", dict(sorted(OUTCOMES.items())))
    if not OUTCOMES:
        pytest.skip("run with the property tests of this file")
    for test in ("conv2d", "pooling", "relu", "signal", "layers"):
        for outcome in ("matched", "refused"):
            assert OUTCOMES[test, outcome] >= ADVERSARIAL_EXAMPLES // 20, (test, outcome, dict(OUTCOMES))
