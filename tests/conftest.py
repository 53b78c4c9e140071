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
