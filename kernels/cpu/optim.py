"""CPU optimizer updates fused into a few loops per parameter (NumPy took ten passes over each array)."""
import numpy as np
from numba import njit

from .runtime import JIT


@njit(**JIT)
def _adam(parameter, grad, m, v, beta_1, beta_2, epsilon, step):
    # one array written per loop, all in the arrays' dtype: the form that vectorizes (one loop writing
    # three arrays ran scalar, 2.5 ns per element)
    t = parameter.dtype.type
    b1, b2, eps, size = t(beta_1), t(beta_2), t(epsilon), t(step)
    for i in range(m.size):
        m[i] = m[i] * b1 + grad[i] * (t(1) - b1)
    for i in range(v.size):
        v[i] = v[i] * b2 + grad[i] * grad[i] * (t(1) - b2)
    for i in range(parameter.size):
        parameter[i] -= m[i] / (np.sqrt(v[i]) + eps) * size


def adam_update(parameter, grad, m, v, beta_1, beta_2, epsilon, step):
    """One Adam step in place on C-contiguous arrays of one dtype: m and v (the moment estimates) first,
    then ``parameter -= m / (sqrt(v) + epsilon) * step``, ``step`` the bias-corrected learning rate."""
    _adam(parameter.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1), beta_1, beta_2, epsilon, step)
