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


@pytest.fixture
def compiled_ops() -> None:
    """Skip-free guard: tests of the kernels must run on the compiled ops, never the fallback."""
    from wsss_fast._ext import has_ops

    assert has_ops(), "wsss_fast._C is not built; run `make build`"
