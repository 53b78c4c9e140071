"""Benchmark of gradcampp_weights against its pure-PyTorch reference.

ResNet50 layer4-like gradients of 3 classes (CUDA: batch 16 at 512 px, [16, 3, 2048, 16, 16];
CPU: ResNet18 layer4 at 224 px, [4, 3, 512, 7, 7]). The maps of these weights are
benchmarked in bench_weighted_cam.py.

Run: PYTHONPATH=$PWD python -m pytest benchmarks/bench_gradcampp_weights.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import DEVICES, record
from wsss_fast.ops.gradcampp_weights import gradcampp_weights
from wsss_fast.reference.gradcampp_weights import gradcampp_weights as ref_weights

SHAPES = {"cpu": (4, 3, 512, 7, 7, 224), "cuda": (16, 3, 2048, 16, 16, 512)}


def _inputs(device):
    b, c, k, h, w, size = SHAPES[device]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(b, k, h, w, generator=g).relu().to(device)
    grads = (torch.randn(c, b, k, h, w, generator=g) * 1e-3).to(device).transpose(0, 1)  # as autograd returns
    return a, grads, size


@pytest.mark.parametrize("impl", ["ours", "reference"])
@pytest.mark.parametrize("device", DEVICES)
def test_gradcampp_weights(benchmark, device, impl):
    from wsss_fast._ext import has_op

    assert has_op("gradcampp_weights"), "build the extension first"
    a, g, _ = _inputs(device)
    benchmark.group = f"gradcampp_weights-{device}"
    fn = (lambda: gradcampp_weights(a, g)) if impl == "ours" else (lambda: ref_weights(a, g))
    record(benchmark, fn, device, shape=list(g.shape))
