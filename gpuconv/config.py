"""Library-wide defaults, set Keras's way.

The image data format is the layout spatial layers assume when they are not given ``data_format``:
``'channels_first'`` (NCHW, gpuconv's default and the kernels' native layout) or ``'channels_last'``
(NHWC, Keras's default). Set it before building layers::

    gpuconv.config.set_image_data_format("channels_last")   # or GPUCONV_IMAGE_DATA_FORMAT=channels_last

A layer reads the default when it is constructed, as in Keras.

``floatx`` is the dtype of the weights layers create: 'float32' (default) or 'float64'
(``set_floatx('float64')``, Keras's name; for exact comparisons, e.g. gradient checks).
"""
import os

IMAGE_DATA_FORMATS = ("channels_first", "channels_last")
ENVIRONMENT_VARIABLE = "GPUCONV_IMAGE_DATA_FORMAT"

_image_data_format = None  # None: not set in this process, read the environment


def check_data_format(data_format, argument="data_format"):
    """``data_format`` itself when it names a layout; a ValueError naming ``argument`` otherwise."""
    if not isinstance(data_format, str) or data_format not in IMAGE_DATA_FORMATS:
        raise ValueError(f"{argument} must be 'channels_first' (NCHW) or 'channels_last' (NHWC), got {data_format!r}")
    return data_format


def image_data_format() -> str:
    """The default layout of images: 'channels_first' unless set here or by GPUCONV_IMAGE_DATA_FORMAT."""
    if _image_data_format is not None:
        return _image_data_format
    return check_data_format(os.environ.get(ENVIRONMENT_VARIABLE, "channels_first").strip().lower(),
                             f"the environment variable {ENVIRONMENT_VARIABLE}")


def set_image_data_format(data_format: str) -> None:
    """Make ``data_format`` ('channels_first' or 'channels_last') the default of layers built from now on."""
    global _image_data_format
    _image_data_format = check_data_format(data_format)


FLOAT_TYPES = ("float32", "float64")
_floatx = "float32"


def floatx() -> str:
    """The dtype of new layers' weights: 'float32' unless ``set_floatx`` chose 'float64'."""
    return _floatx


def set_floatx(dtype: str) -> None:
    """Make ``dtype`` ('float32' or 'float64') the dtype of the weights of layers built from now on."""
    global _floatx
    if dtype not in FLOAT_TYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    _floatx = dtype
