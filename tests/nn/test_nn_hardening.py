"""Regression tests of the hardening issue's findings on layers, models and weight files (numbers are the issue's)."""
import os
import re
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import gpuconv
from gpuconv.layers import AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPool2D


def small_model(compile=True):
    gpuconv.set_seed(0)
    model = gpuconv.Sequential([Conv2D(2, 3, padding="same", activation="relu"), MaxPool2D(), Flatten(),
                                Dense(3, activation="softmax")], input_shape=(1, 6, 6))
    if compile:
        model.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"])
    return model


def weights_of(model):
    return {k: np.array(v) for k, v in model.weight_arrays().items()}


def test_3_and_11_empty_data_is_refused():
    model = small_model()
    empty_x, empty_y = np.zeros((0, 1, 6, 6), np.float32), np.zeros(0, np.int64)
    with pytest.raises(ValueError, match=r"^x is empty \(shape \(0, 1, 6, 6\)\)"):
        model.evaluate(empty_x, empty_y)
    with pytest.raises(ValueError, match=r"^x is empty"):
        model.fit(empty_x, empty_y, verbose=0)
    x, y = np.ones((4, 1, 6, 6), np.float32), np.array([0, 1, 2, 0])
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"^validation_data x is empty"):
        model.fit(x, y, validation_data=(empty_x, empty_y), verbose=0)
    assert all(np.array_equal(before[k], v) for k, v in weights_of(model).items())  # refused before any step


def test_9_building_names_the_layer_whose_kernel_or_pool_does_not_fit():
    # a model with its input shape builds when constructed (as Keras does), so the error comes there
    with pytest.raises(ValueError, match=r"layer conv2d \(Conv2D\) cannot take input of shape \(None, 1, 4, 4\): "
                                         r"kernel 5x5 .* larger than the padded input 4x4"):
        gpuconv.Sequential([Conv2D(2, 5), MaxPool2D(2), Flatten(), Dense(2)], input_shape=(1, 4, 4))
    model = gpuconv.Sequential([Conv2D(2, 3), MaxPool2D(3), Flatten(), Dense(2)])
    with pytest.raises(ValueError, match=r"layer max_pool2d \(MaxPool2D\) cannot take input of shape "
                                         r"\(None, 2, 2, 2\): pool window 3x3"):
        model.build((1, 4, 4))


@pytest.mark.parametrize("bad", [np.arange(18).reshape(2, 1, 3, 3), np.ones((2, 1, 3, 3), bool),
                                 np.array(["1"] * 18).reshape(2, 1, 3, 3),
                                 np.zeros((2, 1, 3, 3), "datetime64[s]"), np.ones((2, 1, 3, 3), complex)])
def test_10_and_12_load_weights_refuses_non_float_arrays_and_changes_nothing(tmp_path, bad):
    model = small_model()
    path = tmp_path / "w.npz"
    model.save_weights(path)
    arrays = dict(np.load(path))
    arrays["conv2d/kernel"] = bad  # the first array in the model's order: later ones would already be written
    np.savez(path, **arrays)
    other = small_model()
    for tensor in other.parameters():
        tensor.data = tensor.data + 1.0
    before = weights_of(other)
    with pytest.raises(TypeError, match=r"not real floating point, refused as weights: \['conv2d/kernel: "
                                        + re.escape(f"{bad.dtype}']")):
        other.load_weights(path)
    assert all(np.array_equal(before[k], v) for k, v in weights_of(other).items())


def test_12_a_file_with_a_wrong_array_late_in_it_changes_nothing(tmp_path):
    model = small_model()
    path = tmp_path / "w.npz"
    model.save_weights(path)
    arrays = dict(np.load(path))
    arrays["dense/bias"] = np.zeros(4, np.float32)  # the last array: wrong shape
    np.savez(path, **arrays)
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"dense/bias: file \(4,\), model \(3,\)"):
        model.load_weights(path)
    assert all(np.array_equal(before[k], v) for k, v in weights_of(model).items())


def test_13_labels_and_inputs_are_checked_before_the_first_step():
    model = small_model()
    x = np.random.default_rng(0).standard_normal((64, 1, 6, 6)).astype(np.float32)
    y = np.zeros(64, np.int64)
    y[-1] = 3  # out of range, in the last batch
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"^y must hold class indices in \[0, 3\) \(the model has 3 outputs\), "
                                         r"got values in \[0, 3\]"):
        model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match=r"^x has samples of shape \(1, 5, 6\) but the model's input_shape is "
                                         r"\(1, 6, 6\)"):
        model.fit(x[:, :, :5], y, verbose=0)
    with pytest.raises(TypeError, match=r"^x has dtype <U1; the model takes real numbers"):
        model.fit(np.full((64, 1, 6, 6), "a"), y, verbose=0)
    with pytest.raises(ValueError, match=r"^y must be a 1-D array of integer class indices"):
        model.fit(x, y.astype(np.float32), verbose=0)
    with pytest.raises(ValueError, match=r"^x has 64 samples but y has 63"):
        model.fit(x, y[:63], verbose=0)
    assert all(np.array_equal(before[k], v) for k, v in weights_of(model).items())


def test_15_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    model = small_model()
    path = tmp_path / "w.npz"
    model.save_weights(path)
    # a writer killed mid-write (SIGKILL: no clean-up runs) leaves its temporary behind
    code = ("import os, signal, numpy as np\nfrom gpuconv.fileio import atomic_write\n"
            f"atomic_write({str(path)!r}, lambda f: (f.write(b'partial'), os.kill(os.getpid(), signal.SIGKILL)))")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(leftovers) == 1 and np.load(path)["dense/bias"].shape == (3,)  # the old file is intact
    model.save_weights(path)
    assert os.listdir(tmp_path) == ["w.npz"]


def test_16_save_keeps_the_mode_and_follows_symlinks(tmp_path):
    model = small_model()
    target = tmp_path / "real.npz"
    model.save_weights(target)
    os.chmod(target, 0o600)
    model.save_weights(target)
    assert os.stat(target).st_mode & 0o777 == 0o600
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    model.save_weights(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert os.stat(target).st_mode & 0o777 == 0o600 and sorted(os.listdir(tmp_path)) == ["link.npz", "real.npz"]


def test_17_names_and_shapes_are_checked_from_the_headers_before_reading(tmp_path, monkeypatch):
    model = small_model()
    path = tmp_path / "w.npz"
    model.save_weights(path)
    arrays = dict(np.load(path))
    arrays["unexpected"] = np.zeros((64, 1024, 1024), np.uint8)  # 64 MiB, never read
    np.savez(path, **arrays)
    reads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: reads.append(a) or real_load(*a, **k))
    with pytest.raises(ValueError, match=r"unexpected \['unexpected'\]"):
        model.load_weights(path)
    assert reads == []  # refused from the headers alone
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match=r"not a readable weights file \(member 'notes.txt' is not a .npy array\)"):
        model.load_weights(path)


def test_23_batch_normalization_axes_and_flatten_on_an_empty_batch(rng):
    x = rng.standard_normal((5, 3, 4, 2)).astype(np.float32)
    last = BatchNormalization(axis=-1)
    out = last(x, training=True).numpy()
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    assert last.weights["gamma"].shape == (2,)
    first = BatchNormalization(axis=1)
    np.testing.assert_allclose(first(x, training=True).numpy().mean(axis=(0, 2, 3)), 0, atol=1e-5)
    with pytest.raises(ValueError, match=r"axis must not be 0, the batch axis"):
        BatchNormalization(axis=0)
    with pytest.raises(ValueError, match=r"axis 4 is out of range for input of 4 dimensions"):
        BatchNormalization(axis=4)(x, training=True)
    with pytest.raises(ValueError, match=r"axis -5 is out of range"):
        BatchNormalization(axis=-5)(x)
    assert Flatten()(np.zeros((0, 3, 4, 2), np.float32)).shape == (0, 24)


@pytest.mark.parametrize("make,error,match", [
    (lambda: MaxPool2D(padding=3), ValueError, r"padding must be 'valid' or 'same'"),
    (lambda: AveragePooling2D(padding="full"), ValueError, r"padding must be 'valid' or 'same'"),
    (lambda: Conv2D(4, 3, padding="bogus"), ValueError, r"padding must be .*unknown string 'bogus'"),
    (lambda: Conv2D(4, 3, padding=-1), ValueError, r"padding must be non-negative"),
    (lambda: Conv2D(True, 3), TypeError, r"filters must be a positive int, got True"),
    (lambda: Conv2D(0, 3), ValueError, r"filters must be a positive int"),
    (lambda: Conv2D(4, 3, strides=(1, True)), TypeError, r"strides must be an int or a pair"),
    (lambda: Conv2D(4, 3, use_bias="yes"), TypeError, r"use_bias must be True or False"),
    (lambda: Conv2D(4, 3, kernel_initializer="orthogonal"), ValueError, r"kernel_initializer must be one of"),
    (lambda: Conv2D(4, 3, activation="tanh"), ValueError, r"activation must be None, 'linear', 'relu' or 'softmax'"),
    (lambda: Conv2D(4, 3, data_format="NHWC"), ValueError, r"data_format must be 'channels_first'"),
    (lambda: Dense(True), TypeError, r"units must be a positive int, got True"),
    (lambda: Dense(2.5), TypeError, r"units must be a positive int"),
    (lambda: Dense(3, bias_initializer=None), ValueError, r"bias_initializer must be one of"),
    (lambda: Dropout(1.0), ValueError, r"rate must be in \[0, 1\)"),
    (lambda: Dropout("0.5"), TypeError, r"rate must be a number"),
    (lambda: BatchNormalization(momentum=1.5), ValueError, r"momentum must be in \[0, 1\)"),
    (lambda: BatchNormalization(epsilon=0), ValueError, r"epsilon must be a positive number"),
])
def test_24_layer_arguments_are_checked_in_the_constructor(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_24_numpy_integers_are_accepted():
    layer = Conv2D(np.int64(4), np.int32(3), strides=np.int64(1))
    assert layer.filters == 4 and layer.kernel_size == (3, 3)
    assert Dense(np.int16(7)).units == 7 and MaxPool2D(np.int64(2)).pool_size == (2, 2)
