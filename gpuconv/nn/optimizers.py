"""Optimizers (Keras semantics), updating parameter arrays in place with their own array module."""
import math

from gpuconv.backend import array_module, optional_kernel


def _slot(slots, name, grad):
    """The per-parameter array ``slots[name]``, zeros like ``grad`` the first time (not ``setdefault``, whose
    default was built, a zeroed array as large as the parameter, on every step)."""
    array = slots.get(name)
    if array is None:
        array = slots[name] = array_module(grad).zeros_like(grad)
    return array


class Optimizer:
    def __init__(self, learning_rate):
        if learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {learning_rate}")
        self.learning_rate = learning_rate
        self.state = {}  # id(parameter) -> per-parameter slots
        self.iterations = 0

    def step(self, parameters):
        """Apply one update to every Tensor in ``parameters`` that has a gradient, then clear the gradients."""
        self.iterations += 1
        for p in parameters:
            if p.grad is not None:
                self.update(p, p.grad, self.state.setdefault(id(p), {}))
                p.grad = None

    def update(self, parameter, grad, slots):
        raise NotImplementedError

    def get_config(self):
        """The constructor arguments (Keras's ``get_config``); the learning rate is the current one."""
        return {key: getattr(self, key) for key in self.config_keys}


class SGD(Optimizer):
    """v = momentum * v - lr * g; p += v  (Nesterov: p += momentum * v - lr * g)."""
    config_keys = ("learning_rate", "momentum", "nesterov")

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum, self.nesterov = momentum, nesterov

    def update(self, parameter, grad, slots):
        if self.momentum == 0:
            parameter.data -= self.learning_rate * grad
            return
        velocity = _slot(slots, "velocity", grad)
        velocity *= self.momentum
        velocity -= self.learning_rate * grad
        parameter.data += self.momentum * velocity - self.learning_rate * grad if self.nesterov else velocity


class Adam(Optimizer):
    """Adam with Keras's defaults and bias correction folded into the step size."""
    config_keys = ("learning_rate", "beta_1", "beta_2", "epsilon")

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self._scratch: dict = {}  # id(parameter) -> a work buffer (not state: never saved)

    def update(self, parameter, grad, slots):
        xp = array_module(grad)
        m, v = _slot(slots, "m", grad), _slot(slots, "v", grad)
        t = self.iterations
        step = self.learning_rate * math.sqrt(1 - self.beta_2 ** t) / (1 - self.beta_1 ** t)
        fused = optional_kernel("adam_update", grad)
        arrays = (parameter.data, grad, m, v)
        if fused is not None and all(a.dtype == grad.dtype and a.flags.c_contiguous for a in arrays):
            fused(*arrays, self.beta_1, self.beta_2, self.epsilon, step)  # one pass instead of ten
            parameter.data = parameter.data  # changed in place: a new version, as ``-=`` below gives
            return
        # in place through one reused buffer: a step allocated five temporaries per parameter before
        work = self._scratch.get(id(parameter))
        if work is None or work.shape != grad.shape or work.dtype != grad.dtype:
            work = self._scratch[id(parameter)] = xp.empty_like(grad)
        m *= self.beta_1
        xp.multiply(grad, 1 - self.beta_1, out=work)
        m += work
        v *= self.beta_2
        xp.multiply(grad, grad, out=work)
        work *= 1 - self.beta_2
        v += work
        xp.sqrt(v, out=work)
        work += self.epsilon
        xp.divide(m, work, out=work)
        work *= step
        parameter.data -= work.astype(parameter.dtype, copy=False)


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def get(optimizer):
    """An optimizer instance from itself or its name ('sgd', 'adam') with default settings."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()]()
    raise ValueError(f"optimizer must be an Optimizer or one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
