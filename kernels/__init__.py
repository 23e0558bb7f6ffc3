"""Kernel code of every backend, installed as ``gpuconv.kernels``.

* ``indexing``           -- plain-Python index helpers, compiled for each backend (C twins in common.cuh);
* ``cpu``                -- Numba CPU kernels (the fallback backend);
* ``tiling``             -- tiles and launch planning shared by both GPU backends (no GPU needed);
* ``gpu_ops``            -- the host side of both GPU backends (shapes, allocation, splits), written once;
* ``numba_cuda_kernels`` -- Numba CUDA kernel factories (no GPU needed to import);
* ``numba_cuda``         -- the 'numba' backend: launches those kernels on CuPy arrays;
* ``*.cu``, ``common.cuh`` -- the CUDA C kernels; ``cuda_c`` describes them (signatures, options, packing);
* ``cupy_rawkernel``     -- the 'cupy' backend: those kernels through ``cupy.RawModule``;
* ``cuda_emulator``      -- the CUDA C kernels built with g++ for the host, for tests without a GPU;
* ``ptx_report``, ``nvrtc_report`` -- offline compile checks of every configuration (registers, spills).

Every backend module exposes the same short list of kernels; see
``gpuconv.backend.KERNELS``.
"""
