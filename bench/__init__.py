"""gpuconv's benchmark suite (run from the repository root): ``python -m bench --help``.

Not installed with the library: it is a tool beside it.
"""
