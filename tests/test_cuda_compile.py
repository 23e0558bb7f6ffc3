"""Offline compile of every Numba CUDA kernel configuration for sm_80 and sm_90 (no GPU needed).

NVVM compiles each configuration the launchers can pick to PTX; nvJitLink (ptxas)
assembles it and reports registers, shared and local memory, and spills. The
register-blocked kernels (conv, weight_grad) must not touch local memory: a
spill there costs more than the tiling gains.
"""
import pytest

pytest.importorskip("numba.cuda", reason="needs numba-cuda")

from gpuconv.kernels import numba_cuda_kernels, ptx_report  # noqa: E402


@pytest.fixture(scope="module")
def rows():
    return ptx_report.compile_all(ptx_report.ARCHES)


def test_every_configuration_compiles_for_every_arch(rows):
    print("\n" + ptx_report.markdown(rows))
    configurations = list(ptx_report.configurations())
    assert len(rows) == len(configurations) * len(ptx_report.ARCHES)
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"conv", "weight_grad", "sum_splits", "bias_grad", "relu_forward", "relu_backward",
                       "max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward"}
    assert {c.params["tile"] for c in configurations if c.kernel == "conv"} == set(numba_cuda_kernels.CONV_TILES)
    assert ({c.params["tile"] for c in configurations if c.kernel == "weight_grad"}
            == set(numba_cuda_kernels.WEIGHT_GRAD_TILES))
    assert all(r["registers"] <= 255 for r in rows)


def test_register_blocked_kernels_do_not_spill(rows):
    spilled = [f"{r['kernel']} {r['config']} {r['arch']}: {r['local_bytes']} B local, "
               f"{r['spill_store_bytes']}/{r['spill_load_bytes']} B spilled"
               for r in rows if r["kernel"] in ptx_report.CONV_LIKE
               and (r["local_bytes"] or r["spill_store_bytes"] or r["spill_load_bytes"])]
    assert not spilled, "\n".join(spilled)


def test_shared_memory_matches_the_host_side_sizing(rows):
    """The launcher's shared-memory arithmetic (used to pick tiles) agrees with the compiler.

    For sm_90 ptxas adds 1 KiB that the system reserves in every block using shared memory.
    """
    checked = 0
    for config in ptx_report.configurations():
        if config.kernel != "conv":
            continue
        p = config.params
        expected = numba_cuda_kernels.conv_shared_bytes(p["tile"], p["geometry"], p["dtype"].itemsize)
        for row in rows:
            if row["kernel"] == "conv" and row["config"] == config.description:
                reserved = 1024 if row["arch"] == "sm_90" else 0
                assert row["shared_bytes"] == expected + reserved, (config.description, row["arch"])
                checked += 1
    assert checked == 2 * sum(1 for c in ptx_report.configurations() if c.kernel == "conv")
