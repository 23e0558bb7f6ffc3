"""Test and compile tooling for the GPU backends; not part of the wheel (run it from a source checkout).

* ``cuda_emulator`` (+ ``cuda_emulator.h``) -- the CUDA C kernels built with g++ for the host, so tests run
  them without a GPU (``GPUCONV_CUDA_EMULATOR=1``);
* ``compile_report`` -- the offline compile check's common part (assembling, reading ptxas logs, the table);
* ``ptx_report`` -- every Numba CUDA kernel configuration through NVVM for sm_80/sm_90;
* ``nvrtc_report`` -- every CUDA C configuration through NVRTC for sm_80/sm_90.
"""
