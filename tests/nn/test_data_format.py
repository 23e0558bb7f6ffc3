"""The global image data format, input_shape=, build-time input checks that name the fix, and the
softmax / from_logits advice."""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import gpuconv
from gpuconv import config
from gpuconv.layers import BatchNormalization, Conv2D, Dense, Dropout, Flatten, Input, MaxPool2D, ReLU


@pytest.fixture
def channels_last():
    config.set_image_data_format("channels_last")
    yield
    config.set_image_data_format("channels_first")


def mnist_like(data_format, **first):
    return gpuconv.Sequential([
        Conv2D(4, 3, padding="same", activation="relu", data_format=data_format, **first),
        BatchNormalization(axis=1 if data_format == "channels_first" else -1), MaxPool2D(2, data_format=data_format),
        ReLU(), Dropout(0.0), Conv2D(6, 3, data_format=data_format), Flatten(), Dense(5, activation="softmax")])


def test_channels_last_model_equals_the_channels_first_one(rng):
    """Same weights (kernels are KCRS either way; the dense rows permuted from CHW to HWC order) give the same
    outputs and gradients on transposed data; the model transposes twice in all, not per layer."""
    first = mnist_like("channels_first", input_shape=(2, 9, 9))
    last = mnist_like("channels_last", input_shape=(9, 9, 2))
    assert [s for s in first.build()[:-2]] == [(c, h, w) for h, w, c in last.build()[:-2]]
    weights = first.get_weights()
    dense = weights[-2]  # rows in (C, H, W) order: 6 x 2 x 2
    weights[-2] = dense.reshape(6, 2, 2, 5).transpose(1, 2, 0, 3).reshape(24, 5)
    last.set_weights(weights)
    x = rng.standard_normal((5, 2, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(last.predict(x.transpose(0, 2, 3, 1)), first.predict(x), rtol=1e-5, atol=1e-6)
    y = rng.integers(0, 5, 5)
    for model in (first, last):
        model.compile("sgd", "sparse_categorical_crossentropy")
    first.fit(x, y, epochs=1, verbose=0, shuffle=False)
    last.fit(x.transpose(0, 2, 3, 1), y, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(last.get_weights()[0], first.get_weights()[0], rtol=1e-4, atol=1e-6)

    transposes = []
    original = gpuconv.Tensor.transpose
    gpuconv.Tensor.transpose = lambda self, *axes: (transposes.append(axes), original(self, *axes))[1]
    try:
        last.predict(x.transpose(0, 2, 3, 1))
    finally:
        gpuconv.Tensor.transpose = original
    assert transposes == [(0, 3, 1, 2), (0, 2, 3, 1)]  # once in, once back before Flatten


def test_global_format_is_read_at_construction(channels_last):
    layer = Conv2D(2, 3)
    assert layer.data_format == "channels_last" and BatchNormalization().axis == -1
    config.set_image_data_format("channels_first")
    assert layer.data_format == "channels_last" and Conv2D(2, 3).data_format == "channels_first"
    assert BatchNormalization().axis == 1
    with pytest.raises(ValueError, match="data_format must be 'channels_first'"):
        config.set_image_data_format("NHWC")


def test_environment_variable_sets_the_default():
    code = ("import gpuconv; from gpuconv.layers import MaxPool2D; "
            "print(gpuconv.config.image_data_format(), MaxPool2D().data_format)")
    run = lambda value: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       env=dict(os.environ, GPUCONV_IMAGE_DATA_FORMAT=value))
    assert run("channels_last").stdout.split() == ["channels_last", "channels_last"]
    bad = run("nhwc")
    assert bad.returncode != 0 and "GPUCONV_IMAGE_DATA_FORMAT must be 'channels_first'" in bad.stderr


def test_input_shape_on_the_first_layer_builds_the_model():
    model = gpuconv.Sequential([Conv2D(2, 3, input_shape=(1, 8, 8)), Flatten(), Dense(3, input_shape=(999,))])
    assert model.input_shape == (1, 8, 8) and all(layer.built for layer in model.layers)
    assert model.count_params() == (9 + 1) * 2 + (72 + 1) * 3  # later input_shape= is ignored, as in Keras
    keras3 = gpuconv.Sequential([Input(shape=(1, 8, 8)), Conv2D(2, 3)])
    assert keras3.input_shape == (1, 8, 8) and len(keras3.layers) == 1
    assert gpuconv.Sequential([Dense(2, input_dim=7)]).input_shape == (7,)
    with pytest.raises(ValueError, match="input_shape must be a tuple of positive ints"):
        Conv2D(2, 3, input_shape=(28, 0, 1))


def test_a_channels_last_shape_given_to_channels_first_layers_names_the_fix():
    with pytest.raises(ValueError, match=r"layer max_pool2d \(MaxPool2D\) cannot take input of shape "
                                         r"\(None, 8, 28, 1\).*shape \(28, 28, 1\) looks channels-last.*"
                                         r"data_format='channels_last'"):
        gpuconv.Sequential([Conv2D(8, 3, padding="same", input_shape=(28, 28, 1)), MaxPool2D(2)])
    # builds, but the shape still looks transposed: a warning says so
    with pytest.warns(UserWarning, match="looks channels-last"):
        gpuconv.Sequential([Conv2D(8, 1, input_shape=(28, 28, 3)), Flatten(), Dense(2)]).summary(print_fn=len)
    model = gpuconv.Sequential([Conv2D(8, 3, input_shape=(1, 28, 28)), Flatten(), Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"samples of shape \(28, 28, 1\).*look channels-last.*transpose\(0, 3, 1, 2\)"):
        model.fit(np.zeros((4, 28, 28, 1)), np.zeros(4, int), verbose=0)


def test_summary_never_shows_a_non_positive_size():
    for layers in ([Conv2D(2, 5, input_shape=(1, 4, 4))], [MaxPool2D(3, input_shape=(2, 2, 2))],
                   [Conv2D(2, 3, input_shape=(28, 28))]):
        with pytest.raises(ValueError, match="cannot take input of shape"):
            gpuconv.Sequential(layers).summary()  # refused when built, before any summary row
    deferred = gpuconv.Sequential([Conv2D(2, 5)])  # no input shape yet: the first data builds it
    with pytest.raises(ValueError, match="cannot take input of shape"):
        deferred(np.zeros((1, 1, 4, 4), np.float32))


def test_softmax_and_from_logits_mismatches_are_advised_once():
    logits_model = gpuconv.Sequential([Dense(3, input_shape=(4,))])
    with pytest.warns(UserWarning, match="add activation='softmax'.*from_logits=True") as record:
        logits_model.compile("adam", "sparse_categorical_crossentropy")
    assert len(record) == 1
    probabilities = gpuconv.Sequential([Dense(3, activation="softmax", input_shape=(4,))])
    with pytest.warns(UserWarning, match="expects logits.*applies softmax"):
        probabilities.compile("adam", gpuconv.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probabilities.compile("adam", "sparse_categorical_crossentropy")
        logits_model.compile("adam", gpuconv.losses.SparseCategoricalCrossentropy(from_logits=True))


def test_logits_model_with_from_logits_trains(rng):
    gpuconv.set_seed(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)
    model = gpuconv.Sequential([Dense(16, activation="relu", input_shape=(4,)), Dense(3)])
    model.compile(gpuconv.optimizers.Adam(1e-2), gpuconv.losses.SparseCategoricalCrossentropy(from_logits=True),
                  ["accuracy"])
    history = model.fit(x, y, epochs=20, verbose=0)
    assert history.history["accuracy"][-1] > 0.8
