"""Backend 'numba' (Numba CUDA kernels): ``backend`` (launches; needs a GPU or the simulator), ``runtime``
(device, kernel cache, streams), and one kernel module per op family, paired by name with the CUDA C
files of ``cuda_c``: ``conv``, ``weight_grad``, ``reduce``, ``pool``, ``relu``.

The kernel modules import without a GPU: each factory returns a plain Python kernel function for a
compile-time configuration (everything in capitals), which ``backend`` jits and launches, the offline
compile check (``gpuconv.kernels.tools.ptx_report``) compiles to PTX, and the CUDA simulator runs.
Layouts: activations NCHW, conv weights KCRS, C-contiguous float32 or float64. Every kernel loops over
its work, so grids stay small whatever the sizes; indices are 64-bit.
"""
