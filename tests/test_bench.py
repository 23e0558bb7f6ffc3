"""The benchmark suite's harness on the CPU: work counts against hand-computed values, the correctness
gate, and a tiny end-to-end run writing every output file."""
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench import counts, suite, timing  # noqa: E402
from bench.timing import WallClock, measure, measure_interleaved  # noqa: E402


def test_conv_flops_of_the_seeds_layers():
    # the seeds' steel-defect (NEU) model: 3x3 'same' convs on 200x200 grey images, one image
    assert counts.conv_flops(1, 1, 200, 200, 32) == 2 * 32 * 200 * 200 * 1 * 9 == 23_040_000
    assert counts.conv_flops(1, 32, 100, 100, 64) == 368_640_000
    assert counts.conv_flops(1, 64, 50, 50, 128) == 368_640_000
    # cnn-lecture-lee-slides' MNIST model: 25 then 50 filters, 3x3 'valid' (28 -> 26, 13 -> 11)
    assert counts.conv_flops(1, 1, 28, 28, 25, pad=0) == 2 * 25 * 26 * 26 * 9 == 304_200
    assert counts.conv_flops(1, 25, 13, 13, 50, pad=0) == 2 * 50 * 11 * 11 * 25 * 9 == 2_722_500
    # the example model's first layer at batch 128
    assert counts.op_work("conv2d_forward", counts.SHAPES["mnist_conv1"])[0] == 57_802_752
    assert counts.op_work("conv2d_backward_weight", (1, 1, 200, 200, 32))[0] == 23_040_000


def test_bytes_of_memory_bound_ops():
    shape = (2, 3, 4, 6, 5)  # activation (2, 5, 4, 6): 240 elements, pooled (2, 5, 2, 3): 60
    assert counts.op_work("relu_forward", shape) == (0, 4 * 2 * 240)
    assert counts.op_work("relu_backward", shape) == (0, 4 * 3 * 240)
    assert counts.op_work("max_pool_forward", shape) == (0, 4 * (240 + 60) + 4 * 60)
    assert counts.op_work("avg_pool_backward", shape) == (0, 4 * (60 + 240))
    flops, nbytes = counts.op_work("conv2d_forward", shape)
    assert nbytes == 4 * (2 * 3 * 4 * 6 + 5 * 3 * 9 + 240)


def test_measure_reports_compile_time_apart_and_the_spread():
    calls = []

    def slow_first():
        calls.append(1)
        if len(calls) == 1:
            import time
            time.sleep(0.05)

    result = measure([slow_first], WallClock(), repeats=5, warmup=2)
    assert len(calls) == 1 + 2 + 5
    assert result["first_call_s"] >= 0.05 > result["median_s"]
    assert result["q25_s"] <= result["median_s"] <= result["q75_s"] and result["repeats"] == 5


def test_interleaved_blocks_start_with_untimed_calls_of_their_own_target(monkeypatch):
    monkeypatch.setattr(timing, "SWITCH_PAUSE_S", 0.0)
    monkeypatch.setattr(timing, "BLOCK_WARMUP_S", 0.002)
    log = []  # (target, timed) per call, in order

    class MarkingClock(WallClock):
        def __call__(self, fn):
            log.append("timer")
            return super().__call__(fn)

    def target(name):
        def call():
            timed = bool(log) and log[-1] == "timer"
            if timed:
                log.pop()
            log.append((name, timed))
        return [call]

    results = measure_interleaved([(target("a"), MarkingClock(), None), (target("b"), MarkingClock(), None)],
                                  repeats=6, warmup=1, block=3)
    assert [r["repeats"] for r in results] == [6, 6]
    calls = log[4:]  # after each target's first call and warm-up call
    assert log[:4] == [("a", False)] * 2 + [("b", False)] * 2
    runs = []  # (target, untimed calls, timed calls) per block
    for name, timed in calls:
        if not runs or runs[-1][0] != name or (timed is False and runs[-1][2]):
            runs.append([name, 0, 0])
        runs[-1][1 if not timed else 2] += 1
    assert [(name, timed) for name, _, timed in runs] == [("a", 3), ("b", 3), ("b", 3), ("a", 3)]
    assert all(untimed >= 1 for _, untimed, _ in runs)  # re-warmed after every pause
    monkeypatch.setattr(timing, "BLOCK_WARMUP_S", 0.0)  # the method before the re-warm: timed calls only
    log.clear()
    measure_interleaved([(target("a"), MarkingClock(), None)], repeats=6, warmup=0, block=3)
    assert log == [("a", False)] + [("a", True)] * 6


def test_a_wrong_result_is_flagged(monkeypatch):
    target = suite.gpuconv_target("cpu")
    right = target.ops["relu_forward"]
    target.ops = dict(target.ops, relu_forward=lambda a: right(a) + 1e-2)
    rows = suite.run_shape("tiny", counts.SMOKE_SHAPES["tiny"], ["relu_forward", "conv2d_forward"], [target], 2,
                           0, np.random.default_rng(0), lambda text: None)
    verdict = {r["op"]: r["correct"] for r in rows}
    assert verdict == {"relu_forward": False, "conv2d_forward": True}


def test_suite_writes_json_markdown_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    code = suite.main(["--shapes", "tiny", "--backends", "cpu", "--anchors", "scipy", "--repeats", "2",
                       "--warmup", "0", "--batches", "1", "--out", str(tmp_path)])
    assert code == 0
    (directory,) = tmp_path.iterdir()
    assert directory.name.endswith(suite.datetime.date.today().isoformat())
    document = json.loads((directory / "results.json").read_text())
    ops = document["ops"]
    assert {r["op"] for r in ops if r["target"] == "cpu"} == set(counts.OPS)
    assert [r["target"] for r in ops if r["op"] == "conv2d_forward"] == ["cpu", "scipy"]
    cpu_conv = next(r for r in ops if r["op"] == "conv2d_forward" and r["target"] == "cpu")
    assert cpu_conv["speedup_vs"]["scipy"] > 0 and cpu_conv["gflops"] > 0 and cpu_conv["correct"]
    assert document["environment"]["peaks"]["cpu"]["copy_gbps"] > 0
    assert document["environment"]["git_commit"] is not None
    policy = document["environment"]["cpu_stream_bytes"]
    assert policy["stream_min"] <= policy["cache_keep"] <= 48 << 20
    assert document["end_to_end"][0]["train_images_per_s"] > 0
    table = (directory / "results.md").read_text()
    assert "| conv2d_forward | tiny | cpu |" in table and "End to end" in table
    for plot in ("throughput.png", "roofline.png"):
        assert (directory / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_allreduce_model_on_paper():
    from bench import allreduce_model
    assert allreduce_model.MNIST_PARAMETERS == 421_642  # the example model's summary
    # ring allreduce: 2 (N-1)/N * bytes / bandwidth + 2 (N-1) * latency
    assert allreduce_model.allreduce_seconds(2, 4e6, 1e9, 0.0) == pytest.approx(4e-3)
    assert allreduce_model.allreduce_seconds(4, 4e6, 1e9, 1e-5) == pytest.approx(6e-3 + 6e-5)
    rows = allreduce_model.table(ranks=(8,))
    assert all(0 < efficiency <= 1 for *_, efficiency in rows) and len(rows) == 8


def test_step_breakdown_parts_are_disjoint_and_fill_the_step(monkeypatch):
    """bench/step_breakdown.py on a few random batches: every part of the MNIST step is timed, none twice."""
    import collections
    import gpuconv
    from bench import step_breakdown
    from gpuconv.nn import losses
    kernels = gpuconv.backend.load("cpu")
    for names in step_breakdown.PARTS.values():  # restored after the test: instrument() wraps them in place
        for name in names:
            monkeypatch.setattr(kernels, name, getattr(kernels, name))
    for name in ("forward", "backward"):
        monkeypatch.setattr(losses.CrossEntropy, name, losses.CrossEntropy.__dict__[name])
    spent = collections.defaultdict(float)
    step_breakdown.instrument(kernels, spent)
    rng = np.random.default_rng(0)
    steps, batch = 3, 16
    images = (steps + step_breakdown.mnist_epoch.WARMUP_BATCHES) * batch
    x, y = rng.random((images, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, images)
    with gpuconv.use_backend("cpu"):
        per_step = step_breakdown.run(x, y, batch, steps, spent)
    assert set(per_step) == set(step_breakdown.ORDER)
    assert all(per_step[part] > 0 for part in step_breakdown.ORDER if part != "framework")
    assert 0 <= per_step["framework"] < per_step["step"]  # negative if a call were counted in two parts


def test_thread_scaling_times_each_count_with_its_threads_set(tmp_path, monkeypatch):
    import numba

    from bench import thread_scaling
    counts_set = []
    real = numba.set_num_threads
    monkeypatch.setattr(numba, "set_num_threads", lambda n: counts_set.append(n) or real(n))
    most = numba.config.NUMBA_NUM_THREADS
    out = tmp_path / "scaling.json"
    monkeypatch.setattr(timing, "BLOCK_WARMUP_S", timing.BLOCK_WARMUP_S)  # the tool sets its own; restored after
    thread_scaling.main(["--shapes", "tiny", "--ops", "relu_forward", "conv2d_forward", "--threads", "1", str(most),
                         "--repeats", "4", "--warmup", "1", "--rewarm-s", "0.005", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert [(r["shape"], r["op"]) for r in saved["rows"]] == [("tiny", "relu_forward"), ("tiny", "conv2d_forward")]
    for row in saved["rows"]:
        assert set(row["median_s"]) == {str(t) for t in {1, most}} and all(v > 0 for v in row["median_s"].values())
        assert row["speedup"]["1"] == 1.0
    assert set(counts_set) == {1, most} and counts_set[-1] == most  # each block at its count; all cores after
    assert saved["environment"]["threads"] == sorted({1, most}) and saved["environment"]["rewarm_s"] == 0.005
