"""Benchmark of weighted_cam against its pure-PyTorch reference.

The Grad-CAM++ maps of ResNet50 layer4-like activations and weights of 3 classes, upsampled
to the input size and min-max normalized (CUDA: batch 16 at 512 px, activations
[16, 2048, 16, 16]; CPU: ResNet18 layer4 at 224 px, [4, 512, 7, 7]); the same inputs as
bench_gradcampp_weights.py.

Run: PYTHONPATH=$PWD python -m pytest benchmarks/bench_weighted_cam.py --benchmark-only
"""

from __future__ import annotations

import pytest

from benchmarks.bench_gradcampp_weights import _inputs
from benchmarks.conftest import DEVICES, record
from wsss_fast.ops.gradcampp_weights import gradcampp_weights
from wsss_fast.ops.weighted_cam import weighted_cam
from wsss_fast.reference.weighted_cam import weighted_cam as ref_cam


@pytest.mark.parametrize("impl", ["ours", "reference"])
@pytest.mark.parametrize("device", DEVICES)
def test_weighted_cam(benchmark, device, impl):
    from wsss_fast._ext import has_op

    assert has_op("weighted_cam"), "build the extension first"
    a, g, size = _inputs(device)
    w = gradcampp_weights(a, g)
    benchmark.group = f"weighted_cam-{device}"
    f = weighted_cam if impl == "ours" else ref_cam
    record(benchmark, lambda: f(a, w, out_size=(size, size), normalize=True), device, shape=list(a.shape))
