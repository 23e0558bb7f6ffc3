"""Backend choice and dispatch: the one place where ops meet kernels.

Every backend is a module ``gpuconv.kernels.<package>.backend`` that fulfils the
kernel contract of ``gpuconv.kernels.api`` (eight kernels plus ``name``, ``xp``,
the array module, and ``check_array``). Ops call ``kernels()`` and never look at
which backend they got; layers and models move arrays with ``xp()``,
``to_device()`` and ``to_host()``.

The backend is chosen, most specific first, by ``use_backend(...)`` (a context
manager, per block of code and thread), ``set_backend(...)`` (per process), or the
environment variable ``GPUCONV_BACKEND``; the default is ``'auto'``.

Public API: ``set_backend``, ``use_backend``, ``get_backend``, ``kernels``,
``load``, ``session``, ``serial``, ``xp``, ``to_device``, ``to_host``, ``array_module``,
``gpu_present``, ``is_simulated``; ``IMPLEMENTED``, ``BACKENDS``, ``KERNELS``.
"""
import contextlib
import contextvars
import importlib
import logging
import os

import numpy as np

from gpuconv.kernels import api
from gpuconv.kernels.api import KERNELS  # noqa: F401  (the kernel names, for callers)

logger = logging.getLogger("gpuconv")

# Implemented backends: name -> the module that fulfils the kernel contract.
_MODULES = {"cpu": "gpuconv.kernels.cpu.backend", "numba": "gpuconv.kernels.numba_cuda.backend",
            "cupy": "gpuconv.kernels.cuda_c.backend"}
IMPLEMENTED = tuple(_MODULES)
GPU_BACKENDS = ("cupy", "numba")  # in the order 'auto' prefers them
BACKENDS = ("auto",) + IMPLEMENTED
ENV_VAR = "GPUCONV_BACKEND"
EMULATOR_ENV = "GPUCONV_CUDA_EMULATOR"

_process_choice = None
_block_choice = contextvars.ContextVar("gpuconv_backend", default=None)
_auto_choice = None
_loaded: dict = {}


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
        load(choice)
    _process_choice = choice


@contextlib.contextmanager
def use_backend(name):
    """Use a backend inside a ``with`` block (restored on exit; per thread and async task)."""
    choice = _checked(name)
    if choice != "auto":
        load(choice)
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
    return load(get_backend())


def load(name):
    """The kernel module of backend ``name`` (one of ``IMPLEMENTED``), imported and checked on first use.

    Raises RuntimeError when the backend cannot run here (no GPU, CuPy missing), saying why.
    """
    module = _loaded.get(name)
    if module is None:
        if name not in _MODULES:
            raise ValueError(f"backend must be one of {', '.join(map(repr, IMPLEMENTED))}; got {name!r}")
        module = importlib.import_module(_MODULES[name])
        problems = api.missing(module)
        if problems:
            raise TypeError(f"backend {name!r} ({_MODULES[name]}) breaks the kernel contract of "
                            f"gpuconv.kernels.api: {'; '.join(problems)}")
        _loaded[name] = module
    return module


def session():
    """Context for a block of many ops (a training loop): the backend's ``session()`` if it has one."""
    return getattr(kernels(), "session", contextlib.nullcontext)()


def optional_kernel(name, array):
    """The optional kernel ``name`` (beyond the contract, e.g. the CPU's fused ``adam_update``) of the backend
    that holds ``array`` (the CPU for NumPy arrays, else the active GPU backend), or None when it has none."""
    module = load("cpu") if isinstance(array, np.ndarray) else kernels()
    return getattr(module, name, None)


def serial():
    """Context in which this thread's ops use no threads of their own (the CPU backend's pool and BLAS):
    for callers that run many ops in parallel themselves, such as Dask. A no-op on GPU backends."""
    return getattr(kernels(), "serial", contextlib.nullcontext)()


# ----------------------------------------------------------------------------- arrays

def xp():
    """The array module of the current backend: NumPy on the CPU, CuPy on a GPU backend."""
    return kernels().xp


def to_device(array, dtype=None):
    """``array`` (NumPy, CuPy, list, number) as an array of the current backend's module, copied only if needed."""
    return xp().asarray(array, dtype=dtype)


def to_host(array):
    """``array`` as a NumPy array: CuPy arrays are copied to the host, NumPy arrays returned as they are."""
    if type(array).__module__.startswith("cupy"):
        return array.get()
    import numpy
    return numpy.asarray(array)


def array_module(array):
    """NumPy for host arrays, CuPy for CuPy arrays (imported only when one is seen)."""
    if type(array).__module__.startswith("cupy"):
        import cupy
        return cupy
    import numpy
    return numpy


# ----------------------------------------------------------------------------- devices

def _resolve_auto():
    """Pick the first GPU backend that loads when a CUDA GPU is present, else the CPU; say so once."""
    global _auto_choice
    if _auto_choice is None:
        _auto_choice, why = "cpu", "no CUDA GPU found"
        if gpu_present():
            failures = []
            for name in GPU_BACKENDS:
                try:
                    load(name)
                except RuntimeError as error:  # e.g. CuPy or numba-cuda not installed
                    failures.append(f"{name}: {error}")
                    continue
                _auto_choice, why = name, "a CUDA GPU is present"
                break
            else:
                why = "a CUDA GPU is present but no GPU backend loads: " + "; ".join(failures)
        logger.info("backend 'auto' chose %r (%s)", _auto_choice, why)
    return _auto_choice


def is_simulated(name):
    """Whether GPU backend ``name`` runs on a host stand-in for tests here: 'numba' on Numba's CUDA simulator
    (NUMBA_ENABLE_CUDASIM=1 before numba was imported), 'cupy' on the CUDA C emulator (GPUCONV_CUDA_EMULATOR=1)."""
    if name == "numba":
        from numba import config
        return bool(config.ENABLE_CUDASIM)
    return name == "cupy" and os.environ.get(EMULATOR_ENV) == "1"


def gpu_present():
    """A real CUDA GPU, seen by numba-cuda or CuPy.

    Under Numba's CUDA simulator or the CUDA C emulator (test set-ups) this is
    False: 'auto' never picks a simulated GPU.
    """
    if is_simulated("numba") or is_simulated("cupy"):
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
