"""The lectures' Keras code (shared/seeds) runs with only its import changed: shapes, parameter counts and
training that lowers the loss.

Lecture 000 (cnn-lecture-lee-slides): the tf.keras MNIST model and the NEU steel-defect model, written
channels-last, so the one documented extra line is ``set_image_data_format('channels_last')``.
Lecture 001 (cnn-lecture-prevost-keras): Keras 1's ``Convolution2D(25, 3, 3, input_shape=(1, 28, 28))``,
channels-first as it was written (gpuconv's default layout).
"""
import re

import numpy as np
import pytest

import gpuconv
import gpuconv as tf  # the lectures' `import tensorflow as tf`, changed
from gpuconv.datasets import mnist


@pytest.fixture
def channels_last():
    gpuconv.config.set_image_data_format("channels_last")
    yield
    gpuconv.config.set_image_data_format("channels_first")


def summary_rows(model):
    """[(output shape, parameter count)] per layer, read from ``summary()``'s text."""
    lines = []
    model.summary(print_fn=lines.append)
    rows = [re.search(r"(\(None[^)]*\))\s+([\d,]+)$", line) for line in lines[0].splitlines()]
    return [(m.group(1), int(m.group(2).replace(",", ""))) for m in rows if m]


def mnist_slice(train, test):
    (x, y), (xt, yt) = mnist.load_data(progress=False)
    return (x[:train], y[:train]), (xt[:test], yt[:test])


@pytest.mark.network
def test_lecture_000_mnist_model_as_written(channels_last):
    gpuconv.set_seed(0)
    (train_x, train_y), (test_x, test_y) = mnist_slice(2048, 512)
    train_x, test_x = train_x.reshape(-1, 28, 28, 1) / 255.0, test_x.reshape(-1, 28, 28, 1) / 255.0  # float64

    # ---- the lecture's code, verbatim from here
    model = tf.keras.models.Sequential([
        tf.keras.layers.Conv2D(filters = 32,
                              kernel_size = (3,3),
                              activation = 'relu',
                              padding = 'SAME',
                              input_shape = (28, 28, 1)),
        tf.keras.layers.MaxPool2D((2,2)),
        tf.keras.layers.Conv2D(filters = 64,
                              kernel_size = (3,3),
                              activation = 'relu',
                              padding = 'SAME',
                              input_shape = (14, 14, 32)),
        tf.keras.layers.MaxPool2D((2,2)),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(units = 128, activation = 'relu'),
        tf.keras.layers.Dense(units = 10, activation = 'softmax')
    ])
    model.compile(optimizer = 'adam',
                  loss = 'sparse_categorical_crossentropy',
                  metrics = ['accuracy'])
    before, _ = model.evaluate(test_x, test_y)
    history = model.fit(train_x, train_y)
    test_loss, test_acc = model.evaluate(test_x, test_y)
    # ---- to here

    rows = summary_rows(model)
    shapes = [shape for shape, _ in rows]
    assert shapes == ["(None, 28, 28, 32)", "(None, 14, 14, 32)", "(None, 14, 14, 64)", "(None, 7, 7, 64)",
                      "(None, 3136)", "(None, 128)", "(None, 10)"]
    # the lecture's arithmetic: (kh*kw*C_in + 1) * filters, (inputs + 1) * units
    assert [count for _, count in rows] == [
        (3 * 3 * 1 + 1) * 32, 0, (3 * 3 * 32 + 1) * 64, 0, 0, (7 * 7 * 64 + 1) * 128, (128 + 1) * 10]
    assert len(history.history["loss"]) == 1  # Keras's defaults: one epoch, batch 32
    assert history.params["steps"] == 2048 // 32
    assert test_loss < before / 3 and test_acc > 0.8, (before, test_loss, test_acc)


def test_lecture_000_neu_steel_model_as_written(channels_last, rng):
    gpuconv.set_seed(1)
    # six synthetic 'defect' classes: a bright horizontal band whose height says the class, plus noise
    labels = np.arange(12) % 6
    images = rng.normal(0.0, 0.1, (12, 200, 200, 1))
    for image, label in zip(images, labels):
        image[30 * label:30 * label + 30] += 1.0
    train_x, train_y = images, labels

    # ---- the lecture's code, verbatim (but for the number of epochs)
    model = tf.keras.models.Sequential([
        tf.keras.layers.Conv2D(filters = 32,
                              kernel_size = (3,3),
                              activation = 'relu',
                              padding = 'SAME',
                              input_shape = (200, 200, 1)),
        tf.keras.layers.MaxPool2D((2,2)),
        tf.keras.layers.Conv2D(filters = 64,
                              kernel_size = (3,3),
                              activation = 'relu',
                              padding = 'SAME',
                              input_shape = (100, 100, 32)),
        tf.keras.layers.MaxPool2D((2,2)),
        tf.keras.layers.Conv2D(filters = 128,
                              kernel_size = (3,3),
                              activation = 'relu',
                              padding = 'SAME',
                              input_shape = (50, 50, 64)),
        tf.keras.layers.MaxPool2D((2,2)),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(units = 128, activation = 'relu'),
        tf.keras.layers.Dense(units = 6, activation = 'softmax')
    ])
    model.compile(optimizer = 'adam',
                  loss = 'sparse_categorical_crossentropy',
                  metrics = ['accuracy'])
    history = model.fit(train_x, train_y, epochs = 4, batch_size = 6, verbose = 0)
    # ---- to here

    rows = summary_rows(model)
    assert [shape for shape, _ in rows] == [
        "(None, 200, 200, 32)", "(None, 100, 100, 32)", "(None, 100, 100, 64)", "(None, 50, 50, 64)",
        "(None, 50, 50, 128)", "(None, 25, 25, 128)", "(None, 80000)", "(None, 128)", "(None, 6)"]
    assert [count for _, count in rows] == [
        320, 0, 18_496, 0, 73_856, 0, 0, (25 * 25 * 128 + 1) * 128, (128 + 1) * 6]
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses


@pytest.mark.network
def test_lecture_001_keras_1_model_as_written():
    from gpuconv.keras.layers import Activation, Convolution2D, Dense, Flatten, MaxPooling2D
    from gpuconv.keras.models import Sequential
    gpuconv.set_seed(2)
    (X_train, y_train), (X_test, y_test) = mnist_slice(2048, 512)
    X_train, X_test = X_train.reshape(-1, 1, 28, 28) / 255.0, X_test.reshape(-1, 1, 28, 28) / 255.0
    Y_train = np.eye(10)[y_train]  # Keras 1 examples trained on one-hot rows

    # ---- the lecture's code, verbatim (its elided parts filled with Keras 1 calls)
    model2 = Sequential()
    model2.add( Convolution2D( 25,3,3,
                               input_shape=(1,28,28) ) )
    model2.add(Activation('relu'))
    model2.add(MaxPooling2D((2,2)))
    model2.add(Convolution2D(50,3,3))
    model2.add(Activation('relu'))
    model2.add(MaxPooling2D((2,2)))
    model2.add(Flatten())
    model2.add(Dense(10))
    model2.add(Activation('softmax'))
    model = model2
    model.compile(loss='binary_crossentropy', optimizer='adam', metrics=['accuracy'])
    before = model.evaluate(X_test, np.eye(10)[y_test])[0]
    model.fit(X_train, Y_train, epochs=2, batch_size=20, verbose=0)
    # ---- to here

    rows = summary_rows(model)
    shapes = [shape for shape, _ in rows]
    assert shapes[:6] == ["(None, 25, 26, 26)", "(None, 25, 26, 26)", "(None, 25, 13, 13)", "(None, 50, 11, 11)",
                          "(None, 50, 11, 11)", "(None, 50, 5, 5)"]  # the lecture's 25x26x26 ... 50x5x5
    params = [count for _, count in rows]
    # the lecture counts 9 weights per filter per input channel: 25x9 in the first layer; Keras adds a bias
    # per filter and the second layer's filters see 25 channels
    assert params[0] == 25 * 9 + 25 and params[3] == 50 * 25 * 9 + 50
    after = model.evaluate(X_test, np.eye(10)[y_test])[0]
    assert after < before / 2, (before, after)
    assert (model.predict(X_test).argmax(1) == y_test).mean() > 0.8
