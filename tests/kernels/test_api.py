"""The kernel contract (gpuconv.kernels.api) and the direction of imports: gpuconv -> gpuconv.kernels, never back."""
import ast
import pathlib
import types

import numpy as np
import pytest

from gpuconv.kernels import api
from gpuconv.kernels.cpu import backend as cpu

ROOT = pathlib.Path(__file__).resolve().parents[2]
KERNELS = ROOT / "kernels"


def test_the_cpu_backend_fulfils_the_contract():
    assert api.missing(cpu) == []
    assert api.KERNELS == ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight",
                           "conv2d_backward_bias", "pool2d_forward", "pool2d_backward", "relu_forward",
                           "relu_backward")


def test_a_backend_that_breaks_the_contract_is_named():
    broken = types.SimpleNamespace(name="broken", xp=np, check_array=cpu.check_array,
                                   **{k: getattr(cpu, k) for k in api.KERNELS})
    assert api.missing(broken) == []
    del broken.relu_backward
    broken.pool2d_forward = lambda x, mode, pool, padding, stride: None   # parameters in another order
    broken.relu_forward = lambda x, scale: None                            # an extra required parameter
    del broken.xp
    problems = api.missing(broken)
    assert problems[0] == "no attribute 'xp'"
    assert "no kernel relu_backward" in problems
    assert any(p.startswith("pool2d_forward(x, mode, pool, padding, stride) does not start with "
                            "pool2d_forward(x, mode, pool, stride, padding)") for p in problems)
    assert any(p.startswith("relu_forward(x, scale)") for p in problems)


def _imported_modules(path, source=None):
    """Absolute names of everything ``path`` imports (``from a import b`` is ``a.b``; relative imports resolved)."""
    package = ["gpuconv", "kernels"] + list(path.relative_to(KERNELS).parent.parts)
    names = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module.split(".") if node.module else []
            base = package[:len(package) - node.level + 1] + module if node.level else module
            names += [".".join(base + [alias.name]) for alias in node.names]
    return names


def test_kernels_import_nothing_from_the_rest_of_gpuconv():
    """gpuconv builds on gpuconv.kernels; a kernel module reaching back (to layers, the model, the autograd,
    the ops, dispatch or argument checks) would tie the layers together again."""
    files = sorted(KERNELS.rglob("*.py"))
    assert len(files) > 20
    outside = {str(f.relative_to(ROOT)): [m for m in _imported_modules(f)
                                          if m.split(".")[0] == "gpuconv" and not m.startswith("gpuconv.kernels")]
               for f in files}
    assert {f: m for f, m in outside.items() if m} == {}


def test_the_import_check_sees_a_forbidden_import():
    source = "from ...nn import layers\nimport gpuconv.tensor\nfrom gpuconv import functional\nfrom ..gpu import tiling\n"
    assert _imported_modules(KERNELS / "cpu" / "conv.py", source) == [
        "gpuconv.nn.layers", "gpuconv.tensor", "gpuconv.functional", "gpuconv.kernels.gpu.tiling"]


@pytest.mark.parametrize("shared", ["indexing.py", "api.py"])
def test_the_shared_arithmetic_and_the_contract_import_neither_side(shared):
    assert all(m.split(".")[0] not in ("gpuconv", "numba", "cupy") for m in _imported_modules(KERNELS / shared))
