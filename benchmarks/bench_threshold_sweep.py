"""Benchmark of the threshold sweeps (wsss_fast.metrics.add_sweep) against scoring one prediction
per threshold, the way the sweeps of eval-cam, eval-sem-seg, make-sem-seg's choice on val and
predict-seg's choice ran before: 17 background thresholds (sem_seg.eval_thresholds) of one image
at its original size, a SIIM radiograph (1024 x 1024, 2 classes) and a VOC image (500 x 375, 21).

Run: PYTHONPATH=$PWD python -m pytest benchmarks/bench_threshold_sweep.py --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.conftest import DEVICES, record
from wsss_fast.metrics import SegEvaluator, add_sweep, best_and_label

THRESHOLDS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99]
CASES = {"siim": ((1024, 1024), 2), "voc": ((375, 500), 21)}


def _inputs(kind: str, device: str):
    (h, w), n_cls = CASES[kind]
    g = torch.Generator().manual_seed(0)
    k = min(3, n_cls - 1)
    soft = torch.rand(k, h // 4, w // 4, generator=g)  # the walk's stride-4 maps, upsampled per image
    keys = np.arange(k) * (n_cls - 1) // k
    gt = torch.randint(0, n_cls, (h, w), generator=g)
    gt[torch.rand(h, w, generator=g) < 0.05] = 255
    best, label = best_and_label(soft.to(device), keys, (h, w))
    return best, label, gt.to(device), n_cls


@pytest.mark.parametrize("impl", ["sweep", "per_threshold"])
@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("device", DEVICES)
def test_threshold_sweep(benchmark, device, kind, impl):
    best, label, gt, n_cls = _inputs(kind, device)
    benchmark.group = f"threshold_sweep-{kind}-{device}"

    def sweep():
        add_sweep([SegEvaluator(n_cls) for _ in THRESHOLDS], best, label, gt, THRESHOLDS, True)

    def per_threshold():
        gt_np = gt.cpu().numpy()
        for ev, t in zip([SegEvaluator(n_cls) for _ in THRESHOLDS], THRESHOLDS):
            ev.add(torch.where(best > t, label, 0).cpu().numpy(), gt_np, True)

    record(benchmark, sweep if impl == "sweep" else per_threshold, device, impl=impl, thresholds=len(THRESHOLDS))
