"""Timers and the measuring loop: compile time apart, warm-up, medians and spread."""
import time

import numpy as np


class WallClock:
    """Host wall-clock seconds (CPU backends, and the CUDA simulator, which has no events)."""

    def __call__(self, fn):
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def synchronize(self):
        pass


class CupyEvents:
    """Seconds of ``fn()`` by CUDA events on CuPy's current stream (where gpuconv's GPU kernels launch)."""

    def __init__(self):
        import cupy
        self.cupy = cupy

    def __call__(self, fn):
        start, end = self.cupy.cuda.Event(), self.cupy.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return self.cupy.cuda.get_elapsed_time(start, end) / 1e3

    def synchronize(self):
        self.cupy.cuda.get_current_stream().synchronize()


class TorchEvents:
    """Seconds of ``fn()`` by CUDA events on PyTorch's current stream."""

    def __init__(self, torch):
        self.torch = torch

    def __call__(self, fn):
        start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    def synchronize(self):
        self.torch.cuda.synchronize()


def measure(calls, timer, repeats, warmup):
    """Time ``calls[i % len(calls)]()`` (rotating inputs) and summarize.

    The first call (JIT compile, cache load) is timed apart on the wall clock;
    then ``warmup`` untimed calls; then ``repeats`` timed ones.
    """
    first = _first_call_and_warmup(calls, timer, warmup)
    return _summary(first, [timer(calls[i % len(calls)]) for i in range(max(1, repeats))])


def _first_call_and_warmup(calls, timer, warmup):
    """Wall-clock seconds of the first call (JIT compile, cache load), then ``warmup`` untimed calls."""
    start = time.perf_counter()
    calls[0]()
    timer.synchronize()
    first = time.perf_counter() - start
    for i in range(warmup):
        calls[i % len(calls)]()
    timer.synchronize()
    return first


def _summary(first, times):
    q25, median, q75 = np.percentile(times, [25, 50, 75])
    return dict(first_call_s=first, median_s=float(median), q25_s=float(q25), q75_s=float(q75),
                min_s=float(min(times)), repeats=len(times))


SWITCH_PAUSE_S = 0.1  # longer than a thread pool's spin-wait (GNU OpenMP's ran past 6 ms here), see below
# After the pause, untimed calls of the block's target for this long (one at least): on the Intel host a
# memory-bound loop ran 1.5-2x slower for the first 6-9 ms after 0.1 s idle, single-threaded np.copyto as
# much as anyone's kernel (compute-bound loops did not slow), and a thread pool's first call wakes its threads
BLOCK_WARMUP_S = 0.02


def measure_interleaved(entries, repeats, warmup, block=5):
    """``measure`` for several targets at once, in rounds: each round times ``block`` consecutive calls of every
    target, in an order that rotates from round to round, so a slow spell of the machine falls on all alike.

    Before each block the targets' thread pools are given ``SWITCH_PAUSE_S`` to go idle: a pool still
    spinning after the previous target's call (PyTorch's OpenMP threads spin for milliseconds) would take
    cores from the next one, which a run of one target at a time never sees. Then the block's target is
    warmed up again by ``BLOCK_WARMUP_S`` of untimed calls, so that the block times it in the state a
    run of calls keeps it in (threads awake, memory up to speed), not its recovery from the pause.

    ``entries``: ``(calls, timer, setup)`` per target (``setup`` None or run before each of its blocks).
    Returns one summary per entry, as ``measure`` gives.
    """
    firsts, times = [], [[] for _ in entries]
    for calls, timer, setup in entries:
        if setup:
            setup()
        firsts.append(_first_call_and_warmup(calls, timer, warmup))
    repeats = max(1, repeats)
    rounds = -(-repeats // block)
    for r in range(rounds):
        for j in range(len(entries)):
            k = (r + j) % len(entries)
            calls, timer, setup = entries[k]
            if setup:
                setup()
            time.sleep(SWITCH_PAUSE_S)
            _rewarm(calls, timer, BLOCK_WARMUP_S)
            for i in range(min(block, repeats - r * block)):
                times[k].append(timer(calls[(r * block + i) % len(calls)]))
    return [_summary(first, samples) for first, samples in zip(firsts, times)]


def _rewarm(calls, timer, seconds):
    """Untimed calls of ``calls`` (rotating) until ``seconds`` have passed, at least one; none for 0 (the
    method before 8ad4a9e)."""
    if seconds <= 0:
        return
    end = time.perf_counter() + seconds
    i = 0
    while i == 0 or time.perf_counter() < end:
        calls[i % len(calls)]()
        timer.synchronize()
        i += 1
