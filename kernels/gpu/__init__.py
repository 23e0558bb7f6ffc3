"""The host side both GPU backends share: ``tiling`` (tiles and launch planning) and ``ops`` (the ``GpuOps`` base).

Plain Python: importable without a GPU.
"""
