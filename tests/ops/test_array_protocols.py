"""Tensors speak the array protocols: __array__, DLPack both ways, zero-copy; PyTorch tensors keep their dtype."""
import numpy as np
import pytest

import gpuconv
import gpuconv.functional as F
from gpuconv import Tensor


def test_numpy_reads_a_host_tensor_in_place():
    data = np.arange(6.0).reshape(2, 3)
    tensor = Tensor(data)
    view = np.asarray(tensor)
    assert view is data and view.dtype == np.float64  # not a 0-d object array, no copy
    assert np.asarray(tensor, dtype=np.float32).dtype == np.float32
    copied = np.array(tensor)
    assert not np.shares_memory(copied, data)
    np.testing.assert_array_equal(np.add(tensor, 1), data + 1)
    leaf = Tensor(data, requires_grad=True)
    product = np.ones(3) * leaf  # an ndarray on the left still defers to the Tensor: the graph is kept
    assert isinstance(product, Tensor) and product.requires_grad
    with pytest.raises(AttributeError, match="lives on the host"):
        tensor.__cuda_array_interface__
    assert not hasattr(tensor, "__cuda_array_interface__")


def test_dlpack_both_ways_without_copies():
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    exported = np.from_dlpack(Tensor(data))
    assert np.shares_memory(exported, data) and exported.dtype == np.float32
    imported = gpuconv.from_dlpack(data)
    assert isinstance(imported, Tensor) and np.shares_memory(imported.data, data)
    t = gpuconv.from_dlpack(np.ones(3), requires_grad=True)
    F.relu(t).sum().backward()
    np.testing.assert_array_equal(t.grad, np.ones(3))


def test_pytorch_tensors_both_ways():
    torch = pytest.importorskip("torch")
    x64 = torch.arange(8, dtype=torch.float64).reshape(1, 2, 2, 2)
    tensor = Tensor(x64)
    assert tensor.dtype == np.float64 and np.shares_memory(tensor.data, x64.numpy())  # float64 stays float64
    y = F.relu(x64 - 3)
    assert y.dtype == np.float64
    back = torch.from_dlpack(Tensor(np.ones((2, 2), np.float32)))
    assert back.dtype == torch.float32 and torch.as_tensor(np.asarray(Tensor(np.ones(2)))).shape == (2,)
    with pytest.raises(TypeError, match=r"x must be an array .*requires grad.*detach\(\)"):
        F.relu(torch.ones(3, requires_grad=True))
