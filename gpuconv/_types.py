"""Type aliases of the public API's annotations."""
from typing import Any, Tuple, Union

ArrayLike = Any  # a NumPy or CuPy array, a DLPack exporter (torch tensor), a Tensor, or nested lists of numbers
Pair = Union[int, Tuple[int, int]]  # one value for both spatial axes, or (rows, columns)
Padding = Union[int, str, Tuple[int, int], Tuple[Tuple[int, int], Tuple[int, int]]]
Shape = Tuple[int, ...]
