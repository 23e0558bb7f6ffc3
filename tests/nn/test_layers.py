"""Layers, losses, optimizers and Sequential: shapes, parameter counts, gradients, training, weights files."""
import os

import numpy as np
import pytest

import gpuconv
import reference as ref
from gpuconv import losses, optimizers
from gpuconv.layers import (AveragePooling2D, BatchNormalization, Conv2D, Dense, Dropout, Flatten, MaxPool2D,
                            ReLU)


def seeds_model():
    """cnn-lecture-lee-slides' Keras MNIST CNN: Conv 25 -> pool -> Conv 50 -> pool -> Dense 100 -> Dense 10."""
    return gpuconv.Sequential([Conv2D(25, 3, activation="relu"), MaxPool2D(), Conv2D(50, 3, activation="relu"),
                               MaxPool2D(), Flatten(), Dense(100, activation="relu"),
                               Dense(10, activation="softmax")], input_shape=(1, 28, 28))


def test_summary_of_the_seeds_model(capsys):
    model = seeds_model()
    total = model.summary()
    text = capsys.readouterr().out
    for shape, params in [("(None, 25, 26, 26)", "250"), ("(None, 25, 13, 13)", "0"),
                          ("(None, 50, 11, 11)", "11,300"), ("(None, 50, 5, 5)", "0"), ("(None, 1250)", "0"),
                          ("(None, 100)", "125,100"), ("(None, 10)", "1,010")]:
        assert any(shape in line and line.rstrip().endswith(params) for line in text.splitlines()), shape
    # (kh*kw*C + 1)*D per conv, (in + 1)*out per dense
    assert total == (9 * 1 + 1) * 25 + (9 * 25 + 1) * 50 + (1250 + 1) * 100 + (100 + 1) * 10
    assert "Total params: 137,660" in text


def test_summary_of_the_example_model_and_batchnorm_counts():
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
    from train_mnist import build_model
    assert build_model().summary(print_fn=lambda s: None) == 320 + 18496 + 401536 + 1290
    model = gpuconv.Sequential([Conv2D(4, 3), BatchNormalization(), Flatten(), BatchNormalization()],
                               input_shape=(2, 5, 5))
    lines = []
    model.summary(print_fn=lines.append)
    assert "Non-trainable params: 80" in lines[0]  # moving mean and variance: 2*4 + 2*36


def _small_net(rate):
    return gpuconv.Sequential([
        Conv2D(3, (3, 2), padding="same", activation="relu"), BatchNormalization(), MaxPool2D(2, 1),
        Conv2D(2, 2, strides=(1, 2)), ReLU(), AveragePooling2D(2, padding="same"), Flatten(),
        Dropout(rate), Dense(4), BatchNormalization(), Dense(3, activation="softmax")], input_shape=(2, 6, 7))


def test_gradients_through_every_layer_type(rng):
    gpuconv.set_seed(3)
    model = _small_net(rate=0.3)
    model.build()
    for w in model.parameters():
        w.data = w.data.astype(np.float64) + rng.normal(0, 0.05, w.shape)  # float64, no exact ties/zeros
    x = rng.standard_normal((4, 2, 6, 7))
    labels = np.array([0, 2, 1, 2])

    def loss_value():
        gpuconv.set_seed(11)  # the same dropout mask on every evaluation
        return model.loss(labels, model(x, training=True))

    model.compile("sgd", "sparse_categorical_crossentropy")
    loss_value().backward()
    for layer in model.layers:
        for name, w in layer.weights.items():
            state = {k: v.copy() for k, v in layer.state.items()}
            expected = ref.numerical_grad(lambda: float(loss_value().data), w.data)
            layer.state.update(state)
            np.testing.assert_allclose(w.grad, expected, rtol=1e-4, atol=1e-7, err_msg=f"{layer.name}/{name}")


def test_dropout_and_batchnorm_modes(rng):
    x = rng.standard_normal((64, 3)) + 5.0
    drop = Dropout(0.5)
    np.testing.assert_array_equal(drop(x, training=False).numpy(), x)
    y = drop(x, training=True).numpy()
    assert 0.3 < (y == 0).mean() < 0.7 and np.allclose(y[y != 0], 2 * x[y != 0])
    bn = BatchNormalization(momentum=0.5)
    out = bn(x.astype(np.float32), training=True).numpy()
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(bn.state["moving_mean"], 0.5 * x.mean(axis=0), rtol=1e-5)
    inference = bn(x.astype(np.float32), training=False).numpy()
    expected = (x - bn.state["moving_mean"]) / np.sqrt(bn.state["moving_variance"] + bn.epsilon)
    np.testing.assert_allclose(inference, expected, rtol=1e-4, atol=1e-4)


def test_channels_last_matches_channels_first(rng):
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    first = Conv2D(4, 3, strides=2, padding="same", activation="relu")
    last = Conv2D(4, 3, strides=2, padding="same", activation="relu", data_format="channels_last")
    y_first = first(x).numpy()
    last.build((3, 9, 8))
    last.weights = first.weights  # same kernel (KCRS in both formats) and bias
    y_last = last(x.transpose(0, 2, 3, 1)).numpy()
    np.testing.assert_allclose(y_last.transpose(0, 3, 1, 2), y_first, rtol=1e-6)
    pool = MaxPool2D(2, data_format="channels_last")
    np.testing.assert_array_equal(pool(y_last).numpy().transpose(0, 3, 1, 2), MaxPool2D(2)(y_first).numpy())
    model = gpuconv.Sequential([Conv2D(4, 3, padding="same", data_format="channels_last"),
                                MaxPool2D(data_format="channels_last"), Flatten()], input_shape=(9, 8, 3))
    assert model.build() == [(9, 8, 4), (4, 4, 4), (64,)]


def test_losses_are_stable_and_correct(rng):
    logits = np.array([[1000.0, -1000.0, 0.0], [-50.0, 50.0, 49.0]])
    labels = np.array([1, 2])
    loss = losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    expected = np.mean([2000.0, np.log1p(np.exp(1.0))])  # -log softmax, by hand
    assert np.isfinite(loss.data) and loss.data == pytest.approx(expected, rel=1e-12)
    t = gpuconv.Tensor(logits, requires_grad=True)
    losses.sparse_categorical_crossentropy(labels, t, from_logits=True).backward()
    assert np.all(np.isfinite(t.grad))
    probs = gpuconv.functional.softmax(logits).numpy()
    clipped = losses.sparse_categorical_crossentropy(labels, probs)  # probabilities 0 and 1: clipped, finite
    assert np.isfinite(clipped.data)
    small = rng.standard_normal((5, 4))
    onehot = np.eye(4)[[0, 3, 1, 1, 2]]
    direct = -np.mean(np.sum(onehot * (small - np.log(np.exp(small).sum(1, keepdims=True))), axis=1))
    assert losses.categorical_crossentropy(onehot, small, from_logits=True).data == pytest.approx(direct)
    ref.check_gradients(lambda z: losses.categorical_crossentropy(onehot, z, from_logits=True).reshape(1), [small])
    soft = gpuconv.functional.softmax(small).numpy()
    ref.check_gradients(lambda p: losses.sparse_categorical_crossentropy(np.array([0, 3, 1, 1, 2]), p).reshape(1),
                        [soft])
    with pytest.raises(ValueError, match=r"sparse targets must lie in \[0, 4\)"):
        losses.sparse_categorical_crossentropy(np.array([0, 4, 1, 1, 2]), small)


def test_fused_softmax_training_equals_probability_loss(rng):
    gpuconv.set_seed(1)
    model = gpuconv.Sequential([Flatten(), Dense(3, activation="softmax")], input_shape=(2, 2))
    model.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"])
    assert model._fused_softmax
    x, y = rng.standard_normal((6, 2, 2)), np.array([0, 1, 2, 0, 1, 2])
    fused = model.evaluate(x, y)[0]
    probs = model.predict(x)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    unfused = losses.sparse_categorical_crossentropy(y, probs).data
    assert fused == pytest.approx(float(unfused), rel=1e-5)


def test_optimizers_against_hand_computation():
    g1, g2 = np.array([0.5, -1.0]), np.array([0.25, 2.0])

    def run(opt):
        p = gpuconv.Tensor(np.array([1.0, 2.0]), requires_grad=True)
        for g in (g1, g2):
            p.grad = g.copy()
            opt.step([p])
        return p.data

    np.testing.assert_allclose(run(optimizers.SGD(0.1)), [1 - 0.1 * 0.75, 2 - 0.1 * 1.0])
    v1 = -0.1 * g1
    v2 = 0.9 * v1 - 0.1 * g2
    np.testing.assert_allclose(run(optimizers.SGD(0.1, momentum=0.9)), np.array([1.0, 2.0]) + v1 + v2)
    nesterov = np.array([1.0, 2.0]) + (0.9 * v1 - 0.1 * g1) + (0.9 * v2 - 0.1 * g2)
    np.testing.assert_allclose(run(optimizers.SGD(0.1, momentum=0.9, nesterov=True)), nesterov)
    p, m, v = np.array([1.0, 2.0]), 0.0, 0.0
    for t, g in enumerate((g1, g2), start=1):
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        p = p - 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-7)  # Keras's form
    np.testing.assert_allclose(run(optimizers.Adam(0.01)), p, rtol=1e-6)
    assert isinstance(optimizers.get("adam"), optimizers.Adam) and isinstance(optimizers.get("SGD"), optimizers.SGD)
    with pytest.raises(ValueError, match="optimizer must be"):
        optimizers.get("rmsprop")


def test_same_seed_same_weights(rng):
    x, y = rng.standard_normal((32, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 32)

    def train(seed):
        gpuconv.set_seed(seed)
        model = gpuconv.Sequential([Conv2D(4, 3, activation="relu"), MaxPool2D(), Flatten(), Dropout(0.2),
                                    Dense(3, activation="softmax")], input_shape=(1, 8, 8))
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=2, batch_size=8, verbose=0)
        return model.weight_arrays()

    first, second, other = train(7), train(7), train(8)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert any(not np.array_equal(first[k], other[k]) for k in first)


def test_save_load_round_trip_and_mismatches(tmp_path, rng):
    model = seeds_model()
    model.build()
    path = tmp_path / "w.npz"
    model.save_weights(path)
    other = seeds_model()
    other.load_weights(path)
    for key, array in model.weight_arrays().items():
        np.testing.assert_array_equal(other.weight_arrays()[key], array)
    smaller = gpuconv.Sequential([Conv2D(25, 3), MaxPool2D(), Conv2D(40, 3), MaxPool2D(), Flatten(), Dense(100),
                                  Dense(10)], input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"conv2d_1/kernel: file \(50, 25, 3, 3\), model \(40, 25, 3, 3\)"):
        smaller.load_weights(path)
    fewer = gpuconv.Sequential([Conv2D(25, 3)], input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"unexpected \['conv2d_1/bias'"):
        fewer.load_weights(path)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt.npz: not a readable weights file"):
        other.load_weights(corrupt)


def test_interrupted_save_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    model = seeds_model()
    path = tmp_path / "w.npz"
    model.save_weights(path)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        model.save_weights(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.npz"]


def test_fit_callbacks_and_initial_epoch(rng):
    x, y = rng.standard_normal((16, 4)).astype(np.float32), rng.integers(0, 2, 16)
    model = gpuconv.Sequential([Dense(2, activation="softmax")], input_shape=(4,))
    model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy", ["accuracy"])
    seen = []

    class Spy(gpuconv.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, self.model.optimizer.learning_rate, sorted(logs)))

    halve = gpuconv.callbacks.LearningRateScheduler(lambda epoch, rate: 0.1 * 0.5 ** epoch)
    history = model.fit(x, y, epochs=3, initial_epoch=1, batch_size=4, verbose=0, callbacks=[halve, Spy()])
    assert history.epoch == [1, 2] and len(history.history["loss"]) == 2
    assert seen == [(1, 0.05, ["accuracy", "loss"]), (2, 0.025, ["accuracy", "loss"])]
    assert len(history.batches) == 8 and history.batches[-1][0] == pytest.approx(2.75)
    with pytest.raises(ValueError, match="x has 16 samples but y has 3"):
        model.fit(x, y[:3])
    with pytest.raises(RuntimeError, match="call compile"):
        gpuconv.Sequential([Dense(2)], input_shape=(4,)).fit(x, y)


def test_fit_progress_bar_shows_loss_and_accuracy(rng, capsys):
    x, y = rng.standard_normal((64, 4)).astype(np.float32), rng.integers(0, 2, 64)
    model = gpuconv.Sequential([Dense(2, activation="softmax")], input_shape=(4,))
    model.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, epochs=1, batch_size=8, verbose=1)
    captured = capsys.readouterr()
    assert "loss=" in captured.err and "accuracy=" in captured.err  # tqdm's postfix
    assert "epoch 1/1: loss" in captured.out
    model.fit(x, y, epochs=1, batch_size=8, verbose=2)
    captured = capsys.readouterr()
    assert captured.err == "" and "epoch 1/1: loss" in captured.out
