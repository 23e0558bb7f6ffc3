"""Kernel code of every backend, installed as ``gpuconv.kernels``.

* ``indexing`` -- plain-Python index helpers, compiled for each backend;
* ``cpu``      -- Numba CPU kernels (the fallback backend).

Every backend module exposes the same short list of kernels; see
``gpuconv.backend.KERNELS``.
"""
