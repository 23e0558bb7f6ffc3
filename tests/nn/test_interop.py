"""Weights to and from PyTorch (skipped without torch) and Keras's weight-list layout."""
import numpy as np
import pytest

import gpuconv
from gpuconv import interop
from gpuconv.layers import BatchNormalization, Conv2D, Dense, Flatten, MaxPool2D


def seeds_mnist(data_format="channels_first", batch_norm=True):
    shape = (1, 28, 28) if data_format == "channels_first" else (28, 28, 1)
    axis = 1 if data_format == "channels_first" else -1
    layers = [Conv2D(32, 3, padding="same", activation="relu", data_format=data_format, input_shape=shape),
              MaxPool2D(2, data_format=data_format),
              Conv2D(64, 3, padding="same", activation="relu", data_format=data_format)]
    layers += [BatchNormalization(axis=axis)] if batch_norm else []
    layers += [MaxPool2D(2, data_format=data_format), Flatten(), Dense(128, activation="relu"),
               Dense(10, activation="softmax")]
    return gpuconv.Sequential(layers)


def perturbed(model, rng):
    """Random weights everywhere, batch-norm statistics included (so nothing passes by being 0 or 1)."""
    weights = []
    for name, w in zip(model.weight_arrays(), model.get_weights()):
        noise = 0.05 * rng.standard_normal(w.shape)
        weights.append((np.abs(w + noise) if name.endswith("variance") else w + noise).astype(w.dtype))
    model.set_weights(weights)
    return model


def torch_twin(torch, batch_norm=True):
    nn = torch.nn
    modules = [nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU()]
    modules += [nn.BatchNorm2d(64, eps=1e-3)] if batch_norm else []
    modules += [nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10), nn.Softmax(dim=1)]
    return nn.Sequential(*modules).eval()


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_torch_both_ways_give_the_same_predictions(rng, data_format):
    torch = pytest.importorskip("torch")
    gpuconv.set_seed(0)
    ours = perturbed(seeds_mnist(data_format), rng)
    x = rng.random((8, 1, 28, 28)).astype(np.float32)
    ours_x = x if data_format == "channels_first" else x.transpose(0, 2, 3, 1)
    twin = torch_twin(torch)
    twin.load_state_dict(interop.to_torch_state_dict(ours, twin))
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours.predict(ours_x), theirs, rtol=1e-5, atol=1e-5)

    # and back: fresh torch weights into a fresh gpuconv model
    torch.manual_seed(1)
    other = torch_twin(torch)
    with torch.no_grad():
        for name, buffer in other.named_buffers():
            if "running" in name:
                buffer.uniform_(0.5, 1.5)
        theirs = other(torch.from_numpy(x)).numpy()
    back = seeds_mnist(data_format)
    interop.from_torch_state_dict(back, other.state_dict())
    np.testing.assert_allclose(back.predict(ours_x), theirs, rtol=1e-5, atol=1e-5)
    named = interop.to_torch_state_dict(back)  # without a module: keys from the layer names
    assert list(named)[:2] == ["conv2d.weight", "conv2d.bias"] and "batch_normalization.running_var" in named


def test_torch_mismatches_are_refused_before_any_change(rng):
    torch = pytest.importorskip("torch")
    ours = seeds_mnist()
    before = ours.get_weights()
    with pytest.raises(ValueError, match="has 4 modules with weights.*5 layers with weights"):
        interop.from_torch_state_dict(ours, torch_twin(torch, batch_norm=False).state_dict())
    state = torch_twin(torch).state_dict()
    state["8.weight"] = torch.zeros(128, 3000)
    with pytest.raises(ValueError, match=r"weights for dense/kernel must be of shape \(128, 3136\)"):
        interop.from_torch_state_dict(ours, state)
    assert all(np.array_equal(a, b) for a, b in zip(before, ours.get_weights()))


def test_keras_weight_list_layout_and_round_trip(rng):
    """A channels-last model's Keras list is its own weights with kernels HWIO; a channels-first model
    given that list predicts the same on transposed images (the dense rows reordered CHW <-> HWC)."""
    gpuconv.set_seed(0)
    last = perturbed(seeds_mnist("channels_last"), rng)
    keras_list = interop.to_keras_weights(last)
    own = last.get_weights()
    assert [w.shape for w in keras_list[:2]] == [(3, 3, 1, 32), (32,)]
    np.testing.assert_array_equal(keras_list[0], own[0].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(keras_list[-4], own[-4])  # channels-last Flatten is already Keras's order
    first = seeds_mnist("channels_first")
    interop.from_keras_weights(first, keras_list)
    x = rng.random((6, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(first.predict(x.transpose(0, 3, 1, 2)), last.predict(x), rtol=1e-5, atol=1e-6)
    for a, b in zip(interop.to_keras_weights(first), keras_list):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="1 arrays more than the model"):
        interop.from_keras_weights(first, keras_list + [np.zeros(3)])
