"""The report's per-image loop (``wsss_fast.report.evaluate_split``) in loader worker processes
against the main process alone, at SIIM's sizes: 1024 x 1024 ground truth, CAM files at the
512-px working size, IRNet and segmentation label PNGs at 1024 x 1024; 22 % of the images
positive (SIIM's share). Each image: read the three outputs, resize the CAM maps to the mask,
count confusion matrices and Dice for the three steps (Viniavskyi et al., AIME 2020, Table 3).

Run: PYTHONPATH=$PWD python -m pytest benchmarks/bench_evaluate.py --benchmark-only
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from wsss_fast.config import load_config
from wsss_fast.engine.files import save_cam_file
from wsss_fast.engine.paths import RunPaths
from wsss_fast.report import evaluate_split

N, ORIG, WORK = 48, 1024, 512
WORKERS = sorted({0, 2, min(8, os.cpu_count() or 1)})


class _Split:
    """Masks of N images: a disk on the positive ones (22 %, spread evenly over the split)."""

    num_classes, class_names = 1, ["pneumothorax"]

    def __init__(self) -> None:
        self.image_ids = [f"b{i:03d}" for i in range(N)]
        self.labels = np.zeros((N, 1), np.float32)
        self.labels[np.linspace(0, N - 1, round(0.22 * N)).astype(int)] = 1

    def __len__(self) -> int:
        return N

    def load_mask(self, i: int) -> np.ndarray:
        if not self.labels[i, 0]:
            return np.zeros((ORIG, ORIG), np.uint8)
        yy, xx = np.ogrid[:ORIG, :ORIG]
        return (((yy - 400 - 3 * i) ** 2 + (xx - 600) ** 2) < 150**2).astype(np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    paths = RunPaths(tmp_path_factory.mktemp("evaluate"))
    split = _Split()
    for folder in (paths.sem_seg, paths.seg_pred):
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(split.image_ids):
        gt = split.load_mask(i)
        if split.labels[i, 0]:
            hr = np.asarray(Image.fromarray(gt * 255).resize((WORK, WORK), Image.BILINEAR), np.float32)[None] / 255
            hr = np.clip(hr + 0.1 * rng.random(hr.shape, np.float32), 0, 1)
            save_cam_file(paths.cam / f"{name}.npy", np.array([0]), hr[:, ::4, ::4], hr)
        else:
            save_cam_file(paths.cam / f"{name}.npy", np.zeros(0, np.int64), np.zeros((0, WORK // 4, WORK // 4)),
                          np.zeros((0, WORK, WORK)))
        Image.fromarray(np.roll(gt, 7, axis=1)).save(paths.sem_seg / f"{name}.png")
        Image.fromarray(np.roll(gt, -5, axis=0)).save(paths.seg_pred / f"{name}.png")
    return paths, split


@pytest.mark.parametrize("workers", WORKERS)
def test_evaluate_split(benchmark, run, workers):
    paths, split = run
    cfg = load_config(None, {"num_workers": workers})
    benchmark.group = f"evaluate-siim-{N}-images"
    benchmark.extra_info.update(images=N, workers=workers, cpus=os.cpu_count())
    out, missing = benchmark.pedantic(evaluate_split, args=(cfg, paths, split, 0.3, "bench"), rounds=3,
                                      warmup_rounds=1)
    assert not missing and out["seg"]["n_images"] == N
