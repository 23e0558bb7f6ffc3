"""Cross-entropy losses, Keras-named. Softmax and cross-entropy are fused and computed with
log-sum-exp, so extreme logits give finite losses and gradients, never NaN.

Targets are class indices (``sparse_categorical_crossentropy``) or one-hot / probability rows
(``categorical_crossentropy``). Predictions are logits (``from_logits=True``) or
probabilities; probabilities are clipped to [1e-7, 1 - 1e-7] as Keras does. A model whose
last layer ends in softmax trains on its logits with the fused loss (see ``Sequential``).
"""
from gpuconv.backend import array_module
from gpuconv.tensor import Function, as_tensor

EPSILON = 1e-7


class CrossEntropy(Function):
    """Mean over the batch of -sum(target * log softmax(logits)) (or of log(probabilities))."""

    @staticmethod
    def forward(ctx, predictions, targets, from_logits):
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
        ctx.from_logits = from_logits
        loss = -(targets * log_probs).sum(axis=-1).mean()
        return xp.asarray(loss, dtype=predictions.dtype)

    @staticmethod
    def backward(ctx, grad):
        batch = ctx.saved_tensors[1].shape[0]
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


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Mean cross-entropy of (batch, classes) predictions against integer class indices (batch,)."""
    y_pred = as_tensor(y_pred)
    labels = y_true.data if hasattr(y_true, "_ctx") else y_true
    _check(y_pred, (len(labels),))
    targets = one_hot(labels, y_pred.shape[1], y_pred.dtype)
    return CrossEntropy.apply(y_pred, targets=targets, from_logits=from_logits)


def categorical_crossentropy(y_true, y_pred, from_logits=False):
    """Mean cross-entropy of (batch, classes) predictions against one-hot (or probability) rows."""
    y_pred = as_tensor(y_pred)
    targets = array_module(y_pred.data).asarray(y_true.data if hasattr(y_true, "_ctx") else y_true,
                                                dtype=y_pred.dtype)
    if targets.shape != y_pred.shape:
        raise ValueError(f"targets must have the predictions' shape {y_pred.shape}, got {targets.shape}")
    _check(y_pred, targets.shape)
    return CrossEntropy.apply(y_pred, targets=targets, from_logits=from_logits)


class SparseCategoricalCrossentropy:
    """Loss object: ``loss(y_true, y_pred)``; ``from_logits`` says what y_pred holds."""
    function = staticmethod(sparse_categorical_crossentropy)

    def __init__(self, from_logits=False):
        self.from_logits = from_logits

    def __call__(self, y_true, y_pred, from_logits=None):
        return self.function(y_true, y_pred, self.from_logits if from_logits is None else from_logits)


class CategoricalCrossentropy(SparseCategoricalCrossentropy):
    function = staticmethod(categorical_crossentropy)


LOSSES = {"sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
          "categorical_crossentropy": CategoricalCrossentropy}


def get(loss):
    """A loss object from its name, or the loss (object or callable) itself."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)} or a callable, got {loss!r}")
    return LOSSES[loss]()
