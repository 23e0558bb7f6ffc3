"""``Sequential``: a Keras-like model over gpuconv layers.

    model = gpuconv.Sequential([Conv2D(32, 3, padding="same", activation="relu"), MaxPool2D(), Flatten(),
                                Dense(10, activation="softmax")], input_shape=(1, 28, 28))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=3, batch_size=128, validation_data=(x_val, y_val))
    loss, accuracy = model.evaluate(x_test, y_test)

When the last layer ends in softmax and the loss takes probabilities, training runs the fused,
log-sum-exp softmax cross-entropy on the logits instead (same value, no NaN at extreme logits);
``predict`` still returns probabilities.
"""
import re
import time
import zipfile

import numpy as np

from gpuconv import backend, rng
from gpuconv.fileio import atomic_write
from gpuconv.nn import losses, optimizers
from gpuconv.nn.layers import Layer, _Spatial
from gpuconv.tensor import Tensor, no_grad

METRICS = ("accuracy", "acc")


class History:
    """What ``fit`` returns: ``history`` maps 'loss', 'accuracy', 'val_loss', ... to per-epoch lists.

    ``batches`` holds (fractional epoch, loss, *metrics) per training batch, for smooth curves.
    """

    def __init__(self):
        self.history, self.epoch, self.epoch_seconds, self.batches = {}, [], [], []

    def record(self, epoch, seconds, values):
        self.epoch.append(epoch)
        self.epoch_seconds.append(seconds)
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)


class Sequential:
    def __init__(self, layers=(), input_shape=None, name="sequential"):
        self.name = name
        self.layers = []
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.training = False
        self.optimizer = self.loss = None
        self.metrics = []
        for layer in layers:
            self.add(layer)

    def add(self, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"layer must be a gpuconv.layers.Layer, got {type(layer).__name__}")
        base = re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", type(layer).__name__).lower()
        taken = {l.name for l in self.layers}
        layer.name = next(n for n in (base if i == 0 else f"{base}_{i}" for i in range(len(taken) + 1))
                          if n not in taken)
        self.layers.append(layer)

    # ------------------------------------------------------------------ structure
    def build(self, input_shape=None):
        """Create every layer's weights from the input shape (batch axis excluded); returns output shapes."""
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError("the model needs input_shape (without the batch axis), e.g. Sequential(..., "
                             "input_shape=(1, 28, 28)), or a first call on data")
        self.input_shape = shape
        shapes = []
        for layer in self.layers:
            try:  # the layer's own check, e.g. a kernel larger than its input, named with the layer
                out = tuple(layer.output_shape(shape))
                if not layer.built:
                    native = shape
                    if isinstance(layer, _Spatial) and layer.data_format == "channels_last":
                        native = (shape[2], shape[0], shape[1])
                    layer.build(native)
            except ValueError as error:
                raise ValueError(f"layer {layer.name} ({type(layer).__name__}) cannot take input of shape "
                                 f"{(None,) + shape}: {error}") from None
            shape = out
            shapes.append(shape)
        return shapes

    def summary(self, print_fn=print):
        """Each layer's output shape and parameter count, then the totals (Keras's layout)."""
        shapes = self.build()
        rows = [(f"{layer.name} ({type(layer).__name__})", str((None,) + shape), sum(layer.count_params()))
                for layer, shape in zip(self.layers, shapes)]
        trainable = sum(layer.count_params()[0] for layer in self.layers)
        frozen = sum(layer.count_params()[1] for layer in self.layers)
        width = max(28, *(len(r[0]) + 2 for r in rows))
        line = "=" * (width + 38)
        out = [f'Model: "{self.name}"', line, f"{'Layer (type)':<{width}}{'Output Shape':<26}{'Param #':>12}", line]
        out += [f"{n:<{width}}{s:<26}{p:>12,}" for n, s, p in rows]
        out += [line, f"Total params: {trainable + frozen:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {frozen:,}", line]
        print_fn("\n".join(out))
        return trainable + frozen

    def parameters(self):
        return [w for layer in self.layers for w in layer.weights.values()]

    def train(self, mode=True):
        """Switch training mode (dropout active, batch statistics); ``fit`` does this itself."""
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # ------------------------------------------------------------------ running
    def __call__(self, x, training=None, logits=False):
        """Forward pass; ``logits=True`` skips the last layer's activation."""
        training = self.training if training is None else training
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[1:])
        if not all(layer.built for layer in self.layers):
            self.build()
        for i, layer in enumerate(self.layers):
            x = layer(x, training=training, activate=not (logits and i == len(self.layers) - 1))
        return x

    def compile(self, optimizer="adam", loss="sparse_categorical_crossentropy", metrics=None):
        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss)
        self.metrics = list(metrics or [])
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"metrics may only contain 'accuracy', got {unknown}")
        # train on logits with the fused loss when the model ends in softmax and the loss takes probabilities
        last = self.layers[-1].activation if self.layers else None
        self._fused_softmax = (isinstance(self.loss, losses.SparseCategoricalCrossentropy)
                               and not self.loss.from_logits and last == "softmax")

    def _loss_and_outputs(self, x, y, training):
        if self._fused_softmax:
            out = self(x, training=training, logits=True)
            return self.loss(y, out, from_logits=True), out
        out = self(x, training=training)
        return self.loss(y, out), out

    def _metric_values(self, out, y):
        if not self.metrics:
            return []
        predicted = out.data.argmax(axis=-1)
        labels = y.argmax(axis=-1) if y.ndim == 2 else y
        return [float((predicted == labels).mean())]

    def train_on_batch(self, x, y):
        """One optimizer step on a batch; returns [loss, *metrics]."""
        self._require_compiled()
        y = self._as_target(y)
        loss, out = self._loss_and_outputs(self._as_input(x), y, training=True)
        loss.backward()
        self.optimizer.step(self.parameters())
        return [float(loss.data)] + self._metric_values(out, y)

    def fit(self, x, y, epochs=1, batch_size=32, validation_data=None, shuffle=True, verbose=1, callbacks=(),
            initial_epoch=0):
        """Train epochs ``initial_epoch .. epochs-1`` over (x, y) in mini-batches; returns a ``History``.

        ``verbose``: 1 shows a progress bar (tqdm) with the running loss and accuracy plus a line per
        epoch, 2 only the line per epoch, 0 nothing. ``callbacks``: ``gpuconv.callbacks.Callback``
        objects (e.g. ``LearningRateScheduler``).
        """
        self._require_compiled()
        for name, value, low in (("batch_size", batch_size, 1), ("epochs", epochs, 0), ("initial_epoch", initial_epoch, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        # every check before the first step, so bad data never leaves the weights half-trained
        x, y = self._checked_data(x, y, "x", "y")
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a pair (x_val, y_val)")
            validation_data = self._checked_data(*validation_data, "validation_data x", "validation_data y")
        history = History()
        names = ["loss"] + ["accuracy" for _ in self.metrics]
        for callback in callbacks:
            callback.model = self
        with backend.session():
            for epoch in range(initial_epoch, epochs):
                for callback in callbacks:
                    callback.on_epoch_begin(epoch)
                self._fit_epoch(x, y, epoch, epochs, batch_size, validation_data, shuffle, verbose, names, history)
                for callback in callbacks:
                    callback.on_epoch_end(epoch, {k: v[-1] for k, v in history.history.items()})
        return history

    def _fit_epoch(self, x, y, epoch, epochs, batch_size, validation_data, shuffle, verbose, names, history):
        n = len(x)
        order = rng.generator().permutation(n) if shuffle else np.arange(n)
        totals, seen, start = np.zeros(len(names)), 0, time.perf_counter()
        bar = _progress(range(0, n, batch_size), f"epoch {epoch + 1}/{epochs}", verbose == 1)
        self.train(True)
        for b0 in bar:
            index = np.sort(order[b0:b0 + batch_size]) if shuffle else order[b0:b0 + batch_size]
            values = self.train_on_batch(x[index], y[index])
            history.batches.append((epoch + b0 / n, *values))
            totals += np.array(values) * len(index)
            seen += len(index)
            if verbose == 1:  # drawn at tqdm's pace, and once more after the last batch
                bar.set_postfix({k: f"{v / seen:.4f}" for k, v in zip(names, totals)}, refresh=seen == n)
        self.train(False)
        seconds = time.perf_counter() - start
        record = dict(zip(names, (totals / max(seen, 1)).tolist()))
        if validation_data is not None:
            scores = self.evaluate(*validation_data, batch_size=max(batch_size, 256), return_dict=True)
            record.update({f"val_{key}": value for key, value in scores.items()})
        history.record(epoch, seconds, record)
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items())
                  + f" ({seconds:.1f} s, {n / seconds:.0f} images/s)")

    def evaluate(self, x, y, batch_size=256, return_dict=False):
        """The loss over (x, y) in inference mode, as Keras returns it: a float without metrics, else
        ``[loss, *metrics]``; ``return_dict=True`` gives ``{'loss': ..., 'accuracy': ...}``."""
        self._require_compiled()
        x, y = self._checked_data(x, y, "x", "y")
        totals, n = None, len(x)
        with no_grad(), backend.session():
            for b0 in range(0, n, batch_size):
                yb = self._as_target(y[b0:b0 + batch_size])
                loss, out = self._loss_and_outputs(self._as_input(x[b0:b0 + batch_size]), yb, training=False)
                values = np.array([float(loss.data)] + self._metric_values(out, yb)) * len(yb)
                totals = values if totals is None else totals + values
        scores = (totals / n).tolist()
        if return_dict:
            return dict(zip(["loss"] + ["accuracy" for _ in self.metrics], scores))
        return scores[0] if len(scores) == 1 else scores

    def predict(self, x, batch_size=256):
        """Outputs for x in inference mode, as a NumPy array on every backend (probabilities when the model
        ends in softmax)."""
        x = x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)  # nested lists too
        with no_grad(), backend.session():
            parts = [backend.to_host(self(self._as_input(x[b0:b0 + batch_size]), training=False).data)
                     for b0 in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    def _as_input(self, x):
        """A batch on the backend's device in the model's dtype (its weights'; float32 before they exist),
        as Keras casts inputs: float64 images and integer pixels both work."""
        weights = self.parameters()
        return Tensor(backend.to_device(x).astype(weights[0].dtype if weights else np.float32, copy=False))

    @staticmethod
    def _as_target(y):
        return backend.to_device(y)

    def _checked_data(self, x, y, x_name, y_name):
        """(x, y) as arrays after checking all of them once: non-empty, real inputs of the model's sample shape,
        as many targets as samples, and targets the loss can take (class indices in range, or rows of the
        output's width). Raises ValueError/TypeError naming the argument."""
        x, y = (v if hasattr(v, "shape") and hasattr(v, "dtype") else np.asarray(v) for v in (x, y))
        if x.ndim == 0 or len(x) == 0:
            raise ValueError(f"{x_name} is empty (shape {tuple(x.shape)}); there is nothing to train on or evaluate")
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{x_name} has dtype {x.dtype}; the model takes real numbers")
        if self.input_shape is not None and tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"{x_name} has samples of shape {tuple(x.shape[1:])} but the model's input_shape is "
                             f"{tuple(self.input_shape)}")
        if y.ndim == 0 or len(y) != len(x):
            raise ValueError(f"{x_name} has {len(x)} samples but {y_name} has "
                             f"{len(y) if y.ndim else 'no'} (shape {tuple(y.shape)})")
        self.input_shape = tuple(x.shape[1:])
        classes = self.build()[-1][-1] if self.layers else None
        if isinstance(self.loss, losses.SparseCategoricalCrossentropy) and not isinstance(
                self.loss, losses.CategoricalCrossentropy):
            if y.ndim != 1 or y.dtype.kind not in "iu":
                raise ValueError(f"{y_name} must be a 1-D array of integer class indices for "
                                 f"sparse_categorical_crossentropy, got shape {tuple(y.shape)} dtype {y.dtype}")
            low, high = int(y.min()), int(y.max())
            if low < 0 or high >= classes:
                raise ValueError(f"{y_name} must hold class indices in [0, {classes}) (the model has {classes} "
                                 f"outputs), got values in [{low}, {high}]")
        elif isinstance(self.loss, losses.CategoricalCrossentropy) and tuple(y.shape[1:]) != (classes,):
            raise ValueError(f"{y_name} must have rows of {classes} values (one-hot) for categorical_crossentropy, "
                             f"got shape {tuple(y.shape)}")
        return x, y

    def _require_compiled(self):
        if self.optimizer is None:
            raise RuntimeError("call compile(optimizer, loss, metrics) before fit/evaluate/train_on_batch")

    # ------------------------------------------------------------------ weights
    def weight_arrays(self):
        """{'layer/name': array} of every trained weight and saved state array."""
        self.build()
        arrays = {}
        for layer in self.layers:
            arrays.update({f"{layer.name}/{k}": w.data for k, w in layer.weights.items()})
            arrays.update({f"{layer.name}/{k}": s for k, s in layer.state.items()})
        return arrays

    def save_weights(self, path):
        """Write every weight to ``path`` (.npz) atomically: a temporary file, then a rename."""
        arrays = {k: backend.to_host(v) for k, v in self.weight_arrays().items()}
        atomic_write(path, lambda f: np.savez(f, **arrays))

    def load_weights(self, path):
        """Load weights saved by ``save_weights``; every name and shape must match this model.

        All or nothing: names, shapes and dtypes (real floating point only) are checked from the
        file's headers before any array is read, every array is read and converted next, and only
        then are the model's weights replaced. A file that does not match changes nothing.
        """
        own = self.weight_arrays()
        headers = read_npz_headers(path)
        missing, unexpected = sorted(set(own) - set(headers)), sorted(set(headers) - set(own))
        wrong = [f"{k}: file {headers[k][0]}, model {tuple(own[k].shape)}"
                 for k in own if k in headers and headers[k][0] != tuple(own[k].shape)]
        if missing or unexpected or wrong:
            raise ValueError(f"{path} does not match this model: missing {missing}, unexpected {unexpected}, "
                             f"shape mismatches {wrong}")
        not_float = [f"{k}: {dtype}" for k, (_, dtype) in headers.items() if dtype.kind != "f"]
        if not_float:
            raise TypeError(f"{path} holds arrays that are not real floating point, refused as weights: {not_float}")
        try:
            with np.load(path, allow_pickle=False) as archive:
                loaded = {k: backend.to_device(archive[k], dtype=own[k].dtype) for k in own}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: not a readable weights file ({error}); was it written by save_weights?") \
                from None
        self._replace_all(loaded)

    def get_weights(self):
        """Every weight and saved state array as NumPy arrays, in Keras's order: layer by layer, each layer's
        trained weights (kernel, bias; gamma, beta) then its state (moving mean, variance). Layouts are
        gpuconv's: conv kernels KCRS (Keras: HWIO), dense kernels (inputs, units) as in Keras."""
        return [backend.to_host(array).copy() for array in self.weight_arrays().values()]

    def set_weights(self, weights):
        """Replace every weight from a list in ``get_weights``'s order; all checked before any is replaced."""
        own = self.weight_arrays()
        weights = list(weights)
        if len(weights) != len(own):
            raise ValueError(f"weights must be a list of {len(own)} arrays ({', '.join(own)}), got {len(weights)}")
        loaded = {}
        for (key, array), value in zip(own.items(), weights):
            value = np.asarray(backend.to_host(value.data if isinstance(value, Tensor) else value))
            if value.shape != tuple(array.shape) or value.dtype.kind != "f":
                raise ValueError(f"weights for {key} must be a real floating-point array of shape "
                                 f"{tuple(array.shape)}, got {value.dtype} {value.shape}")
            loaded[key] = backend.to_device(value, dtype=array.dtype)
        self._replace_all(loaded)

    def _replace_all(self, arrays):
        """Write ``arrays`` ({'layer/name': array}, complete and checked) into the weights (new versions)."""
        for layer in self.layers:
            for key, tensor in layer.weights.items():
                tensor[...] = arrays[f"{layer.name}/{key}"]
            for key, array in layer.state.items():
                array[...] = arrays[f"{layer.name}/{key}"]


def read_npz_headers(path):
    """{name: (shape, dtype)} of every array in an ``.npz`` file, from the ``.npy`` headers alone (no data read)."""
    try:
        with zipfile.ZipFile(path) as archive:
            headers = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"member {info.filename!r} is not a .npy array")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                    if version not in read:
                        raise ValueError(f"member {info.filename!r} has .npy format {version}")
                    shape, _, dtype = read[version](member)
                headers[info.filename[:-4]] = (tuple(shape), np.dtype(dtype))
            return headers
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(f"{path}: not a readable weights file ({error}); was it written by save_weights?") from None


def _progress(iterable, description, show):
    if not show:
        return _Quiet(iterable)
    from tqdm.auto import tqdm  # a widget in notebooks, text on terminals
    return tqdm(iterable, desc=description, unit="batch", leave=True, dynamic_ncols=True, mininterval=0.5)


class _Quiet:
    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)
