"""Keras's training controls: callbacks and their hooks, stop_training, validation_split, class_weight,
sample_weight, shuffle, History."""
import csv
import math

import numpy as np
import pytest

import gpuconv
from gpuconv import callbacks as cb
from gpuconv.layers import Conv2D, Dense, Flatten


def small_model(optimizer="sgd", metrics=("accuracy",), seed=0):
    gpuconv.set_seed(seed)
    model = gpuconv.Sequential([Conv2D(3, 3, activation="relu", input_shape=(1, 6, 6)), Flatten(),
                                Dense(3, activation="softmax")])
    model.compile(optimizer, "sparse_categorical_crossentropy", list(metrics))
    return model


@pytest.fixture
def data(rng):
    x = rng.standard_normal((40, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    return x, y


class Recorder(cb.Callback):
    def __init__(self):
        self.calls = []
        for hook in cb.HOOKS:
            setattr(self, hook, lambda *args, hook=hook: self.calls.append((hook, args)))


def test_hooks_are_called_in_keras_order_with_logs(data):
    x, y = data
    recorder = Recorder()
    history = small_model().fit(x, y, batch_size=16, epochs=2, validation_data=(x[:8], y[:8]), callbacks=[recorder],
                                verbose=0)
    names = [name for name, _ in recorder.calls]
    epoch = ["on_epoch_begin"] + ["on_train_batch_begin", "on_train_batch_end"] * 3 + [
        "on_test_begin", "on_test_batch_begin", "on_test_batch_end", "on_test_end", "on_epoch_end"]
    assert names == ["on_train_begin"] + epoch * 2 + ["on_train_end"]
    batch_logs = [args[1] for name, args in recorder.calls if name == "on_train_batch_end"]
    assert set(batch_logs[0]) == {"loss", "accuracy"}
    epoch_logs = [args[1] for name, args in recorder.calls if name == "on_epoch_end"]
    assert epoch_logs[-1] == {k: v[-1] for k, v in history.history.items()}
    assert list(history.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert history.params == {"verbose": 0, "epochs": 2, "steps": 3} and history.epoch == [0, 1]
    assert recorder.params == history.params and recorder.model is not None


def test_stop_training_from_a_batch_hook_ends_after_that_batch(data):
    x, y = data
    model = small_model()

    class StopAtThird(cb.Callback):
        batches = 0

        def on_train_batch_end(self, batch, logs=None):
            StopAtThird.batches += 1
            if StopAtThird.batches == 3:
                self.model.stop_training = True

    history = model.fit(x, y, batch_size=4, epochs=5, callbacks=[StopAtThird()], verbose=0)
    assert StopAtThird.batches == 3 and history.epoch == [0]
    assert model.optimizer.iterations == 3


def test_early_stopping_patience_and_restore_best_weights(data):
    x, y = data
    model = small_model()
    seen = []

    class FakeMetric(cb.Callback):  # a monitored value that improves twice, then worsens
        def on_epoch_end(self, epoch, logs=None):
            logs["val_score"] = [5.0, 3.0, 4.0, 4.5, 6.0, 1.0][epoch]
            seen.append(self.model.get_weights())

    stopper = cb.EarlyStopping(monitor="val_score", patience=2, restore_best_weights=True, mode="min")
    history = model.fit(x, y, epochs=6, callbacks=[FakeMetric(), stopper], verbose=0)
    assert history.epoch == [0, 1, 2, 3] and stopper.stopped_epoch == 3 and stopper.best == 3.0
    for restored, best in zip(model.get_weights(), seen[1]):
        np.testing.assert_array_equal(restored, best)
    # min_delta: improvements smaller than it do not count
    model = small_model()

    class Creeping(cb.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_score"] = 1.0 - 0.001 * epoch

    history = model.fit(x, y, epochs=6, callbacks=[Creeping(), cb.EarlyStopping("val_score", min_delta=0.01,
                                                                                patience=1)], verbose=0)
    assert history.epoch == [0, 1]
    with pytest.warns(RuntimeWarning, match="'val_loss' is not in the logs"):
        small_model().fit(x, y, epochs=1, callbacks=[cb.EarlyStopping()], verbose=0)


def test_model_checkpoint_formats_and_saves_the_best(data, tmp_path):
    x, y = data
    model = small_model()
    pattern = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.4f}.gpuconv")
    history = model.fit(x, y, epochs=3, validation_data=(x, y), verbose=0,
                        callbacks=[cb.ModelCheckpoint(pattern, save_best_only=True)])
    losses = history.history["val_loss"]
    expected = {f"ckpt-{e + 1:02d}-{v:.4f}.gpuconv" for e, v in enumerate(losses)
                if v < min(losses[:e], default=math.inf)}
    assert {p.name for p in tmp_path.iterdir()} == expected
    last = max(expected)
    restored = gpuconv.load_model(tmp_path / last)
    assert restored.evaluate(x, y, return_dict=True)["loss"] == pytest.approx(min(losses), rel=1e-6)
    weights_only = tmp_path / "w" / "epoch{epoch}.npz"
    weights_only.parent.mkdir()
    model.fit(x, y, epochs=2, callbacks=[cb.ModelCheckpoint(str(weights_only), save_weights_only=True)], verbose=0)
    assert sorted(p.name for p in weights_only.parent.iterdir()) == ["epoch1.npz", "epoch2.npz"]
    with pytest.raises(ValueError, match="ending in '.npz'"):
        model.fit(x, y, epochs=1, callbacks=[cb.ModelCheckpoint(str(tmp_path / "w.weights.h5"),
                                                                save_weights_only=True)], verbose=0)


def test_csv_logger_writes_and_appends(data, tmp_path):
    x, y = data
    path = tmp_path / "log.csv"
    model = small_model()
    first = model.fit(x, y, epochs=2, validation_split=0.25, callbacks=[cb.CSVLogger(path)], verbose=0)
    second = model.fit(x, y, epochs=3, initial_epoch=2, validation_split=0.25,
                       callbacks=[cb.CSVLogger(path, append=True)], verbose=0)
    with open(path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    assert float(rows[1][2]) == pytest.approx(first.history["loss"][0])
    assert float(rows[3][4]) == pytest.approx(second.history["val_loss"][0])


def test_reduce_lr_on_plateau_and_learning_rate_floor(data):
    x, y = data
    model = small_model()
    rates = []

    class Flat(cb.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = 1.0  # never improves after the first epoch
            rates.append(self.model.optimizer.learning_rate)

    model.fit(x, y, epochs=6, verbose=0, callbacks=[
        Flat(), cb.ReduceLROnPlateau(factor=0.5, patience=2, min_lr=0.003)])
    # rates seen at each epoch's end (before the reducer, which runs after Flat): 0.01 until epoch 2 ends
    assert rates == pytest.approx([0.01, 0.01, 0.01, 0.005, 0.005, 0.003])
    with pytest.raises(ValueError, match="factor must be in"):
        cb.ReduceLROnPlateau(factor=1.5)


def test_terminate_on_nan_stops_at_the_first_bad_batch(data):
    x, y = data
    x = x.copy()
    x[9] = np.nan  # the third batch of 4 holds a NaN image
    model = small_model()
    history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, callbacks=[cb.TerminateOnNaN()], verbose=0)
    assert model.optimizer.iterations == 3 and history.epoch == [0]
    assert not np.isfinite(history.batches[-1][1])


def test_validation_split_takes_the_last_samples_before_shuffling(data):
    x, y = data
    model = small_model()
    history = model.fit(x, y, epochs=1, validation_split=0.25, verbose=0)
    assert history.params["steps"] == 1  # 30 training samples, batch 32
    assert history.history["val_loss"][0] == pytest.approx(model.evaluate(x[30:], y[30:])[0], rel=1e-6)
    with pytest.raises(ValueError, match="validation_split"):
        model.fit(x, y, validation_split=1.0, verbose=0)
    with pytest.raises(ValueError, match="leaves 0 for training"):
        model.fit(x[:1], y[:1], validation_split=0.5, verbose=0)


def test_sample_and_class_weights_weigh_the_loss_as_keras_does(data):
    x, y = data
    model = small_model(metrics=())
    probabilities = model.predict(x).astype(np.float64)
    per_sample = -np.log(probabilities[np.arange(len(y)), y])
    weights = np.linspace(0.0, 2.0, len(y))
    # Keras: sum(weight * loss) / number of samples
    assert model.evaluate(x, y, sample_weight=weights) == pytest.approx((weights * per_sample).mean(), rel=1e-5)
    # class_weight is a sample weight looked up by class, and multiplies a given sample_weight
    table = {0: 0.5, 1: 2.0, 2: 1.0}
    a, b = small_model(), small_model()
    a.fit(x, y, batch_size=8, epochs=1, class_weight=table, sample_weight=weights, shuffle=False, verbose=0)
    b.fit(x, y, batch_size=8, epochs=1, sample_weight=weights * np.array([table[c] for c in y]), shuffle=False,
          verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    # zero weights: plain SGD leaves the weights unchanged
    c = small_model()
    start = c.get_weights()
    c.train_on_batch(x[:8], y[:8], sample_weight=np.zeros(8))
    for before, after in zip(start, c.get_weights()):
        np.testing.assert_array_equal(before, after)
    with pytest.raises(ValueError, match="sample_weight must hold 40"):
        small_model().fit(x, y, sample_weight=np.ones(39), verbose=0)
    with pytest.raises(ValueError, match=r"class_weight keys must be class indices in \[0, 3\)"):
        small_model().fit(x, y, class_weight={3: 1.0}, verbose=0)


def test_shuffle_false_keeps_the_order_and_true_reorders(data):
    x, y = data
    orders = {}
    for shuffle in (False, True):
        model = small_model()
        seen = []
        original = model._train_step
        model._train_step = lambda xb, yb, *rest, seen=seen, original=original: (seen.append(yb.copy()),
                                                                               original(xb, yb, *rest))[1]
        model.fit(x, y, batch_size=10, epochs=1, shuffle=shuffle, verbose=0)
        orders[shuffle] = np.concatenate(seen)
    np.testing.assert_array_equal(orders[False], y)
    assert sorted(orders[True]) == sorted(y) and not np.array_equal(orders[True], y)
    with pytest.raises(ValueError, match="shuffle must be True or False"):
        small_model().fit(x, y, shuffle="batch", verbose=0)
