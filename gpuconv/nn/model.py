"""``Sequential``: a Keras-like model over gpuconv layers.

    model = gpuconv.Sequential([Conv2D(32, 3, padding="same", activation="relu", input_shape=(1, 28, 28)),
                                MaxPool2D(), Flatten(), Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=128, epochs=3, validation_split=0.1)
    loss, accuracy = model.evaluate(x_test, y_test)
    model.save("mnist.gpuconv")                 # gpuconv.load_model("mnist.gpuconv") resumes exactly

When the last layer ends in softmax and the loss takes probabilities, training runs the fused,
log-sum-exp softmax cross-entropy on the logits instead (same value, no NaN at extreme logits);
``predict`` still returns probabilities.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
import warnings
import zipfile
from typing import Any, Callable, Iterable, Sequence, cast

import numpy as np

from gpuconv import backend, distributed, rng
from gpuconv._types import ArrayLike, Shape
from gpuconv.fileio import atomic_write
from gpuconv.nn import losses, optimizers
from gpuconv.nn.callbacks import Callback, CallbackList, History
from gpuconv.nn.layers import LAYERS, InputLayer, Layer, _Spatial
from gpuconv.tensor import Tensor, no_grad

METRICS = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy")


def _positive_int(value, name, low=1):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _verbosity(verbose, auto):
    if verbose == "auto":
        return auto
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}")
    return int(verbose)


class Sequential:
    """A stack of layers, each feeding the next. ``input_shape`` (batch axis excluded) may also come from the
    first layer's ``input_shape=``, a leading ``Input(shape=...)``, or the first data the model sees."""

    def __init__(self, layers: Iterable[Layer] = (), input_shape: Shape | None = None, name: str = "sequential") -> None:
        self.name = name
        self.layers: list[Layer] = []
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.training = False
        self.stop_training = False
        self.optimizer: optimizers.Optimizer | None = None
        self.loss: Any = None
        self.metrics: list[str] = []
        self.history: History | None = None
        self.shuffle_seed: int | None = None  # drawn at the first shuffled fit; saved with the model (exact resumption)
        for layer in layers:
            self.add(layer)

    def add(self, layer: Layer) -> None:
        if not isinstance(layer, Layer):
            raise TypeError(f"layer must be a gpuconv.layers.Layer, got {type(layer).__name__}")
        if isinstance(layer, InputLayer):
            if self.layers:
                raise ValueError("an Input/InputLayer may only come first in a Sequential model")
            self.input_shape = layer.input_shape
            return
        if not self.layers and self.input_shape is None and layer.input_shape is not None:
            self.input_shape = layer.input_shape  # Keras: the first layer's input_shape builds the model
        taken = {l.name for l in self.layers}
        if layer.given_name:
            if layer.name in taken:
                raise ValueError(f"the model already has a layer named {layer.name!r}; layer names must be unique")
        else:
            base = re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", type(layer).__name__).lower()
            layer.name = next(n for n in (base if i == 0 else f"{base}_{i}" for i in range(len(taken) + 1))
                              if n not in taken)
        self.layers.append(layer)
        if self.input_shape is not None:  # Keras builds as soon as the input shape is known
            try:
                self.build()
            except ValueError:
                self.layers.pop()
                raise

    # ------------------------------------------------------------------ structure
    def build(self, input_shape: Shape | None = None) -> list[Shape]:
        """Create every layer's weights from the input shape (batch axis excluded); returns output shapes.

        Each layer checks what it receives; an error names the layer and, when the shape looks like the
        other image layout (e.g. (28, 28, 1) given to channels_first layers), says which data_format to use.
        """
        shape = tuple(input_shape or self.input_shape or ())
        if not shape:
            raise ValueError("the model needs input_shape (without the batch axis), e.g. Sequential(..., "
                             "input_shape=(1, 28, 28)) or Conv2D(..., input_shape=(28, 28, 1)), or a first call on data")
        self.input_shape = shape
        shapes, hint = [], None
        for layer in self.layers:
            if hint is None and isinstance(layer, _Spatial):
                hint = layer.layout_hint(shape)  # judged on the images the first spatial layer receives
            try:  # the layer's own check, e.g. a kernel larger than its input, named with the layer
                out = tuple(layer.output_shape(shape))
                if not layer.built:
                    native = shape
                    if isinstance(layer, _Spatial) and layer.data_format == "channels_last":
                        native = (shape[2], shape[0], shape[1])
                    layer.build(native)
            except ValueError as error:
                raise ValueError(f"layer {layer.name} ({type(layer).__name__}) cannot take input of shape "
                                 f"{(None,) + shape}: {error}.{hint or ''}") from None
            shape = out
            shapes.append(shape)
        self._layout_hint = hint  # said once, by summary/fit/evaluate, when the whole model builds
        return shapes

    def _advise_layout(self):
        if getattr(self, "_layout_hint", None) and not getattr(self, "_layout_advised", False):
            self._layout_advised = True
            warnings.warn(f"model {self.name}:{self._layout_hint}", stacklevel=3)

    def summary(self, print_fn: Callable[[str], Any] = print) -> int:
        """Each layer's output shape and parameter count, then the totals (Keras's layout)."""
        shapes = self.build()
        self._advise_layout()
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

    def count_params(self) -> int:
        self.build()
        return sum(sum(layer.count_params()) for layer in self.layers)

    def parameters(self) -> list[Tensor]:
        return [w for layer in self.layers for w in layer.weights.values()]

    def get_config(self) -> dict:
        """The architecture as JSON values: name, input shape and each layer's class and arguments."""
        return {"name": self.name, "input_shape": None if self.input_shape is None else list(self.input_shape),
                "layers": [{"class_name": _class_name(layer), "config": layer.get_config()} for layer in self.layers]}

    @classmethod
    def from_config(cls, config: dict) -> Sequential:
        """The model ``get_config`` describes, unbuilt (no weights drawn)."""
        try:
            layers = []
            for entry in config["layers"]:
                if entry["class_name"] not in LAYERS:
                    raise ValueError(f"unknown layer class {entry['class_name']!r}")
                layers.append(LAYERS[entry["class_name"]].from_config(entry["config"]))
            return cls(layers, input_shape=config["input_shape"], name=config["name"])
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a gpuconv model configuration: {error!r}") from None

    def to_json(self) -> str:
        return json.dumps({"class_name": "Sequential", "config": self.get_config()})

    def train(self, mode=True):
        """Switch training mode (dropout active, batch statistics); ``fit`` does this itself."""
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    # ------------------------------------------------------------------ running
    def __call__(self, x: Any, training: bool | None = None, logits: bool = False) -> Tensor:
        """Forward pass; ``logits=True`` skips the last layer's activation.

        Channels-last images are transposed to NCHW once, before the first layer that can run on NCHW in
        their place (spatial layers, ReLU, Dropout, channel BatchNormalization), and back to NHWC once,
        before the first layer that cannot (Flatten, Dense): not twice per layer.
        """
        training = self.training if training is None else training
        if self.input_shape is None:
            self.input_shape = tuple(x.shape[1:])
        if not all(layer.built for layer in self.layers):
            self.build()
        nchw = False  # whether x holds the NCHW form of NHWC data
        for i, layer in enumerate(self.layers):
            activate = not (logits and i == len(self.layers) - 1)
            if layer.runs_on_nchw(x.ndim) and (nchw or isinstance(layer, _Spatial)):
                if not nchw:
                    x, nchw = x.transpose(0, 3, 1, 2), True
                x = layer.call_nchw(x, training=training, activate=activate)
            else:
                if nchw:
                    x, nchw = x.transpose(0, 2, 3, 1), False
                x = layer(x, training=training, activate=activate)
        return x.transpose(0, 2, 3, 1) if nchw else x

    def compile(self, optimizer: str | optimizers.Optimizer = "adam", loss: Any = "sparse_categorical_crossentropy",
                metrics: Sequence[str] | None = None) -> None:
        self.optimizer = optimizers.get(optimizer)
        self.loss = losses.get(loss)
        self.metrics = list(metrics or [])
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"metrics may only contain {', '.join(map(repr, METRICS))}, got {unknown}")
        # train on logits with the fused loss when the model ends in softmax and the loss takes probabilities
        last = self.layers[-1].activation if self.layers else None
        from_logits = getattr(self.loss, "from_logits", None)
        categorical = isinstance(self.loss, (losses.SparseCategoricalCrossentropy, losses.CategoricalCrossentropy))
        self._fused_softmax = categorical and from_logits is False and last == "softmax"
        if not categorical:
            pass  # binary cross-entropy takes sigmoid or softmax outputs: nothing to advise
        elif self.layers and from_logits is False and last != "softmax":
            warnings.warn(f"the loss {self.loss.name} expects probabilities (from_logits=False) but the last layer "
                          f"{self.layers[-1].name} has no softmax: add activation='softmax' to it, or pass "
                          f"{type(self.loss).__name__}(from_logits=True) as the loss", stacklevel=2)
        elif self.layers and from_logits is True and last == "softmax":
            warnings.warn(f"the loss expects logits (from_logits=True) but the last layer {self.layers[-1].name} "
                          f"applies softmax: remove activation='softmax', or use from_logits=False", stacklevel=2)

    def _loss_and_outputs(self, x, y, training, weights=None):
        weighted = {} if weights is None else {"sample_weight": weights}
        if self._fused_softmax:
            out = self(x, training=training, logits=True)
            return self.loss(y, out, from_logits=True, **weighted), out
        out = self(x, training=training)
        return self.loss(y, out, **weighted), out

    def _metric_values(self, out, y):
        correct, count = self._metric_counts(out, y)
        return [correct / max(count, 1)] * len(self.metrics)

    def _metric_counts(self, out, y):
        """(right answers, answers) of the accuracy metric on a batch; (0, 0) without metrics."""
        if not self.metrics:
            return 0.0, 0
        if isinstance(self.loss, losses.BinaryCrossentropy):  # Keras: 'accuracy' is then binary accuracy
            right = (out.data > 0.5) == (y > 0.5)
        else:
            right = out.data.argmax(axis=-1) == (y.argmax(axis=-1) if y.ndim == 2 else y)
        return float(right.sum()), int(right.size)

    def _names(self):
        return ["loss"] + list(self.metrics)

    def train_on_batch(self, x: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
                       class_weight: dict[int, float] | None = None, return_dict: bool = False) -> Any:
        """One optimizer step on a batch; returns the loss (a float without metrics, else [loss, *metrics])."""
        self._require_compiled()
        values = self._train_step(self._as_input(x), y, self._sample_weights(y, sample_weight, class_weight, len(y)))
        return self._result(values, return_dict)

    def _train_step(self, x, y, weights, global_batch=None):
        """One step on (x, y), this rank's shard of a batch of ``global_batch`` samples; returns the batch's
        [loss, *metrics] (over all ranks)."""
        comm = distributed.world()
        if comm.size > 1:
            return self._parallel_step(comm, x, y, weights, global_batch)
        y = self._as_target(y)
        loss, out = self._loss_and_outputs(x, y, training=True,
                                           weights=None if weights is None else backend.to_device(weights))
        loss.backward()
        self.optimizer.step(self.parameters())
        return [float(loss.data)] + self._metric_values(out, y)

    def _parallel_step(self, comm, x, y, weights, global_batch):
        """The data-parallel step: each rank's loss is sum(w * loss) / global batch over its shard, so the sum of
        the ranks' gradients is the global batch's; one allreduce sums them, packed with the loss and the
        metric's counts."""
        n = len(y)
        scale = (np.ones(n) if weights is None else np.asarray(weights, np.float64)) * (n / global_batch)
        y = self._as_target(y)
        with distributed.data_parallel(comm):
            loss, out = self._loss_and_outputs(x, y, training=True, weights=backend.to_device(scale))
            loss.backward()
        parameters = self.parameters()
        xp = backend.array_module(parameters[0].data)
        correct, count = self._metric_counts(out, y)
        packed = xp.concatenate([(p.grad if p.grad is not None else xp.zeros_like(p.data)).ravel()
                                 for p in parameters] + [xp.asarray([float(loss.data), correct, count],
                                                                    dtype=parameters[0].dtype)])
        comm.allreduce_sum(packed)
        offset = 0
        for p in parameters:
            p.grad = packed[offset:offset + p.data.size].reshape(p.shape)
            offset += p.data.size
        self.optimizer.step(parameters)
        total_loss, total_correct, total_count = (float(v) for v in backend.to_host(packed[offset:]))
        return [total_loss] + [total_correct / max(total_count, 1)] * len(self.metrics)

    def _share_state(self, comm, x, y, batch_size, epochs, initial_epoch, validation):
        """Data-parallel fit: check that every rank runs the same model on the same data, then take rank 0's
        weights, optimizer state and shuffle seed."""
        if batch_size % comm.size:
            raise ValueError(f"batch_size {batch_size} must divide evenly over the {comm.size} ranks: it is the "
                             f"global batch, each rank computes batch_size / {comm.size} samples of it")
        from gpuconv import __version__
        mine = {"gpuconv version": __version__, "model": distributed.fingerprint(self.to_json()),
                "optimizer": type(self.optimizer).__name__, "x shape": tuple(x.shape), "y shape": tuple(y.shape),
                "batch_size": batch_size, "epochs": (initial_epoch, epochs),
                "validation samples": None if validation is None else len(validation[0])}
        everyone = comm.allgather_object(mine)
        differ = sorted({key for other in everyone for key in mine if other[key] != everyone[0][key]})
        if differ:
            raise ValueError("the ranks disagree on " + "; ".join(
                f"{key}: " + ", ".join(f"rank {r} {other[key]}" for r, other in enumerate(everyone)) for key in differ))
        self.set_weights(comm.broadcast_arrays(self.get_weights()))
        parameters = self.parameters()
        state = {i: {k: backend.to_host(v) for k, v in self.optimizer.state.get(id(p), {}).items()}
                 for i, p in enumerate(parameters)}
        iterations, learning_rate, state, seed = comm.broadcast_object(
            (self.optimizer.iterations, self.optimizer.learning_rate, state, self.shuffle_seed))
        self.optimizer.iterations, self.optimizer.learning_rate, self.shuffle_seed = iterations, learning_rate, seed
        self.optimizer.state = {id(p): {k: backend.to_device(v) for k, v in state[i].items()}
                                for i, p in enumerate(parameters) if state[i]}

    def _result(self, values, return_dict):
        if return_dict:
            return dict(zip(self._names(), values))
        return values[0] if len(values) == 1 else list(values)

    def fit(self, x: ArrayLike = None, y: ArrayLike = None, batch_size: int | None = None, epochs: int = 1,
            verbose: int | str = "auto", callbacks: Sequence[Callback] | None = None, validation_split: float = 0.0,
            validation_data: tuple | None = None, shuffle: bool = True, class_weight: dict[int, float] | None = None,
            sample_weight: ArrayLike | None = None, initial_epoch: int = 0,
            validation_batch_size: int | None = None) -> History:
        """Train epochs ``initial_epoch .. epochs-1`` over (x, y) in mini-batches; returns a ``History``.

        Keras's arguments and semantics: ``batch_size`` defaults to 32; ``validation_split`` holds out the
        last fraction of the samples (before shuffling); ``validation_data`` is (x, y) or (x, y, weights);
        ``class_weight`` ({class: weight}) and ``sample_weight`` ((samples,)) weigh each sample's loss;
        ``shuffle`` reorders the samples each epoch (a permutation drawn from the model's seed and the
        epoch, so a resumed run repeats it). ``verbose``: 1 (``'auto'``) a tqdm progress bar plus a line per
        epoch, 2 the line only, 0 nothing. ``callbacks``: ``gpuconv.callbacks`` objects.
        """
        self._require_compiled()
        batch_size = _positive_int(32 if batch_size is None else batch_size, "batch_size")
        epochs, initial_epoch = _positive_int(epochs, "epochs", 0), _positive_int(initial_epoch, "initial_epoch", 0)
        verbose = _verbosity(verbose, 1)
        if not isinstance(shuffle, (bool, np.bool_)):
            raise ValueError(f"shuffle must be True or False, got {shuffle!r}")
        # every check before the first step, so bad data never leaves the weights half-trained
        x, y = self._checked_data(x, y, "x", "y")
        weights = self._sample_weights(y, sample_weight, class_weight, len(x))
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3)):
                raise ValueError("validation_data must be (x_val, y_val) or (x_val, y_val, sample_weight_val)")
            x_val, y_val = self._checked_data(validation_data[0], validation_data[1], "validation_data x",
                                              "validation_data y")
            validation = (x_val, y_val, self._sample_weights(y_val, (list(validation_data) + [None])[2], None,
                                                             len(x_val), "validation_data sample_weight"))
        elif validation_split:
            if isinstance(validation_split, bool) or not isinstance(validation_split, (float, int)) \
                    or not 0 <= validation_split < 1:
                raise ValueError(f"validation_split must be a fraction in [0, 1), got {validation_split!r}")
            split = int(math.floor(len(x) * (1.0 - validation_split)))  # Keras: the last samples, unshuffled
            if split == 0 or split == len(x):
                raise ValueError(f"validation_split={validation_split} of {len(x)} samples leaves "
                                 f"{split} for training and {len(x) - split} for validation; both need at least one")
            validation = (x[split:], y[split:], None if weights is None else weights[split:])
            x, y, weights = x[:split], y[:split], None if weights is None else weights[:split]
        else:
            validation = None
        validation_batch_size = validation_batch_size or max(batch_size, 256)
        if shuffle and self.shuffle_seed is None:
            self.shuffle_seed = int(rng.generator().integers(2 ** 63))
        comm = distributed.world()
        if comm.size > 1:
            self._share_state(comm, x, y, batch_size, epochs, initial_epoch, validation)
            verbose = verbose if comm.is_root else 0  # one rank reports
        history = History()
        callback_list = CallbackList(list(callbacks or ()) + [history], self,
                                     {"verbose": verbose, "epochs": epochs, "steps": -(-len(x) // batch_size)})
        self.stop_training, self.history, logs = False, history, {}
        callback_list.on_train_begin()
        with backend.session():
            for epoch in range(initial_epoch, epochs):
                callback_list.on_epoch_begin(epoch)
                logs = self._fit_epoch(x, y, weights, epoch, epochs, batch_size, shuffle, verbose, history,
                                       callback_list)
                if validation is not None:
                    scores = cast(dict, self.evaluate(*validation[:2], batch_size=validation_batch_size, verbose=0,
                                                      sample_weight=validation[2], callbacks=callback_list.callbacks,
                                                      return_dict=True))
                    logs.update({f"val_{key}": value for key, value in scores.items()})
                if verbose:
                    print(f"epoch {epoch + 1}/{epochs}: " + ", ".join(f"{k} {v:.4f}" for k, v in logs.items())
                          + f" ({history.epoch_seconds[-1]:.1f} s, {len(x) / history.epoch_seconds[-1]:.0f} "
                          f"images/s)")
                callback_list.on_epoch_end(epoch, logs)
                if self.stop_training:
                    break
        callback_list.on_train_end(logs)
        return history

    def _fit_epoch(self, x, y, weights, epoch, epochs, batch_size, shuffle, verbose, history, callback_list):
        """One pass over the training data; returns the epoch's logs (means weighted by batch size)."""
        n = len(x)
        order = np.random.default_rng([self.shuffle_seed, epoch]).permutation(n) if shuffle else np.arange(n)
        names = self._names()
        totals, seen, start = np.zeros(len(names)), 0, time.perf_counter()
        bar = _progress(range(0, n, batch_size), f"epoch {epoch + 1}/{epochs}", verbose == 1)
        self.train(True)
        try:
            for step, b0 in enumerate(bar):
                callback_list.on_train_batch_begin(step)
                index = np.sort(order[b0:b0 + batch_size]) if shuffle else order[b0:b0 + batch_size]
                local = _shard(index, distributed.world())  # all of it in a single process
                values = self._train_step(self._as_input(x[local]), y[local],
                                          None if weights is None else weights[local], len(index))
                history.batches.append((epoch + b0 / n, *values))
                totals += np.array(values) * len(index)
                seen += len(index)
                running = dict(zip(names, (totals / seen).tolist()))
                if verbose == 1:  # drawn at tqdm's pace, and once more after the last batch
                    bar.set_postfix({k: f"{v:.4f}" for k, v in running.items()}, refresh=seen == n)
                callback_list.on_train_batch_end(step, running)
                if self.stop_training:
                    break
        finally:
            self.train(False)
            if hasattr(bar, "close"):
                bar.close()
        history.epoch_seconds.append(time.perf_counter() - start)
        return dict(zip(names, (totals / max(seen, 1)).tolist()))

    def evaluate(self, x: ArrayLike = None, y: ArrayLike = None, batch_size: int | None = None,
                 verbose: int | str = "auto", sample_weight: ArrayLike | None = None,
                 callbacks: Sequence[Callback] | None = None, return_dict: bool = False
                 ) -> float | list[float] | dict[str, float]:
        """The loss over (x, y) in inference mode, as Keras returns it: a float without metrics, else
        ``[loss, *metrics]``; ``return_dict=True`` gives ``{'loss': ..., 'accuracy': ...}``.
        ``batch_size`` (default 256) changes only the speed: results are means over all samples."""
        self._require_compiled()
        batch_size = _positive_int(256 if batch_size is None else batch_size, "batch_size")
        _verbosity(verbose, 0)
        x, y = self._checked_data(x, y, "x", "y")
        weights = self._sample_weights(y, sample_weight, None, len(x))
        callback_list = CallbackList(callbacks, self)
        callback_list.on_test_begin()
        totals, n = np.zeros(len(self._names())), len(x)
        comm = distributed.world()
        if comm.size > 1:  # each rank evaluates its contiguous part; the sums are reduced below
            local = _shard(np.arange(n), comm)
            x, y = x[local], y[local]
            weights = None if weights is None else weights[local]
        with no_grad(), backend.session():
            for step, b0 in enumerate(range(0, len(x), batch_size)):
                callback_list.on_test_batch_begin(step)
                yb = self._as_target(y[b0:b0 + batch_size])
                wb = None if weights is None else backend.to_device(weights[b0:b0 + batch_size])
                loss, out = self._loss_and_outputs(self._as_input(x[b0:b0 + batch_size]), yb, False, wb)
                totals += np.array([float(loss.data)] + self._metric_values(out, yb)) * len(yb)
                callback_list.on_test_batch_end(step)
        scores = (comm.allreduce_sum(totals) / n).tolist()
        callback_list.on_test_end(dict(zip(self._names(), scores)))
        return self._result(scores, return_dict)

    def predict(self, x: ArrayLike, batch_size: int | None = None, verbose: int | str = "auto",
                callbacks: Sequence[Callback] | None = None) -> np.ndarray:
        """Outputs for x in inference mode, as a NumPy array on every backend (probabilities when the model
        ends in softmax)."""
        batch_size = _positive_int(256 if batch_size is None else batch_size, "batch_size")
        _verbosity(verbose, 0)
        x = x if hasattr(x, "shape") and hasattr(x, "dtype") else np.asarray(x)  # nested lists too
        callback_list = CallbackList(callbacks, self)
        callback_list.on_predict_begin()
        with no_grad(), backend.session():
            parts = [backend.to_host(self(self._as_input(x[b0:b0 + batch_size]), training=False).data)
                     for b0 in range(0, len(x), batch_size)]
        callback_list.on_predict_end()
        return np.concatenate(parts) if parts else np.zeros((0,), np.float32)

    def _as_input(self, x):
        """A batch on the backend's device in the model's dtype (its weights'; float32 before they exist),
        as Keras casts inputs: float64 images and integer pixels both work."""
        weights = self.parameters()
        return Tensor(backend.to_device(x).astype(weights[0].dtype if weights else np.float32, copy=False))

    @staticmethod
    def _as_target(y):
        return backend.to_device(y)

    def _sample_weights(self, y, sample_weight, class_weight, n, name="sample_weight"):
        """Per-sample loss weights (float64 NumPy, (n,)) from ``sample_weight`` times ``class_weight`` of each
        sample's class; None when neither is given."""
        if sample_weight is None and class_weight is None:
            return None
        weights = np.ones(n)
        if sample_weight is not None:
            given = np.asarray(backend.to_host(sample_weight), dtype=np.float64)
            if given.shape != (n,) or not np.all(np.isfinite(given)) or np.any(given < 0):
                raise ValueError(f"{name} must hold {n} finite non-negative weights, one per sample, got shape "
                                 f"{given.shape}")
            weights *= given
        if class_weight is not None:
            if not isinstance(class_weight, dict):
                raise TypeError(f"class_weight must be a dict {{class index: weight}}, got {type(class_weight).__name__}")
            classes = self.build()[-1][-1]
            table = np.ones(classes)
            for key, value in class_weight.items():
                if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= key < classes:
                    raise ValueError(f"class_weight keys must be class indices in [0, {classes}), got {key!r}")
                table[key] = float(value)
            labels = np.asarray(backend.to_host(y))
            weights *= table[labels.argmax(axis=-1) if labels.ndim == 2 else labels.astype(np.int64)]
        return weights

    def _checked_data(self, x, y, x_name, y_name):
        """(x, y) as arrays after checking all of them once: non-empty, real inputs of the model's sample shape,
        as many targets as samples, and targets the loss can take (class indices in range, or rows of the
        output's width). Raises ValueError/TypeError naming the argument."""
        if x is None or y is None:
            raise ValueError(f"{x_name} and {y_name} are both needed")
        x, y = (v if hasattr(v, "shape") and hasattr(v, "dtype") else np.asarray(v) for v in (x, y))
        if x.ndim == 0 or len(x) == 0:
            raise ValueError(f"{x_name} is empty (shape {tuple(x.shape)}); there is nothing to train on or evaluate")
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{x_name} has dtype {x.dtype}; the model takes real numbers")
        if self.input_shape is not None and tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"{x_name} has samples of shape {tuple(x.shape[1:])} but the model's input_shape is "
                             f"{tuple(self.input_shape)}{_transposed_hint(tuple(x.shape[1:]), self.input_shape)}")
        if y.ndim == 0 or len(y) != len(x):
            raise ValueError(f"{x_name} has {len(x)} samples but {y_name} has "
                             f"{len(y) if y.ndim else 'no'} (shape {tuple(y.shape)})")
        self.input_shape = tuple(x.shape[1:])
        classes = self.build()[-1][-1] if self.layers else None
        self._advise_layout()
        if isinstance(self.loss, losses.SparseCategoricalCrossentropy):
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
        elif isinstance(self.loss, losses.BinaryCrossentropy) and tuple(y.shape[1:]) != (classes,):
            raise ValueError(f"{y_name} must have rows of {classes} targets in [0, 1] for binary_crossentropy, "
                             f"got shape {tuple(y.shape)}")
        return x, y

    def _require_compiled(self):
        if self.optimizer is None:
            raise RuntimeError("call compile(optimizer, loss, metrics) before fit/evaluate/train_on_batch")

    # ------------------------------------------------------------------ weights
    def weight_arrays(self) -> dict[str, Any]:
        """{'layer/name': array} of every trained weight and saved state array."""
        self.build()
        arrays = {}
        for layer in self.layers:
            arrays.update({f"{layer.name}/{k}": w.data for k, w in layer.weights.items()})
            arrays.update({f"{layer.name}/{k}": s for k, s in layer.state.items()})
        return arrays

    def save_weights(self, path: str | os.PathLike) -> None:
        """Write every weight to ``path``, a NumPy ``.npz`` file, atomically (a temporary file, then a rename).
        Other suffixes (Keras's ``.weights.h5``) are refused: the file would not be what its name says."""
        if not os.fspath(path).endswith(".npz"):
            raise ValueError(f"save_weights writes a NumPy .npz archive; give a path ending in '.npz', got {path!r} "
                             f"(use model.save(path) for the whole model)")
        arrays = {k: backend.to_host(v) for k, v in self.weight_arrays().items()}
        atomic_write(path, lambda f: np.savez(f, **arrays))

    def save(self, path: str | os.PathLike) -> None:
        """Write the whole model to one file: architecture (JSON), weights, compile settings and optimizer
        state (step count, moments, learning rate), and the shuffle seed; ``gpuconv.load_model(path)``
        resumes training exactly. A zip of JSON and ``.npy`` members, written atomically; no pickle."""
        from gpuconv.nn.saving import save_model
        save_model(self, path)

    def load_weights(self, path: str | os.PathLike) -> None:
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

    def get_weights(self) -> list[np.ndarray]:
        """Every weight and saved state array as NumPy arrays, in Keras's order: layer by layer, each layer's
        trained weights (kernel, bias; gamma, beta) then its state (moving mean, variance). Layouts are
        gpuconv's: conv kernels KCRS (Keras: HWIO), dense kernels (inputs, units) as in Keras."""
        return [backend.to_host(array).copy() for array in self.weight_arrays().values()]

    def set_weights(self, weights: Sequence[ArrayLike]) -> None:
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


def _shard(index, comm):
    """This rank's contiguous part of ``index`` (sizes differ by at most one; the whole in one process)."""
    if comm.size == 1:
        return index
    bounds = np.linspace(0, len(index), comm.size + 1).round().astype(int)
    return index[bounds[comm.rank]:bounds[comm.rank + 1]]


def _class_name(layer):
    """The registered name a layer saves under (its class's, or the nearest registered base's)."""
    for cls in type(layer).__mro__:
        if LAYERS.get(cls.__name__) is cls:
            return cls.__name__
    raise ValueError(f"layer {layer.name} is a {type(layer).__name__}, which gpuconv cannot save or rebuild; "
                     f"use save_weights for the weights")


def _transposed_hint(data_shape, model_shape):
    """A sentence when the data's samples are the model's input shape in the other image layout."""
    if len(data_shape) != 3 or len(model_shape) != 3:
        return ""
    if (data_shape[2], data_shape[0], data_shape[1]) == tuple(model_shape):
        return ("; the data look channels-last (height, width, channels): build the model with "
                "data_format='channels_last' (or gpuconv.config.set_image_data_format('channels_last')), or pass "
                "x.transpose(0, 3, 1, 2)")
    if (data_shape[1], data_shape[2], data_shape[0]) == tuple(model_shape):
        return ("; the data look channels-first (channels, height, width): build the model with "
                "data_format='channels_first', or pass x.transpose(0, 2, 3, 1)")
    return ""


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
