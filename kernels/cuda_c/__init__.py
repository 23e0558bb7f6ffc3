"""Backend 'cupy' (CUDA C kernels through ``cupy.RawModule``): ``backend`` (launches; needs a GPU or the
emulator), ``sources`` (signatures, compile options, argument packing), and one ``.cu`` per op family,
paired by name with the Numba modules of ``numba_cuda``: ``conv``, ``weight_grad``, ``reduce``, ``pool``,
``relu``, with ``common.cuh``.
"""
