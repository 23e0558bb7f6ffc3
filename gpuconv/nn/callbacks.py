"""Callbacks for ``Sequential.fit`` (Keras's protocol, the hooks this library needs)."""


class Callback:
    """Override what you need; ``model`` is set by ``fit`` before training starts."""
    model = None

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        pass


class LearningRateScheduler(Callback):
    """Sets the optimizer's learning rate to ``schedule(epoch, current_rate)`` before each epoch."""

    def __init__(self, schedule):
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        optimizer.learning_rate = float(self.schedule(epoch, optimizer.learning_rate))
