"""Backend choice and dispatch: the one place where ops meet kernels.

Every backend is a module under ``gpuconv.kernels`` providing the names in
``KERNELS`` (plus ``name``, ``xp``, the array module, and ``check_array``). Ops
call ``kernels()`` and never look at which backend they got.

The backend is chosen, most specific first, by ``use_backend(...)`` (a context
manager, per block of code and thread), ``set_backend(...)`` (per process), or the
environment variable ``GPUCONV_BACKEND``; the default is ``'auto'``.
"""
import contextlib
import contextvars
import importlib
import os
import sys

KERNELS = (
    "conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias",
    "pool2d_forward", "pool2d_backward",
    "relu_forward", "relu_backward",
)

# Implemented backends, and GPU backends in the order 'auto' prefers them.
_MODULES = {"cpu": "gpuconv.kernels.cpu", "numba": "gpuconv.kernels.numba_cuda",
            "cupy": "gpuconv.kernels.cupy_rawkernel"}
_GPU_PREFERENCE = ("cupy", "numba")
BACKENDS = ("auto",) + tuple(_MODULES)
ENV_VAR = "GPUCONV_BACKEND"

_process_choice = None
_block_choice = contextvars.ContextVar("gpuconv_backend", default=None)
_auto_choice = None
_loaded = {}


def _checked(name, source="backend"):
    if not isinstance(name, str):
        raise TypeError(f"{source} must be a string, one of {BACKENDS}; got {name!r}")
    key = name.strip().lower()
    if key in BACKENDS:
        return key
    raise ValueError(f"{source} must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}")


def set_backend(name):
    """Choose the backend for this process: 'auto', 'cpu', 'numba' (Numba CUDA) or 'cupy' (CUDA C via CuPy).

    A GPU backend is loaded here, so a missing GPU is reported at once.
    """
    global _process_choice
    choice = _checked(name)
    if choice != "auto":
        _module(choice)
    _process_choice = choice


@contextlib.contextmanager
def use_backend(name):
    """Use a backend inside a ``with`` block (restored on exit; per thread and async task)."""
    choice = _checked(name)
    if choice != "auto":
        _module(choice)
    token = _block_choice.set(choice)
    try:
        yield get_backend()
    finally:
        _block_choice.reset(token)


def get_backend():
    """Name of the concrete backend ops will run on now ('auto' resolved)."""
    choice = _block_choice.get() or _process_choice
    if choice is None:
        env = os.environ.get(ENV_VAR)
        choice = _checked(env, f"environment variable {ENV_VAR}") if env else "auto"
    return _resolve_auto() if choice == "auto" else choice


def kernels():
    """The kernel module of the current backend."""
    return _module(get_backend())


def _module(name):
    module = _loaded.get(name)
    if module is None:
        module = _loaded[name] = importlib.import_module(_MODULES[name])
    return module


def session():
    """Context for a block of many ops (a training loop): the backend's ``session()`` if it has one."""
    return getattr(kernels(), "session", contextlib.nullcontext)()


def _resolve_auto():
    """Pick the first GPU backend that loads when a CUDA GPU is present, else the CPU; say so once."""
    global _auto_choice
    if _auto_choice is None:
        _auto_choice, why = "cpu", "no CUDA GPU found"
        if _cuda_gpu_present():
            failures = []
            for name in _GPU_PREFERENCE:
                try:
                    _module(name)
                except RuntimeError as error:  # e.g. CuPy or numba-cuda not installed
                    failures.append(f"{name}: {error}")
                    continue
                _auto_choice, why = name, "a CUDA GPU is present"
                break
            else:
                why = "a CUDA GPU is present but no GPU backend loads: " + "; ".join(failures)
        print(f"gpuconv: backend 'auto' chose {_auto_choice!r} ({why})", file=sys.stderr)
    return _auto_choice


def _cuda_simulator():
    """Whether Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1 before numba was imported)."""
    from numba import config
    return bool(config.ENABLE_CUDASIM)


def _simulated_gpu(name):
    """Whether GPU backend ``name`` runs on a host stand-in for tests: Numba's simulator or the CUDA C emulator."""
    if name == "numba":
        return _cuda_simulator()
    return name == "cupy" and os.environ.get("GPUCONV_CUDA_EMULATOR") == "1"


def _cuda_gpu_present():
    """A real CUDA GPU, seen by numba-cuda or CuPy.

    Under Numba's CUDA simulator or the CUDA C emulator (test set-ups) this is
    False: 'auto' never picks a simulated GPU.
    """
    if _simulated_gpu("numba") or _simulated_gpu("cupy"):
        return False
    try:
        from numba import cuda
        if cuda.is_available():
            return True
    except Exception:  # no numba-cuda, no driver
        pass
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver: no usable GPU
        return False


def array_module(array):
    """NumPy for host arrays, CuPy for CuPy arrays (imported only when one is seen)."""
    if type(array).__module__.startswith("cupy"):
        import cupy
        return cupy
    import numpy
    return numpy
