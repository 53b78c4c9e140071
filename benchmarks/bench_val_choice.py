"""make-ir-label's choices on val at SIIM's sizes: the CAM threshold sweep (``eval_cam`` on val)
and the confident-fg threshold (``fg_threshold_on_val``, CRF off: its maps and counts only), each
per image in ``num_workers`` loader processes against the main process alone; and the fg maps
and counts of one image (18 thresholds, 512 x 512) against IRNet's padded argmax per threshold
with the pixel sets counted one by one, as the choice computed them before. The thresholds follow
IRNet's ``cam_to_ir_label`` (Ahn et al., CVPR 2019); 48 images, 22 % positive (SIIM's share),
1024 x 1024 masks, CAM files at 512 px (:mod:`benchmarks.bench_evaluate`'s set).

Run: PYTHONPATH=$PWD python -m pytest benchmarks/bench_val_choice.py --benchmark-only
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from benchmarks.bench_evaluate import N, WORK, WORKERS, run  # noqa: F401 (the fixture)
from wsss_fast.cam.make import eval_cam
from wsss_fast.config import load_config
from wsss_fast.irn.ir_label import _fg_counts, _fg_maps, fg_threshold_on_val

THRESHOLDS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99]


def _cfg(workers: int) -> dict:
    return load_config(None, {"num_workers": workers, "cam": {"eval_thresholds": THRESHOLDS, "eval_splits": ["val"]},
                              "ir_label": {"crf": {"enabled": False}}})


@pytest.fixture
def as_val(run, monkeypatch):
    """The set as every split (eval_cam and the fg choice build 'val')."""
    import wsss_fast.data as data
    import wsss_fast.irn.common as common

    paths, split = run
    monkeypatch.setattr(data, "build_dataset", lambda cfg, name, paths, train=False: split)
    monkeypatch.setattr(common, "build_split", lambda cfg, name, paths, train=False: split)
    return paths


@pytest.mark.parametrize("workers", WORKERS)
def test_eval_cam(benchmark, as_val, workers):
    benchmark.group = f"eval_cam-siim-{N}-images"
    benchmark.extra_info.update(images=N, workers=workers, cpus=os.cpu_count(), thresholds=len(THRESHOLDS))
    out = benchmark.pedantic(eval_cam, args=(_cfg(workers), as_val), rounds=3, warmup_rounds=1)
    assert out["splits"]["val"]["n_images"] == N


@pytest.mark.parametrize("workers", WORKERS)
def test_fg_threshold_on_val(benchmark, as_val, workers):
    benchmark.group = f"fg_threshold_on_val-siim-{N}-images"
    benchmark.extra_info.update(images=N, workers=workers, cpus=os.cpu_count(), thresholds=len(THRESHOLDS))
    _, rows = benchmark.pedantic(fg_threshold_on_val, args=(_cfg(workers), as_val), rounds=3, warmup_rounds=1)
    assert rows[0]["images"] > 0


def _padded_argmax_counts(cams: np.ndarray, keys: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The former way: IRNet's padded argmax per threshold, then each pixel set counted."""
    preds = np.stack([np.argmax(np.concatenate([np.full((1,) + cams.shape[1:], t, np.float32), cams]), 0)
                      for t in THRESHOLDS])
    lab, valid = keys[preds], gt != 255
    hit = (lab == gt) & valid
    return np.stack([((lab > 0) & hit).sum((1, 2)), ((lab > 0) & ~hit & valid).sum((1, 2)),
                     ((gt > 0) & ~hit & valid).sum((1, 2)), (lab > 0).any((1, 2))])


@pytest.mark.parametrize("impl", ["fg_maps", "padded_argmax"])
def test_fg_maps_counts(benchmark, impl):
    rng = np.random.default_rng(0)
    cams = rng.random((1, WORK, WORK), dtype=np.float32)
    keys = np.array([0, 1])
    gt = (rng.random((WORK, WORK)) < 0.05).astype(np.uint8)
    gt[:8] = 255
    benchmark.group = f"fg_maps_counts-{WORK}px-{len(THRESHOLDS)}-thresholds"
    benchmark.extra_info.update(impl=impl, thresholds=len(THRESHOLDS))
    if impl == "fg_maps":
        out = benchmark(lambda: _fg_counts(_fg_maps(cams, THRESHOLDS, np.uint8), keys, gt))
    else:
        out = benchmark(_padded_argmax_counts, cams, keys, gt)
    np.testing.assert_array_equal(out, _padded_argmax_counts(cams, keys, gt))
