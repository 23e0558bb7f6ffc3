"""Kernel code of every backend, installed as ``gpuconv.kernels``; it imports nothing from the rest of gpuconv.

* ``api``        -- the kernel contract: the eight kernels every backend provides, layouts, dtypes;
* ``indexing``   -- index and shape arithmetic in plain Python, compiled for each backend (C twins in
                    ``cuda_c/common.cuh``) and used by ``gpuconv.geometry``;
* ``cpu/``       -- backend 'cpu': Numba CPU kernels (``conv``, ``pool``, ``relu``, ``runtime``);
* ``gpu/``       -- the host side both GPU backends share (``tiling``, ``ops.GpuOps``);
* ``numba_cuda/``-- backend 'numba': Numba CUDA kernels (``conv``, ``weight_grad``, ``reduce``, ``pool``, ``relu``);
* ``cuda_c/``    -- backend 'cupy': the same kernels in CUDA C (``conv.cu``, ``weight_grad.cu``, ...) via CuPy;
* ``tools/``     -- test and compile tooling (the CUDA C host emulator, the offline compile reports); not shipped.

Each backend's ``backend`` module is what ``gpuconv.backend.load(name)`` returns.
"""
