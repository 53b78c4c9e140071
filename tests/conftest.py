"""Shared fixtures: device parametrization (CUDA skipped without a GPU)."""

from __future__ import annotations

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
