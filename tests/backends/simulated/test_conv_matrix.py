"""conv2d forward and gradients on the simulated GPU backend (tiny tiles) over the full case matrix."""
import numpy as np
import pytest

import reference as ref
from cases import SIMULATED_CASES as CASES, case_arrays, conv_case
from gpu_under_test import BACKEND, conv_with_grads


@pytest.mark.parametrize("geometry,stride,padding,dilation", CASES)
def test_conv2d_forward_and_gradients(rng, geometry, stride, padding, dilation):
    x, w, b = case_arrays(rng, geometry)
    stride_hw, pads, dilation_hw = conv_case(geometry, stride, padding, dilation)
    y_ref = ref.conv2d(x, w, b, stride_hw, pads, dilation_hw)
    dy = rng.standard_normal(y_ref.shape)
    got = conv_with_grads(BACKEND, x, w, b, dy, stride, padding, dilation)
    expected = (y_ref,) + ref.conv2d_grads(x, w, dy, stride_hw, pads, dilation_hw)
    on_cpu = conv_with_grads("cpu", x, w, b, dy, stride, padding, dilation)
    for name, g, e, c in zip(("y", "dx", "dw", "db"), got, expected, on_cpu):
        np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-10, err_msg=f"{name} vs reference")
        np.testing.assert_allclose(g, c, rtol=1e-10, atol=1e-10, err_msg=f"{name} vs cpu backend")
