"""Shared benchmark helpers: devices, synchronisation and peak extra memory.

Benchmarks put ours and the reference in one pytest-benchmark group, so the table's
parenthesised figures are the ratios. Peak extra memory is stored in ``extra_info``.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA device"))]


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def peak_extra_memory(fn: Callable[[], object], device: str | torch.device) -> int:
    """Bytes allocated by ``fn`` at its peak, above what was allocated before it ran.

    CUDA uses the caching allocator's peak statistic; CPU replays the allocation events
    that ``torch.profiler`` records with ``profile_memory=True``.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return int(peak)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    # Each op event carries the memory it allocated itself (self_cpu_memory_usage: the
    # inclusive figure would count nested ops again); allocations outside any op appear
    # as "[memory]" events. Replaying them in time order gives the peak (frees inside one
    # op are netted, so a short-lived temporary within an op is not seen).
    deltas = []
    for e in prof.events():
        delta = e.cpu_memory_usage if e.name == "[memory]" else getattr(e, "self_cpu_memory_usage", 0)
        if delta:
            deltas.append((e.time_range.start, delta))
    cur = peak = 0
    for _, delta in sorted(deltas):
        cur += delta
        peak = max(peak, cur)
    return int(peak)


def record(benchmark, fn: Callable[[], object], device: str | torch.device, **info) -> None:
    """Benchmark ``fn`` (synchronised on CUDA) and store peak extra memory and ``info``."""
    dev = torch.device(device)

    def run():
        out = fn()
        sync(dev)
        return out

    run()  # warm-up (and lazy CUDA init) outside the timing
    benchmark.extra_info["peak_extra_mib"] = round(peak_extra_memory(fn, dev) / 2**20, 2)
    benchmark.extra_info.update(info)
    benchmark(run)
