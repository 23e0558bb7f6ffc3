"""Offline compile of every GPU kernel configuration for sm_80 and sm_90 (no GPU needed).

Numba CUDA kernels go through NVVM (``numba.cuda.compile_ptx``, ``ptx_report``);
CUDA C kernels through NVRTC with exactly the source and options the 'cupy'
backend hands CuPy at run time (``nvrtc_report``). nvJitLink (ptxas) assembles
the PTX and reports registers, shared and local memory, and spills. The
register-blocked kernels (conv, dW) must not touch local memory: a spill there
costs more than the tiling gains.
"""
import os

import numpy as np
import pytest


def _missing_compilers():
    """The compiler libraries not found (NVVM, NVRTC, nvJitLink): they come with the `compile` extra."""
    try:
        import cuda.bindings.nvrtc  # noqa: F401
        from cuda import pathfinder
        import numba.cuda  # noqa: F401
    except ImportError as error:
        return [str(error)]
    missing = []
    for name in ("nvvm", "nvrtc", "nvJitLink"):
        try:
            pathfinder.load_nvidia_dynamic_lib(name)
        except Exception as error:  # the pathfinder's not-found errors have no common public base
            missing.append(f"{name} ({type(error).__name__})")
    return missing


_MISSING = _missing_compilers()
if _MISSING:
    if os.environ.get("GPUCONV_REQUIRE_COMPILE") == "1":  # CI: the compile checks must run, never skip
        raise RuntimeError(f"GPUCONV_REQUIRE_COMPILE=1 but compilers are missing: {_MISSING}")
    pytest.skip(f"offline compile needs the compile extra (pip install -e '.[compile]'); missing {_MISSING}",
                allow_module_level=True)

from gpuconv.kernels.cuda_c import sources  # noqa: E402
from gpuconv.kernels.gpu import tiling  # noqa: E402
from gpuconv.kernels.tools import nvrtc_report, ptx_report  # noqa: E402

# report module, its conv kernel's name, its dW kernel's name, every kernel it compiles
REPORTS = {
    "numba": (ptx_report, "conv", "weight_grad",
              {"conv", "weight_grad", "sum_splits", "bias_grad", "relu_forward", "relu_backward",
               "max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward"}),
    "cupy": (nvrtc_report, "conv2d", "conv2d_weight_grad", set(sources.SIGNATURES)),
}


@pytest.fixture(scope="module", params=sorted(REPORTS))
def compiled(request):
    report, conv, weight_grad, kernels = REPORTS[request.param]
    return report, conv, weight_grad, kernels, report.compile_all(report.ARCHES)


def test_every_configuration_compiles_for_every_arch(compiled):
    report, conv, weight_grad, kernels, rows = compiled
    print("\n" + report.markdown(rows))
    configurations = list(report.configurations())
    assert len(rows) == len(configurations) * len(report.ARCHES)
    assert {r["kernel"] for r in rows} == kernels
    assert {c.params["tile"] for c in configurations if c.kernel == conv} == set(tiling.CONV_TILES)
    assert {c.params["tile"] for c in configurations if c.kernel == weight_grad} == set(tiling.WEIGHT_GRAD_TILES)
    assert all(r["registers"] <= 255 for r in rows)
    warned = [f"{r['kernel']} {r['config']} {r['arch']}: {r['warnings']}" for r in rows if r.get("warnings", "").strip()]
    assert not warned, "\n".join(warned)


def test_register_blocked_kernels_do_not_spill(compiled):
    report, *_, rows = compiled
    spilled = [f"{r['kernel']} {r['config']} {r['arch']}: {r['local_bytes']} B local, "
               f"{r['spill_store_bytes']}/{r['spill_load_bytes']} B spilled"
               for r in rows if r["kernel"] in report.CONV_LIKE
               and (r["local_bytes"] or r["spill_store_bytes"] or r["spill_load_bytes"])]
    assert not spilled, "\n".join(spilled)


def test_conv_shared_memory_matches_the_host_side_sizing(compiled):
    """The tile planner's shared-memory arithmetic agrees with the compiler: exactly for Numba, up to the
    16-byte alignment of the filter tile for CUDA C. On sm_90 ptxas adds 1 KiB that the system reserves."""
    report, conv, _, _, rows = compiled
    slack = 16 if report is nvrtc_report else 1
    checked = 0
    for config in report.configurations():
        if config.kernel != conv:
            continue
        p = config.params
        expected = tiling.conv_shared_bytes(p["tile"], p["geometry"], p["dtype"].itemsize)
        for row in rows:
            if row["kernel"] == conv and row["config"] == config.description:
                used = row["shared_bytes"] - (1024 if row["arch"] == "sm_90" else 0)
                assert expected <= used < expected + slack, (config.description, row["arch"], used, expected)
                checked += 1
    assert checked == 2 * sum(1 for c in report.configurations() if c.kernel == conv)


def test_a_cuda_c_signature_that_differs_from_the_kernel_does_not_compile(monkeypatch):
    """SIGNATURES drives the argument packing; the compiled source asserts it matches each kernel."""
    file, params = sources.SIGNATURES["relu_forward"]
    monkeypatch.setitem(sources.SIGNATURES, "relu_forward", (file, params.replace("i64 n", "int n")))
    sources.parameters.cache_clear()
    try:
        with pytest.raises(nvrtc_report.CompileError, match=r"relu_forward: the parameters declared in "
                                                            r"kernels/cuda_c/sources.py SIGNATURES differ from relu.cu"):
            nvrtc_report.compile_ptx(sources.relu_module(np.float32, 4, 256), 80)
    finally:
        sources.parameters.cache_clear()
