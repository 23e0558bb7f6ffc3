"""Kernel code of every backend, installed as ``gpuconv.kernels``.

* ``indexing``           -- plain-Python index helpers, compiled for each backend;
* ``cpu``                -- Numba CPU kernels (the fallback backend);
* ``numba_cuda_kernels`` -- Numba CUDA kernel factories, tiles and launch planning (no GPU needed);
* ``numba_cuda``         -- the 'numba' backend: launches those kernels on CuPy arrays;
* ``ptx_report``         -- offline compile check of every CUDA configuration (PTX, registers, spills).

Every backend module exposes the same short list of kernels; see
``gpuconv.backend.KERNELS``.
"""
