"""Callbacks for ``Sequential.fit``/``evaluate``/``predict``, with Keras's names, arguments and semantics.

``fit`` calls, in order: ``on_train_begin``; per epoch ``on_epoch_begin``, per batch
``on_train_batch_begin``/``on_train_batch_end`` (logs: the running means of the epoch so far),
the validation's ``on_test_begin``/``on_test_end``, then ``on_epoch_end`` (logs: ``loss``, metrics,
``val_loss``, ``val_<metric>``); ``on_train_end``. Setting ``model.stop_training = True`` ends
training after the current batch (the epoch is still validated and closed).

In a data-parallel run (``gpuconv.distributed``) every rank runs the callbacks on the same logs, so they
decide alike; only rank 0 prints and writes files (ModelCheckpoint, CSVLogger).
"""
import csv
import logging
import math
import os
import warnings

import numpy as np

logger = logging.getLogger("gpuconv")


def _is_root():
    from gpuconv import distributed
    return distributed.world().is_root


def _say(message):
    if _is_root():
        print(message)


class Callback:
    """Override what you need; ``fit`` sets ``model`` and ``params`` before training starts."""
    model = None
    params: dict = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_train_batch_begin(self, batch, logs=None): pass
    def on_train_batch_end(self, batch, logs=None): pass
    def on_test_begin(self, logs=None): pass
    def on_test_end(self, logs=None): pass
    def on_test_batch_begin(self, batch, logs=None): pass
    def on_test_batch_end(self, batch, logs=None): pass
    def on_predict_begin(self, logs=None): pass
    def on_predict_end(self, logs=None): pass


HOOKS = [name for name in vars(Callback) if name.startswith("on_")]


class CallbackList:
    """Calls a hook on every callback in order: ``callbacks.on_epoch_end(epoch, logs)``."""

    def __init__(self, callbacks, model, params=None):
        self.callbacks = list(callbacks or ())
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise TypeError(f"callbacks must be gpuconv.callbacks.Callback objects, got {type(callback).__name__}")
            callback.set_model(model)
            if params is not None:
                callback.set_params(params)

    def __getattr__(self, hook):
        if hook not in HOOKS:
            raise AttributeError(hook)

        def call(*arguments):
            for callback in self.callbacks:
                getattr(callback, hook)(*arguments)
        return call


class History(Callback):
    """What ``fit`` returns (also ``model.history``): ``history`` maps 'loss', 'accuracy', 'val_loss',
    'val_accuracy' to per-epoch lists; ``epoch`` lists the epochs; ``params`` holds verbose, epochs, steps.

    Beyond Keras: ``epoch_seconds`` (training time per epoch) and ``batches``, one
    (fractional epoch, loss, *metrics) per training batch, for smooth curves.
    """

    def __init__(self):
        self.history, self.epoch, self.epoch_seconds, self.batches = {}, [], [], []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


class LearningRateScheduler(Callback):
    """Sets the optimizer's learning rate to ``schedule(epoch, current_rate)`` before each epoch."""

    def __init__(self, schedule, verbose=0):
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        rate = self.schedule(epoch, optimizer.learning_rate)
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating, np.integer)) or not rate > 0:
            raise ValueError(f"the schedule must return a positive learning rate, got {rate!r} for epoch {epoch}")
        optimizer.learning_rate = float(rate)
        if self.verbose:
            _say(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(rate)}.")


class _Monitor(Callback):
    """Shared by the callbacks that watch one logged quantity: the comparison of ``mode`` with ``min_delta``."""

    def __init__(self, monitor, mode, min_delta):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":  # Keras: accuracies grow, everything else shrinks
            mode = "max" if "acc" in monitor and not monitor.endswith("loss") else "min"
        self.monitor, self.mode, self.min_delta = monitor, mode, abs(float(min_delta))

    def improved(self, current, best):
        if self.mode == "min":
            return current < best - self.min_delta
        return current > best + self.min_delta

    def worst(self):
        return math.inf if self.mode == "min" else -math.inf

    def value(self, logs):
        """The monitored value, or None (with a warning, as Keras) when the logs lack it."""
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"{type(self).__name__}: the monitored quantity {self.monitor!r} is not in the logs "
                          f"(available: {', '.join(sorted(logs or {}))}); pass validation data for 'val_' keys",
                          RuntimeWarning, stacklevel=3)
        return value


class EarlyStopping(_Monitor):
    """Stops training when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs;
    ``restore_best_weights`` puts back the weights of the best epoch when it stops."""

    def __init__(self, monitor="val_loss", min_delta=0, patience=0, verbose=0, mode="auto", baseline=None,
                 restore_best_weights=False, start_from_epoch=0):
        super().__init__(monitor, mode, min_delta)
        self.patience, self.verbose, self.baseline = int(patience), verbose, baseline
        self.restore_best_weights, self.start_from_epoch = restore_best_weights, int(start_from_epoch)

    def on_train_begin(self, logs=None):
        self.wait, self.stopped_epoch, self.best_weights, self.best_epoch = 0, 0, None, 0
        self.best = self.worst() if self.baseline is None else self.baseline

    def on_epoch_end(self, epoch, logs=None):
        current = self.value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()  # Keras: the first epoch's weights are the fallback
        self.wait += 1
        if self.improved(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self.improved(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.restore_best_weights and self.best_weights is not None:
                self.model.set_weights(self.best_weights)
                if self.verbose:
                    _say(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            _say(f"Epoch {self.stopped_epoch + 1}: early stopping")


class ModelCheckpoint(_Monitor):
    """Saves the model (``model.save``) or its weights (``save_weights``, a .npz path) after each epoch.

    ``filepath`` may hold ``{epoch}`` (1-based) and any logged value, e.g. ``'ckpt-{epoch:02d}-{val_loss:.3f}.npz'``.
    ``save_best_only`` saves only when ``monitor`` improves. Every write is atomic.
    """

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__(monitor, mode, 0)
        if save_freq != "epoch":
            raise ValueError(f"save_freq must be 'epoch' (saving every N batches is not supported), got {save_freq!r}")
        self.filepath, self.verbose = os.fspath(filepath), verbose
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.best = self.worst() if initial_value_threshold is None else initial_value_threshold

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"ModelCheckpoint: cannot format filepath {self.filepath!r} with epoch and "
                             f"{sorted(logs)} ({error!r})") from None
        if self.save_best_only:
            current = self.value(logs)
            if current is None or not self.improved(current, self.best):
                return
            if self.verbose:
                _say(f"Epoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {current:.5f}, saving {path}")
            self.best = current
        if not _is_root():
            return
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)


class CSVLogger(Callback):
    """Writes one row per epoch (``epoch`` then the logged values, sorted) to ``filename``;
    ``append=True`` continues an existing file (no second header)."""

    def __init__(self, filename, separator=",", append=False):
        self.filename, self.separator, self.append = os.fspath(filename), separator, append
        self.file = self.writer = self.keys = None

    def on_train_begin(self, logs=None):
        if not _is_root():
            return
        exists = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        self.header_written = exists
        if exists:
            with open(self.filename, newline="") as f:
                self.keys = next(csv.reader(f, delimiter=self.separator), ["epoch"])[1:] or None
        self.file = open(self.filename, "a" if self.append else "w", newline="")

    def on_epoch_end(self, epoch, logs=None):
        if self.file is None:  # not rank 0
            return
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
        if not self.header_written:
            csv.writer(self.file, delimiter=self.separator).writerow(["epoch"] + self.keys)
            self.header_written = True
        row = [epoch] + [logs.get(key, "NA") for key in self.keys]
        csv.writer(self.file, delimiter=self.separator).writerow(row)
        self.file.flush()

    def on_train_end(self, logs=None):
        if self.file is not None:
            self.file.close()
            self.file = None


class ReduceLROnPlateau(_Monitor):
    """Multiplies the learning rate by ``factor`` (never below ``min_lr``) when ``monitor`` has not improved
    by more than ``min_delta`` for ``patience`` epochs, then waits ``cooldown`` epochs."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0):
        super().__init__(monitor, mode, min_delta)
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1) (the rate is multiplied by it), got {factor!r}")
        self.factor, self.patience, self.verbose = float(factor), int(patience), verbose
        self.cooldown, self.min_lr = int(cooldown), float(min_lr)

    def on_train_begin(self, logs=None):
        self.best, self.wait, self.cooldown_counter = self.worst(), 0, 0

    def on_epoch_end(self, epoch, logs=None):
        current = self.value(logs)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self.improved(current, self.best):
            self.best, self.wait = current, 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                optimizer = self.model.optimizer
                if optimizer.learning_rate > self.min_lr:
                    optimizer.learning_rate = max(optimizer.learning_rate * self.factor, self.min_lr)
                    if self.verbose:
                        _say(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to "
                              f"{optimizer.learning_rate}.")
                self.cooldown_counter, self.wait = self.cooldown, 0


class TerminateOnNaN(Callback):
    """Stops training after the first batch whose loss is NaN or infinite."""

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            logger.warning("batch %d: invalid loss %r, terminating training", batch, loss)
            self.model.stop_training = True


class LambdaCallback(Callback):
    """A callback from functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``."""

    def __init__(self, **hooks):
        unknown = sorted(set(hooks) - set(HOOKS))
        if unknown:
            raise ValueError(f"LambdaCallback takes hooks named {', '.join(HOOKS)}; unknown {unknown}")
        for name, function in hooks.items():
            setattr(self, name, function)
