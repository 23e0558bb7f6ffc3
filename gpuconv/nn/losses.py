"""Cross-entropy losses, Keras-named. Softmax and cross-entropy are fused and computed with
log-sum-exp, so extreme logits give finite losses and gradients, never NaN.

Targets are class indices (``sparse_categorical_crossentropy``) or one-hot / probability rows
(``categorical_crossentropy``). Predictions are logits (``from_logits=True``) or
probabilities; probabilities are clipped to [1e-7, 1 - 1e-7] as Keras does. A model whose
last layer ends in softmax trains on its logits with the fused loss (see ``Sequential``).
"""
from typing import Callable

from gpuconv.backend import array_module
from gpuconv.tensor import Function, Tensor, as_tensor

EPSILON = 1e-7


class CrossEntropy(Function):
    """Mean over the batch of -sum(target * log softmax(logits)) (or of log(probabilities)).

    With per-sample ``weights`` it is Keras's weighted loss: sum(weight * loss) / batch size.
    """

    @staticmethod
    def forward(ctx, predictions, targets, from_logits, weights=None):
        xp = array_module(predictions)
        if from_logits:
            shifted = predictions - predictions.max(axis=-1, keepdims=True)
            log_sum = xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))
            log_probs = shifted - log_sum
            ctx.save_for_backward(xp.exp(log_probs), targets)
        else:
            clipped = xp.clip(predictions, EPSILON, 1 - EPSILON)
            log_probs = xp.log(clipped)
            inside = (predictions > EPSILON) & (predictions < 1 - EPSILON)
            ctx.save_for_backward(clipped, targets, inside)
        ctx.from_logits, ctx.weights = from_logits, weights
        per_sample = -(targets * log_probs).sum(axis=-1)
        loss = per_sample.mean() if weights is None else (per_sample * weights).sum() / max(len(per_sample), 1)
        return xp.asarray(loss, dtype=predictions.dtype)

    @staticmethod
    def backward(ctx, grad):
        batch = ctx.saved_tensors[1].shape[0]
        if ctx.weights is not None:
            grad = grad * ctx.weights[:, None]
        if ctx.from_logits:
            probs, targets = ctx.saved_tensors
            d = probs * targets.sum(axis=-1, keepdims=True) - targets
        else:
            clipped, targets, inside = ctx.saved_tensors
            d = -targets / clipped * inside
        return ((d * (grad / batch)).astype(d.dtype),)


def one_hot(labels, classes, dtype):
    xp = array_module(labels)
    labels = xp.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"sparse targets must be a 1-D integer array of class indices, got "
                         f"shape {labels.shape} dtype {labels.dtype}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"sparse targets must lie in [0, {classes}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    out = xp.zeros((labels.shape[0], classes), dtype)
    out[xp.arange(labels.shape[0]), labels] = 1
    return out


def _check(predictions, targets_shape):
    if predictions.ndim != 2:
        raise ValueError(f"predictions must be (batch, classes), got shape {predictions.shape}")
    if targets_shape[0] != predictions.shape[0]:
        raise ValueError(f"targets have {targets_shape[0]} rows but predictions have {predictions.shape[0]}")


def _weights(sample_weight, predictions):
    """Per-sample weights as a (batch,) array beside the predictions, or None."""
    if sample_weight is None:
        return None
    xp = array_module(predictions.data)
    weights = xp.asarray(sample_weight.data if hasattr(sample_weight, "_ctx") else sample_weight,
                         dtype=predictions.dtype).reshape(-1)
    if weights.shape != (predictions.shape[0],):
        raise ValueError(f"sample_weight must hold one weight per sample ({predictions.shape[0]}), "
                         f"got shape {tuple(weights.shape)}")
    return weights


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, sample_weight=None):
    """Mean cross-entropy of (batch, classes) predictions against integer class indices (batch,);
    ``sample_weight`` (batch,) weighs each sample's loss (sum of weighted losses / batch size, as Keras)."""
    y_pred = as_tensor(y_pred)
    labels = y_true.data if hasattr(y_true, "_ctx") else y_true
    _check(y_pred, (len(labels),))
    targets = one_hot(labels, y_pred.shape[1], y_pred.dtype)
    return CrossEntropy.apply(y_pred, targets=targets, from_logits=from_logits, weights=_weights(sample_weight, y_pred))


def _dense_targets(y_true, y_pred):
    """Targets of the predictions' shape (one-hot rows, probabilities), as an array beside them."""
    targets = array_module(y_pred.data).asarray(y_true.data if hasattr(y_true, "_ctx") else y_true,
                                                dtype=y_pred.dtype)
    if targets.shape != y_pred.shape:
        raise ValueError(f"targets must have the predictions' shape {y_pred.shape}, got {targets.shape}")
    _check(y_pred, targets.shape)
    return targets


def categorical_crossentropy(y_true, y_pred, from_logits=False, sample_weight=None):
    """Mean cross-entropy of (batch, classes) predictions against one-hot (or probability) rows."""
    y_pred = as_tensor(y_pred)
    return CrossEntropy.apply(y_pred, targets=_dense_targets(y_true, y_pred), from_logits=from_logits,
                              weights=_weights(sample_weight, y_pred))


class Loss:
    """Loss object: ``loss(y_true, y_pred, sample_weight=None)``; ``from_logits`` says what y_pred holds."""
    function: Callable[..., Tensor]
    name: str

    def __init__(self, from_logits=False):
        if not isinstance(from_logits, bool):
            raise TypeError(f"from_logits must be True or False, got {from_logits!r}")
        self.from_logits = from_logits

    def __call__(self, y_true, y_pred, sample_weight=None, from_logits=None):
        return self.function(y_true, y_pred, self.from_logits if from_logits is None else from_logits, sample_weight)

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


class SparseCategoricalCrossentropy(Loss):
    function = staticmethod(sparse_categorical_crossentropy)
    name = "sparse_categorical_crossentropy"


class CategoricalCrossentropy(Loss):
    function = staticmethod(categorical_crossentropy)
    name = "categorical_crossentropy"


class BinaryCrossEntropy(Function):
    """Mean over the batch of the mean over the last axis of -(t log p + (1 - t) log(1 - p)), Keras's
    ``binary_crossentropy``; p = sigmoid(predictions) with ``from_logits``, else the clipped predictions."""

    @staticmethod
    def forward(ctx, predictions, targets, from_logits, weights=None):
        xp = array_module(predictions)
        if from_logits:  # log(1 + e^-|z|) form: finite at any logit
            per_element = xp.maximum(predictions, 0) - predictions * targets + xp.log1p(xp.exp(-xp.abs(predictions)))
            ctx.save_for_backward(1 / (1 + xp.exp(-predictions)), targets)
        else:
            clipped = xp.clip(predictions, EPSILON, 1 - EPSILON)
            per_element = -(targets * xp.log(clipped) + (1 - targets) * xp.log(1 - clipped))
            inside = (predictions > EPSILON) & (predictions < 1 - EPSILON)
            ctx.save_for_backward(clipped, targets, inside)
        ctx.from_logits, ctx.weights = from_logits, weights
        per_sample = per_element.mean(axis=-1)
        loss = per_sample.mean() if weights is None else (per_sample * weights).sum() / max(len(per_sample), 1)
        return xp.asarray(loss, dtype=predictions.dtype)

    @staticmethod
    def backward(ctx, grad):
        batch, classes = ctx.saved_tensors[1].shape
        if ctx.from_logits:
            probabilities, targets = ctx.saved_tensors
            d = probabilities - targets
        else:
            clipped, targets, inside = ctx.saved_tensors
            d = (clipped - targets) / (clipped * (1 - clipped)) * inside
        if ctx.weights is not None:
            grad = grad * ctx.weights[:, None]
        return ((d * (grad / (batch * classes))).astype(d.dtype),)


def binary_crossentropy(y_true, y_pred, from_logits=False, sample_weight=None):
    """Keras's binary cross-entropy of (batch, outputs) predictions against targets in [0, 1] of that shape."""
    y_pred = as_tensor(y_pred)
    return BinaryCrossEntropy.apply(y_pred, targets=_dense_targets(y_true, y_pred), from_logits=from_logits,
                                    weights=_weights(sample_weight, y_pred))


class BinaryCrossentropy(Loss):
    """Loss object for ``binary_crossentropy`` (with it, the metric 'accuracy' is Keras's binary accuracy)."""
    function = staticmethod(binary_crossentropy)
    name = "binary_crossentropy"


LOSSES = {"sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
          "categorical_crossentropy": CategoricalCrossentropy, "binary_crossentropy": BinaryCrossentropy}


def get(loss):
    """A loss object from its name, or the loss (object or callable) itself."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
    return LOSSES[loss]()
