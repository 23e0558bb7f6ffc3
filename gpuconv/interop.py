"""Weights to and from PyTorch and Keras models of the same architecture.

    state = gpuconv.interop.to_torch_state_dict(model, torch_model)   # keys named as torch_model's
    torch_model.load_state_dict(state)
    gpuconv.interop.from_torch_state_dict(model, torch_model.state_dict())
    keras_model.set_weights(gpuconv.interop.to_keras_weights(model))
    gpuconv.interop.from_keras_weights(model, keras_model.get_weights())

Layers are paired in order: the k-th gpuconv layer with weights (Conv2D, Dense, BatchNormalization) with
the k-th torch module holding parameters or buffers (Conv2d, Linear, BatchNorm*d), or with Keras's k-th
group of weights. Layouts are converted: conv kernels are KCRS here and in PyTorch, HWIO in Keras; dense
kernels are (inputs, units) here and in Keras, (units, inputs) in PyTorch. A Dense layer after Flatten
of images gets its input rows reordered between the layouts' flattening orders: (C, H, W) for
channels_first models and PyTorch, (H, W, C) for channels_last models and Keras. Batch norm maps
gamma/beta/moving mean/moving variance to weight/bias/running_mean/running_var (the modules' momentum and
epsilon are settings, not weights: PyTorch's momentum is 1 - Keras's).
"""
import numpy as np

from gpuconv import backend, config
from gpuconv.nn.layers import BatchNormalization, Conv2D, Dense, Flatten, _Spatial

TORCH_NAMES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
               "moving_mean": "running_mean", "moving_variance": "running_var"}


def _layers_with_weights(model):
    """[(layer, flatten_shape)]: each layer with weights, and for a Dense fed by Flatten of images, the
    flattened image's (layout, shape) as the model holds it; else None."""
    shapes = model.build()
    inputs = [tuple(model.input_shape)] + [tuple(s) for s in shapes[:-1]]
    layout, flattened, result = config.image_data_format(), None, []
    for layer, shape in zip(model.layers, inputs):
        if isinstance(layer, _Spatial):
            layout = layer.data_format
        if isinstance(layer, Flatten):
            flattened = (layout, shape) if len(shape) == 3 else None
        if layer.weights:
            if not isinstance(layer, (Conv2D, Dense, BatchNormalization)):
                raise ValueError(f"layer {layer.name} ({type(layer).__name__}) has no PyTorch/Keras counterpart")
            result.append((layer, flattened if isinstance(layer, Dense) else None))
            if isinstance(layer, Dense):
                flattened = None
    return result


def _row_order(flattened, target):
    """Index array: rows in ``target`` order ('chw' or 'hwc') = rows in the model's order [index]."""
    layout, shape = flattened
    c, h, w = shape if layout == "channels_first" else (shape[2], shape[0], shape[1])
    chw_of_hwc = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()  # [hwc position] -> chw position
    model_order = "chw" if layout == "channels_first" else "hwc"
    if model_order == target:
        return np.arange(c * h * w)
    if target == "hwc":  # model rows are CHW
        return chw_of_hwc
    return np.argsort(chw_of_hwc)  # model rows are HWC: [chw position] -> hwc position


def _exported(layer, flattened, target):
    """{gpuconv weight name: NumPy array in the target framework's layout}."""
    out = {}
    for key, array in list(layer.weights.items()) + list(layer.state.items()):
        value = backend.to_host(getattr(array, "data", array)).copy()
        if isinstance(layer, Conv2D) and key == "kernel" and target == "hwc":
            value = value.transpose(2, 3, 1, 0)  # KCRS -> HWIO (Keras)
        if isinstance(layer, Dense) and key == "kernel":
            if flattened is not None:
                value = value[_row_order(flattened, target)]
            if target == "chw":
                value = value.T  # (inputs, units) -> (units, inputs) (PyTorch)
        out[key] = np.ascontiguousarray(value)
    return out


def _imported(layer, flattened, source, values):
    """The inverse of ``_exported``: {gpuconv weight name: array in gpuconv's layout}."""
    out, expected = {}, _exported(layer, flattened, source)
    for key, value in values.items():
        value = np.asarray(value)
        if value.shape != expected[key].shape:
            raise ValueError(f"weights for {layer.name}/{key} must be of shape {expected[key].shape} in "
                             f"{'PyTorch' if source == 'chw' else 'Keras'}'s layout, got {value.shape}")
        if isinstance(layer, Conv2D) and key == "kernel" and source == "hwc":
            value = value.transpose(3, 2, 0, 1)
        if isinstance(layer, Dense) and key == "kernel":
            if source == "chw":
                value = value.T
            if flattened is not None:
                order = _row_order(flattened, source)
                restored = np.empty_like(value)
                restored[order] = value
                value = restored
        out[key] = value
    return out


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("gpuconv.interop's PyTorch functions need PyTorch installed (pip install torch)") from None
    return torch


def _torch_groups(state_dict):
    """[(module prefix, {name: tensor})] in the state dict's order, without num_batches_tracked."""
    groups = {}
    for key, value in state_dict.items():
        prefix, _, name = key.rpartition(".")
        if name != "num_batches_tracked":
            groups.setdefault(prefix, {})[name] = value
    return list(groups.items())


def to_torch_state_dict(model, torch_module=None):
    """A PyTorch state dict of the model's weights (CPU tensors). Keys are ``torch_module``'s when it is
    given (its parametrized modules are paired with the model's layers in order), else
    ``'<layer name>.weight'`` and so on. Batch norms also get ``num_batches_tracked`` (0)."""
    torch = _torch()
    layers = _layers_with_weights(model)
    if torch_module is not None:
        template = torch_module.state_dict()
        groups = _torch_groups(template)
        if len(groups) != len(layers):
            raise ValueError(f"the torch module has {len(groups)} modules with weights "
                             f"({', '.join(p for p, _ in groups)}), the model {len(layers)} layers with weights")
        prefixes = [prefix for prefix, _ in groups]
    else:
        template, prefixes = None, [layer.name for layer, _ in layers]
    state = {}
    for (layer, flattened), prefix in zip(layers, prefixes):
        dot = f"{prefix}." if prefix else ""
        for key, value in _exported(layer, flattened, "chw").items():
            state[dot + TORCH_NAMES[key]] = torch.from_numpy(value)
        if isinstance(layer, BatchNormalization):
            state[dot + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    if template is not None:
        wrong = [f"{k}: ours {tuple(state[k].shape)}, torch {tuple(template[k].shape)}" for k in template
                 if k in state and tuple(state[k].shape) != tuple(template[k].shape)]
        if wrong or set(state) != set(template):
            raise ValueError(f"the model does not match the torch module: shapes {wrong}, keys only here "
                             f"{sorted(set(state) - set(template))}, only there {sorted(set(template) - set(state))}")
    return state


def from_torch_state_dict(model, state_dict):
    """Load a PyTorch state dict (from a module of the same architecture) into ``model``; everything is
    checked before any weight is replaced."""
    layers = _layers_with_weights(model)
    groups = _torch_groups(state_dict)
    if len(groups) != len(layers):
        raise ValueError(f"the state dict has {len(groups)} modules with weights ({', '.join(p for p, _ in groups)}), "
                         f"the model {len(layers)} layers with weights")
    weights = []
    for (layer, flattened), (prefix, tensors) in zip(layers, groups):
        names = list(layer.weights) + list(layer.state)
        missing = [TORCH_NAMES[n] for n in names if TORCH_NAMES[n] not in tensors]
        if missing or len(tensors) != len(names):
            raise ValueError(f"module {prefix!r} ({', '.join(tensors)}) does not match layer {layer.name} "
                             f"({type(layer).__name__}: {', '.join(TORCH_NAMES[n] for n in names)})")
        values = {n: tensors[TORCH_NAMES[n]].detach().cpu().numpy() for n in names}
        converted = _imported(layer, flattened, "chw", values)
        weights += [converted[n] for n in names]
    model.set_weights(weights)


def to_keras_weights(model):
    """The model's weights as Keras's ``get_weights()`` list for the same architecture built channels-last:
    conv kernels HWIO, dense kernels after Flatten with rows in (H, W, C) order."""
    return [value for layer, flattened in _layers_with_weights(model)
            for value in _exported(layer, flattened, "hwc").values()]


def from_keras_weights(model, weights):
    """Load a Keras ``get_weights()`` list (channels-last architecture) into ``model``; checked before any
    weight is replaced."""
    weights, converted = list(weights), []
    for layer, flattened in _layers_with_weights(model):
        names = list(layer.weights) + list(layer.state)
        if len(weights) < len(names):
            raise ValueError(f"the Keras weight list ends before layer {layer.name}")
        taken, weights = weights[:len(names)], weights[len(names):]
        values = _imported(layer, flattened, "hwc", dict(zip(names, taken)))
        converted += [values[n] for n in names]
    if weights:
        raise ValueError(f"the Keras weight list has {len(weights)} arrays more than the model")
    model.set_weights(converted)
