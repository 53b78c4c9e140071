"""Benchmarks of random_walk (C = 2, r = 5, beta = 10, 256 steps) against the references.

Groups put ours, the pure-PyTorch sparse stencil walk and (where it fits) IRNet's dense
walk side by side, so the table's ratios are the speed-ups. Peak extra memory is stored
in extra_info (``peak_extra_mib``).

    PYTHONPATH=$PWD python -m pytest benchmarks/bench_random_walk.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from wsss_fast.ops.random_walk import random_walk
from wsss_fast.reference import random_walk as ref

from .conftest import CUDA, peak_extra_memory, record, sync

KW = dict(radius=5, beta=10.0, steps=256)


def _inputs(size, device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, size, size, generator=g).to(device)
    edge = torch.rand(1, size, size, generator=g).to(device)
    return x, edge


def _record_once(benchmark, fn, device, rounds=1, **info):
    """For the slow references: ``rounds`` measured rounds (after one run for the memory peak)."""

    def run():
        out = fn()
        sync(device)
        return out

    benchmark.extra_info["peak_extra_mib"] = round(peak_extra_memory(fn, device) / 2**20, 2)
    benchmark.extra_info.update(info)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)


def _ours(benchmark, size, device):
    from wsss_fast._ext import has_op

    assert has_op("random_walk"), "wsss_fast._C is not built"
    x, edge = _inputs(size, device)
    record(benchmark, lambda: random_walk(x, edge, **KW), device, size=size, impl="wsss_fast")


# --- CPU, 48x48: ours vs IRNet's dense walk (1.2-2.5 s on 2 cores; 3 rounds, it varies) -----------------


@pytest.mark.benchmark(group="random_walk-cpu-48x48")
def test_random_walk_cpu_48_ours(benchmark):
    _ours(benchmark, 48, "cpu")


@pytest.mark.benchmark(group="random_walk-cpu-48x48")
def test_random_walk_cpu_48_dense_reference(benchmark):
    x, edge = _inputs(48, "cpu")
    _record_once(benchmark, lambda: ref.random_walk(x, edge, **KW), "cpu", rounds=3, size=48, impl="dense")


@pytest.mark.benchmark(group="random_walk-cpu-48x48")
def test_random_walk_cpu_48_sparse_reference(benchmark):
    x, edge = _inputs(48, "cpu")
    _record_once(benchmark, lambda: ref.random_walk_sparse(x, edge, **KW), "cpu", size=48, impl="sparse")


# --- CPU, larger maps (the dense walk is out of reach) -------------------------------


@pytest.mark.benchmark(group="random_walk-cpu-128x128")
def test_random_walk_cpu_128_ours(benchmark):
    _ours(benchmark, 128, "cpu")


@pytest.mark.benchmark(group="random_walk-cpu-128x128")
def test_random_walk_cpu_128_sparse_reference(benchmark):
    x, edge = _inputs(128, "cpu")
    _record_once(benchmark, lambda: ref.random_walk_sparse(x, edge, **KW), "cpu", size=128, impl="sparse")


@pytest.mark.benchmark(group="random_walk-cpu-256x256")
def test_random_walk_cpu_256_ours(benchmark):
    _ours(benchmark, 256, "cpu")


# --- CUDA: 128x128 (goal <= 1.5 ms, >= 30x the sparse walk) and 256x256 (<= 5 ms) -----

cuda_only = pytest.mark.skipif(not CUDA, reason="no CUDA device")


@cuda_only
@pytest.mark.benchmark(group="random_walk-cuda-128x128")
def test_random_walk_cuda_128_ours(benchmark):
    _ours(benchmark, 128, "cuda")


@cuda_only
@pytest.mark.benchmark(group="random_walk-cuda-128x128")
def test_random_walk_cuda_128_sparse_reference(benchmark):
    x, edge = _inputs(128, "cuda")
    record(benchmark, lambda: ref.random_walk_sparse(x, edge, **KW), "cuda", size=128, impl="sparse")


@cuda_only
@pytest.mark.benchmark(group="random_walk-cuda-128x128")
def test_random_walk_cuda_128_dense_reference(benchmark):
    x, edge = _inputs(128, "cuda")
    _record_once(benchmark, lambda: ref.random_walk(x, edge, **KW), "cuda", size=128, impl="dense")


@cuda_only
@pytest.mark.benchmark(group="random_walk-cuda-256x256")
def test_random_walk_cuda_256_ours(benchmark):
    _ours(benchmark, 256, "cuda")


@cuda_only
@pytest.mark.benchmark(group="random_walk-cuda-256x256")
def test_random_walk_cuda_256_sparse_reference(benchmark):
    x, edge = _inputs(256, "cuda")
    record(benchmark, lambda: ref.random_walk_sparse(x, edge, **KW), "cuda", size=256, impl="sparse")
