"""Backend 'cpu' (Numba CPU kernels): ``backend`` (the contract), ``conv``, ``pool``, ``relu``, ``runtime``."""
