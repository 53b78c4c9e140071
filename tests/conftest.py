"""Shared fixtures: device parametrization (CUDA skipped without a GPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not CUDA, reason="no CUDA device")]),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def pytest_collection_modifyitems(config, items) -> None:
    """Every test with ``cuda`` in its name or parameters carries the ``cuda`` mark, so that
    ``-m cuda`` (the GPU machine's selection, benchmarks/gpu_check.sh) finds all of them."""
    for item in items:
        if "cuda" in item.name.lower() and item.get_closest_marker("cuda") is None:
            item.add_marker(pytest.mark.cuda)


@pytest.fixture
def compiled_ops() -> None:
    """Skip-free guard: tests of the kernels must run on the compiled ops, never the fallback."""
    from wsss_fast._ext import has_ops

    assert has_ops(), "wsss_fast._C is not built; run `make build`"


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: the test machines share 2 cores, and the tiny
    convolutions of the pipeline tests run faster (and deterministically) on one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class LoopWatch:
    """Patches ``module.DataLoader`` and ``owner.name``: counts the calls of ``name`` and those made
    while no loader of ``module`` is being iterated (work after the loop, which the pipeline
    profile's loader probe, benchmarks/profile_probes.py, would not time)."""

    def __init__(self, monkeypatch, module, owner, name: str) -> None:
        self.open = self.calls = self.outside = 0
        watch, fn = self, getattr(owner, name)

        class Loader(module.DataLoader):
            def __iter__(self):
                watch.open += 1
                try:
                    yield from super().__iter__()
                finally:
                    watch.open -= 1

        def counted(*args, **kwargs):
            watch.calls += 1
            watch.outside += watch.open == 0
            return fn(*args, **kwargs)

        monkeypatch.setattr(module, "DataLoader", Loader)
        monkeypatch.setattr(owner, name, counted)


@pytest.fixture
def loop_watch(monkeypatch):
    """``loop_watch(module, owner, name)`` -> a :class:`LoopWatch` (undone after the test)."""
    return lambda module, owner, name: LoopWatch(monkeypatch, module, owner, name)


class HostReads:
    """Counts, inside ``with``, the calls that make the host wait for a device's values.

    On CUDA: every synchronizing call (a value read, a blocking copy), counted by the pipeline
    profile's ``SyncSites`` (``benchmarks/profile_probes.py``, ``torch.cuda``'s sync debug mode).
    On the CPU, where nothing waits, the value reads that would wait on a GPU
    (``aten._local_scalar_dense``: ``.item()``, ``float(t)``, ``bool(t)``) stand in for them.
    ``where`` lists the calls' ``file:line xN`` on CUDA (empty on the CPU).
    """

    def __init__(self, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.count, self.where = 0, []

    def __enter__(self) -> "HostReads":
        from torch.utils._python_dispatch import TorchDispatchMode

        if self.cuda:
            bench = str(Path(__file__).resolve().parents[1] / "benchmarks")
            if bench not in sys.path:
                sys.path.insert(0, bench)
            from profile_probes import SyncSites

            torch.cuda.synchronize()
            self._sites = SyncSites()
            self._sites.start()
            return self
        outer = self

        class Reads(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                outer.count += func is torch.ops.aten._local_scalar_dense.default
                return func(*args, **(kwargs or {}))

        self._cm = Reads()
        self._cm.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            sites = self._sites.stop(top=None)
            self.count = sum(s["calls"] for s in sites)
            self.where = [f"{s['where']} x{s['calls']}" for s in sites]
            return
        self._cm.__exit__(*exc)


@pytest.fixture
def host_reads():
    """``host_reads(device)`` -> a :class:`HostReads` to use as a context manager."""
    return HostReads
