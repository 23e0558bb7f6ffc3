"""Keras's result conventions: evaluate's scalar / list / dict, predict's NumPy, get_weights / set_weights."""
import numpy as np
import pytest

import gpuconv
from gpuconv.layers import BatchNormalization, Conv2D, Dense, Flatten


def model(metrics=None):
    gpuconv.set_seed(0)
    m = gpuconv.Sequential([Conv2D(2, 3, activation="relu"), BatchNormalization(), Flatten(),
                            Dense(3, activation="softmax")], input_shape=(1, 5, 5))
    m.compile("sgd", "sparse_categorical_crossentropy", metrics)
    return m


def test_evaluate_returns_what_keras_returns(rng):
    x, y = rng.standard_normal((6, 1, 5, 5)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2])
    loss = model().evaluate(x, y)
    assert isinstance(loss, float)
    with_metrics = model(["accuracy"])
    loss_and_accuracy = with_metrics.evaluate(x, y)
    assert isinstance(loss_and_accuracy, list) and loss_and_accuracy[0] == pytest.approx(loss)
    assert with_metrics.evaluate(x, y, return_dict=True) == dict(zip(["loss", "accuracy"], loss_and_accuracy))
    history = with_metrics.fit(x, y, epochs=1, batch_size=3, validation_data=(x, y), verbose=0)
    assert sorted(history.history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    predictions = with_metrics.predict(x)
    assert type(predictions) is np.ndarray and predictions.shape == (6, 3)


def test_get_and_set_weights_in_keras_order(rng):
    source, target = model(), model()
    source.build()
    for tensor in source.parameters():
        tensor.data = tensor.data + rng.standard_normal(tensor.shape).astype(np.float32)
    weights = source.get_weights()
    assert [w.shape for w in weights] == [(2, 1, 3, 3), (2,), (2,), (2,), (2,), (2,), (18, 3), (3,)]
    target.set_weights(weights)
    for a, b in zip(target.get_weights(), weights):
        np.testing.assert_array_equal(a, b)
    before = target.get_weights()
    bad = list(weights)
    bad[-1] = np.zeros(4, np.float32)  # the last one wrong: nothing may change
    with pytest.raises(ValueError, match=r"weights for dense/bias must be a real floating-point array of shape \(3,\)"):
        target.set_weights(bad)
    with pytest.raises(ValueError, match=r"weights must be a list of 8 arrays"):
        target.set_weights(weights[:-1])
    for a, b in zip(target.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_float64_and_integer_inputs_and_lists_are_cast_to_the_model_dtype(rng):
    """The canonical Keras line fit(x / 255.0, y): float64 pixels train a float32 model."""
    pixels = rng.integers(0, 256, (8, 1, 5, 5))
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    m = model(["accuracy"])
    m.fit(pixels / 255.0, labels, epochs=1, batch_size=4, verbose=0)  # float64
    m.fit(pixels.astype(np.uint8), labels, epochs=1, batch_size=4, verbose=0)  # integers
    m.fit((pixels / 255.0).tolist(), labels.tolist(), epochs=1, batch_size=4, verbose=0)  # nested lists
    assert all(w.dtype == np.float32 for w in m.get_weights())
    assert m.predict((pixels / 255.0).tolist()).dtype == np.float32
    assert isinstance(m.evaluate(pixels / 255.0, labels)[0], float)
