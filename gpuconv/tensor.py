"""A small reverse-mode autograd: ``Tensor`` plus one ``Function`` class per op.

Each op is a ``Function`` subclass with ``forward(ctx, *arrays, **params)`` and
``backward(ctx, grad)`` side by side; ``forward`` keeps what the backward needs
with ``ctx.save_for_backward``. ``Tensor.backward`` runs the graph in reverse
topological order and accumulates gradients with ``+``, so a tensor used twice
receives both contributions. Gradients are stored on leaves (tensors created by
the user with ``requires_grad=True``) and add up across ``backward`` calls.

Arrays are NumPy arrays (CuPy arrays once a GPU backend is active); the generic
ops here use the array's own module, so they are written once for both.

In-place changes: every Tensor has a version, bumped whenever its array is
replaced or written through the Tensor (``t.data = ...``, ``t.data -= ...``,
``t[...] = ...``, optimizer steps, ``load_weights``). An op records the versions
of the tensors whose arrays it saved for its backward pass, and the backward pass
refuses to run on a tensor changed since, as PyTorch does. Writing into the raw
array (``t.data[...] = v``, or into the NumPy array a Tensor wraps) bypasses the
version, as PyTorch's ``.data`` does.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import operator
import weakref
from typing import Any

import numpy as np

from gpuconv._types import ArrayLike
from gpuconv.backend import array_module, optional_kernel, to_host

# Per thread (and async task): a new thread starts with recording on, whatever other threads do.
_grad_enabled = contextvars.ContextVar("gpuconv_grad_enabled", default=True)


@contextlib.contextmanager
def no_grad():
    """Run ops without recording a graph (inference), in this thread only."""
    token = _grad_enabled.set(False)
    try:
        yield
    finally:
        _grad_enabled.reset(token)


def is_grad_enabled() -> bool:
    """Whether ops in this thread record a graph now."""
    return _grad_enabled.get()


class Function:
    """Base of every op. ``apply`` runs ``forward`` on arrays and links the result into the graph."""

    def __init__(self, inputs):
        self.inputs = inputs
        self.needs_input_grad = tuple(isinstance(t, Tensor) and t.requires_grad for t in inputs)
        self.saved_tensors = ()
        self._watched = ()

    def save_for_backward(self, *arrays):
        self.saved_tensors = arrays

    @classmethod
    def apply(cls, *inputs, **params):
        """``inputs`` are Tensors (or None for an absent optional input); ``params`` are plain values."""
        ctx = cls(inputs)
        arrays = [t.data if isinstance(t, Tensor) else t for t in inputs]
        out = Tensor(cls.forward(ctx, *arrays, **params))
        if _grad_enabled.get() and any(ctx.needs_input_grad):
            out.requires_grad = True
            out._ctx = ctx
            ctx._watch(out)
        return out

    def _watch(self, out):
        """Remember the version of each tensor whose array the backward pass will read (inputs, output)."""
        saved = {id(a) for a in self.saved_tensors if a is not None}
        names = _input_names(type(self))
        watched = [(name, t, t._version) for name, t in zip(names, self.inputs)
                   if isinstance(t, Tensor) and id(t.data) in saved]
        if id(out.data) in saved:
            watched.append(("output", weakref.ref(out), out._version))
        self._watched = tuple(watched)

    def _check_unchanged(self):
        """Refuse to differentiate through a tensor whose array changed in place after the forward pass."""
        for name, ref, version in self._watched:
            tensor = ref() if isinstance(ref, weakref.ref) else ref
            if tensor is not None and tensor._version != version:
                raise RuntimeError(
                    f"{type(self).__name__}'s backward needs its {name} {tensor!r} as it was in the forward "
                    f"pass, but it was modified in place since (version {tensor._version}, expected {version}); "
                    f"run the forward pass again after changing it, or change a copy")

    @staticmethod
    def forward(ctx, *arrays, **params):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        """Return one gradient (or None) per input of ``forward``."""
        raise NotImplementedError


def _input_names(cls, _cache={}):
    """Names of ``cls.forward``'s array inputs (after ctx), for messages."""
    if cls not in _cache:
        _cache[cls] = tuple(inspect.signature(cls.forward).parameters)[1:]
    return _cache[cls]


class Tensor:
    """An array with an optional gradient.

    ``Tensor(data, requires_grad=False)``: ``data`` is kept as given when it is a
    NumPy/CuPy array; Python numbers and lists become arrays, with floats as
    float32 (the library's working precision).
    """

    __array_priority__ = 1000  # make ndarray <op> Tensor defer to Tensor

    def __init__(self, data: ArrayLike, requires_grad: bool = False) -> None:
        if isinstance(data, Tensor):
            data = data.data
        elif isinstance(data, np.generic):  # NumPy scalars (e.g. from a full sum) keep their dtype
            data = np.asarray(data)
        elif isinstance(data, np.ndarray) or type(data).__module__.startswith("cupy"):
            pass
        elif hasattr(data, "__dlpack__") and hasattr(data, "__dlpack_device__"):
            data = _from_dlpack(data)  # PyTorch, JAX, ...: zero-copy, dtype kept
        elif hasattr(data, "__cuda_array_interface__"):
            pass  # another GPU array: kept as given (the CPU backend refuses it by name)
        else:  # Python numbers and lists: floats become the working precision
            data = np.asarray(data)
            if data.dtype == np.float64:
                data = data.astype(np.float32)
        if requires_grad and data.dtype.kind != "f":
            raise TypeError(f"requires_grad needs a floating-point tensor, got dtype {data.dtype}")
        self._data = data
        self._version = 0
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None

    @property
    def data(self):
        """The array (NumPy, or CuPy on a GPU backend)."""
        return self._data

    @data.setter
    def data(self, array):
        self._data = array
        self._version += 1  # also for ``t.data -= g``, which assigns the updated array back

    # ----------------------------------------------------------------- array protocols
    def __array__(self, dtype=None, copy=None):
        """``np.asarray(tensor)``: the host array itself (no copy) when it can; a GPU tensor raises."""
        if not isinstance(self._data, np.ndarray):
            raise TypeError(f"{self!r} lives on the GPU: NumPy cannot read it in place; call .numpy() to copy it "
                            f"to the host")
        if copy is False and dtype is not None and np.dtype(dtype) != self._data.dtype:
            raise ValueError(f"np.asarray(copy=False) cannot convert {self!r} to {np.dtype(dtype)} without a copy")
        array = self._data if dtype is None else self._data.astype(dtype, copy=False)
        return array.copy() if copy else array

    def __dlpack__(self, *args, **kwargs):
        """DLPack export of the array (zero-copy): ``torch.from_dlpack(tensor)``, ``np.from_dlpack(tensor)``."""
        return self._data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._data.__dlpack_device__()

    @property
    def __cuda_array_interface__(self):
        """The GPU array's interface (GPU tensors only; a host tensor has none)."""
        try:
            return self._data.__cuda_array_interface__
        except AttributeError:
            raise AttributeError(f"{self!r} lives on the host: no __cuda_array_interface__") from None

    def __setitem__(self, index, value):
        """Write into the array in place (a new version: a pending backward pass through it will refuse)."""
        self._data[index] = value.data if isinstance(value, Tensor) else value
        self._version += 1

    # ----------------------------------------------------------------- properties
    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)
    ndim = property(lambda self: self.data.ndim)
    size = property(lambda self: int(self.data.size))

    def numpy(self) -> np.ndarray:
        """The data as a host NumPy array."""
        return to_host(self.data)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{grad})"

    # ----------------------------------------------------------------- autograd
    def backward(self, grad: ArrayLike | None = None) -> None:
        """Accumulate d(self)/d(leaf) * grad into every leaf's ``.grad``.

        ``grad`` defaults to 1 for a single-element tensor.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        xp = array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise ValueError(f"grad must be given for a non-scalar tensor of shape {self.shape}")
            grad = xp.ones_like(self.data)
        grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
        if grad.shape != self.data.shape:
            raise ValueError(f"grad has shape {grad.shape}, expected {self.shape}")

        grads = {id(self): grad}
        for node in reversed(self._topological_order()):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if g.dtype != node.dtype:  # a float64 operand upstream must not retype this tensor's gradient
                g = g.astype(node.dtype)
            if node._ctx is None:
                node.grad = g if node.grad is None else node.grad + g
                continue
            node._ctx._check_unchanged()
            input_grads = type(node._ctx).backward(node._ctx, g)
            for parent, needs, pg in zip(node._ctx.inputs, node._ctx.needs_input_grad, input_grads):
                if needs and pg is not None:
                    key = id(parent)
                    grads[key] = pg if key not in grads else grads[key] + pg

    def _topological_order(self):
        order, visited, stack = [], set(), [(self, False)]
        while stack:  # iterative DFS: deep graphs do not hit the recursion limit
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            if node._ctx is not None:
                stack.extend((p, False) for p in node._ctx.inputs
                             if isinstance(p, Tensor) and p.requires_grad and id(p) not in visited)
        return order

    # ----------------------------------------------------------------- arithmetic
    def _lift(self, other):
        if isinstance(other, Tensor):
            return other
        xp = array_module(self.data)
        return Tensor(xp.asarray(other, dtype=self.dtype))

    def __add__(self, other): return Add.apply(self, self._lift(other))
    def __radd__(self, other): return Add.apply(self._lift(other), self)
    def __sub__(self, other): return Add.apply(self, Neg.apply(self._lift(other)))
    def __rsub__(self, other): return Add.apply(self._lift(other), Neg.apply(self))
    def __neg__(self): return Neg.apply(self)
    def __mul__(self, other): return Mul.apply(self, self._lift(other))
    def __rmul__(self, other): return Mul.apply(self._lift(other), self)
    def __truediv__(self, other): return Div.apply(self, self._lift(other))
    def __rtruediv__(self, other): return Div.apply(self._lift(other), self)
    def __matmul__(self, other): return MatMul.apply(self, self._lift(other))
    def __rmatmul__(self, other): return MatMul.apply(self._lift(other), self)

    def reshape(self, *shape) -> Tensor:
        dims = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return Reshape.apply(self, shape=tuple(dims))

    def transpose(self, *axes: Any) -> Tensor:
        """Permute the axes (reversed when none are given); negative axes count from the end."""
        axes = tuple(axes[0]) if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        if not axes:
            axes = tuple(range(self.ndim))[::-1]
        if not (len(axes) == self.ndim and all(isinstance(a, (int, np.integer)) and not isinstance(a, bool)
                                               and -self.ndim <= a < self.ndim for a in axes)):
            raise ValueError(f"axes must be a permutation of the {self.ndim} axes of a tensor of shape "
                             f"{self.shape} (negative axes count from the end), got {tuple(axes)}")
        axes = tuple(int(a) % self.ndim for a in axes)
        if len(set(axes)) != self.ndim:
            raise ValueError(f"axes must be a permutation of the {self.ndim} axes of a tensor of shape "
                             f"{self.shape}, got {axes} (repeated)")
        return Transpose.apply(self, axes=axes)

    @property
    def T(self):
        return self.transpose()

    def sum(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        return Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis: int | tuple[int, ...] | None = None, keepdims: bool = False) -> Tensor:
        axes = range(self.ndim) if axis is None else (axis,) if isinstance(axis, int) else axis
        count = int(np.prod([self.shape[a] for a in axes]))
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / count)


_DLPACK_CPU, _DLPACK_CUDA = 1, 2


def _from_dlpack(obj):
    """An array of NumPy (host) or CuPy (CUDA) sharing ``obj``'s memory, through DLPack."""
    if getattr(obj, "requires_grad", False):
        raise TypeError(f"{type(obj).__module__}.{type(obj).__name__} requires grad, so it cannot be shared; "
                        f"pass tensor.detach() (gpuconv keeps its own graph)")
    device = obj.__dlpack_device__()[0]
    if device == _DLPACK_CPU:
        return np.from_dlpack(obj)
    if device == _DLPACK_CUDA:
        import cupy  # GPU arrays are CuPy arrays in gpuconv
        return cupy.from_dlpack(obj)
    raise TypeError(f"arrays on DLPack device type {device} are not supported (only CPU and CUDA)")


def from_dlpack(obj: Any, requires_grad: bool = False) -> Tensor:
    """A Tensor sharing the memory of any DLPack exporter (PyTorch, JAX, NumPy, CuPy), dtype kept, no copy."""
    return Tensor(_from_dlpack(obj), requires_grad=requires_grad)


def as_tensor(value: ArrayLike, name: str = "input") -> Tensor:
    """A Tensor as is; an array or number wrapped (no copy of arrays). ``name`` is for the error message."""
    if isinstance(value, Tensor):
        return value
    try:
        return Tensor(value)
    except (ValueError, TypeError) as error:  # ragged lists, objects NumPy cannot hold
        raise TypeError(f"{name} must be an array (NumPy, CuPy) or nested lists of numbers; got "
                        f"{type(value).__name__}: {error}") from None


def _unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape`` (undoing NumPy broadcasting)."""
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    grad = grad.sum(axis=tuple(range(extra))) if extra else grad
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.shapes = a.shape, b.shape
        return a + b

    @staticmethod
    def backward(ctx, grad):
        return _unbroadcast(grad, ctx.shapes[0]), _unbroadcast(grad, ctx.shapes[1])


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, grad):
        return (-grad,)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return _unbroadcast(grad * b, a.shape), _unbroadcast(grad * a, b.shape)


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return _unbroadcast(grad / b, a.shape), _unbroadcast(-grad * a / (b * b), b.shape)


class MatMul(Function):
    """(..., m, k) @ (..., k, n); both operands at least 2-D."""

    @staticmethod
    def forward(ctx, a, b):
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul needs operands of at least 2 dimensions, got shapes {a.shape} and {b.shape}")
        ctx.save_for_backward(a, b)
        ctx.matmul = optional_kernel("matmul", a) or operator.matmul  # the CPU's splits large products over its cores
        return ctx.matmul(a, b)

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        return (_unbroadcast(ctx.matmul(grad, b.swapaxes(-1, -2)), a.shape),
                _unbroadcast(ctx.matmul(a.swapaxes(-1, -2), grad), b.shape))


class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.in_shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, grad):
        return (grad.reshape(ctx.in_shape),)


class Transpose(Function):
    @staticmethod
    def forward(ctx, a, axes):
        ctx.axes = axes
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, grad):
        return (grad.transpose(tuple(np.argsort(ctx.axes))),)


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis, keepdims):
        ctx.in_shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        return a.sum(axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        xp = array_module(grad)
        if not ctx.keepdims and ctx.axis is not None:
            axes = (ctx.axis,) if isinstance(ctx.axis, int) else ctx.axis
            grad = xp.expand_dims(grad, tuple(a % len(ctx.in_shape) for a in axes))
        return (xp.broadcast_to(grad, ctx.in_shape).copy(),)
