"""Keras's namespace over gpuconv, so Keras code runs with only its import changed::

    import gpuconv as tf                    # was: import tensorflow as tf
    gpuconv.config.set_image_data_format("channels_last")   # Keras's default layout
    model = tf.keras.models.Sequential([tf.keras.layers.Conv2D(32, (3, 3), activation="relu",
                                                               input_shape=(28, 28, 1)), ...])

or ``from gpuconv import keras``, or ``from gpuconv.keras.layers import Conv2D`` (Keras's
``from keras.layers import Conv2D``). What differs from Keras is listed in the README.
"""
import sys

from gpuconv import config, models
from gpuconv.models import Sequential, load_model
from gpuconv.nn import callbacks, layers, losses, optimizers
from gpuconv.nn.layers import Input

for _name, _module in (("callbacks", callbacks), ("config", config), ("layers", layers), ("losses", losses),
                      ("models", models), ("optimizers", optimizers)):
    sys.modules[f"{__name__}.{_name}"] = _module  # `from gpuconv.keras.layers import ...` imports them
del _name, _module

__all__ = ["Input", "Sequential", "callbacks", "config", "layers", "load_model", "losses", "models", "optimizers"]
