"""Benchmarks of path_affinity at r = 10, B = 16, 128x128 (IRNet's training setting).

Ours against the IRNet-style gather-and-max reference, forward and forward+backward, in
one group each so the table shows the ratios. Peak extra memory is in extra_info; the
output alone is B * D * H * W * 4 bytes = 152 MiB.

    PYTHONPATH=$PWD python -m pytest benchmarks/bench_path_affinity.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from wsss_fast.ops.path_affinity import path_affinity
from wsss_fast.reference import path_affinity as ref

from .conftest import DEVICES, peak_extra_memory, record, sync

RADIUS, B, SIZE = 10, 16, 128


def _edge(device, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    return torch.rand(B, 1, SIZE, SIZE, generator=g).to(device).requires_grad_(requires_grad)


def _fwd(fn, edge):
    def run():
        with torch.no_grad():
            return fn(edge, RADIUS)

    return run


def _fwd_bwd(fn, edge):
    def run():
        edge.grad = None
        out = fn(edge, RADIUS)
        out.backward(torch.ones_like(out))
        return edge.grad

    return run


def _record(benchmark, run, device, slow, **info):
    if not slow:
        record(benchmark, run, device, **info)
        return

    def timed():
        out = run()
        sync(device)
        return out

    run()  # warm-up
    benchmark.extra_info["peak_extra_mib"] = round(peak_extra_memory(run, device) / 2**20, 2)
    benchmark.extra_info.update(info)
    benchmark.pedantic(timed, rounds=3, iterations=1, warmup_rounds=0)


def _ours_loaded():
    from wsss_fast._ext import has_op

    assert has_op("path_affinity"), "wsss_fast._C is not built"


@pytest.mark.parametrize("device", DEVICES)
def test_path_affinity_fwd_ours(benchmark, device):
    _ours_loaded()
    benchmark.group = f"path_affinity-fwd-{device}"
    _record(benchmark, _fwd(path_affinity, _edge(device)), device, False, impl="wsss_fast")


@pytest.mark.parametrize("device", DEVICES)
def test_path_affinity_fwd_reference(benchmark, device):
    benchmark.group = f"path_affinity-fwd-{device}"
    _record(benchmark, _fwd(ref.path_affinity, _edge(device)), device, device == "cpu", impl="reference")


@pytest.mark.parametrize("device", DEVICES)
def test_path_affinity_fwd_bwd_ours(benchmark, device):
    _ours_loaded()
    benchmark.group = f"path_affinity-fwd_bwd-{device}"
    _record(benchmark, _fwd_bwd(path_affinity, _edge(device, True)), device, False, impl="wsss_fast")


@pytest.mark.parametrize("device", DEVICES)
def test_path_affinity_fwd_bwd_reference(benchmark, device):
    benchmark.group = f"path_affinity-fwd_bwd-{device}"
    _record(benchmark, _fwd_bwd(ref.path_affinity, _edge(device, True)), device, device == "cpu", impl="reference")
