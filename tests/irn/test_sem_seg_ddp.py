"""make-sem-seg's choice of the walk on val under a real ``torchrun`` (2 CPU processes): each
rank walks its share of the val images, the ranks pool their counts, and every rank makes the
choice one process makes from all of them."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest

from wsss_fast.engine.paths import RunPaths
from wsss_fast.irn.ir_label import make_ir_label
from wsss_fast.irn.sem_seg import walk_settings
from wsss_fast.irn.train import train_irn
from wsss_fast.metrics import SegEvaluator

from ..cam.test_make_ddp import torchrun
from .conftest import tiny_cfg

# the steps / thresholds / masks make-sem-seg chooses from; val has 4 images (2 positive)
TUNE = {"steps": "val", "bg_thres": "val", "edge_mask": "val", "val_steps": [0, 4, 32],
        "eval_thresholds": [0.2, 0.5, 0.8], "splits": ["val"]}

SCRIPT = """
import importlib.util, json, os, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
spec = importlib.util.spec_from_file_location("irn_conftest", {conftest!r})
conf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conf)
import wsss_fast.irn.common as common
import wsss_fast.irn.sem_seg as sem_seg
from wsss_fast.engine.paths import RunPaths

datasets = {{s: conf.FakeDataset(**kw) for s, kw in conf.SPLITS.items()}}
common.build_split = lambda cfg, split, paths, train=False: datasets[split]
walked = []
counts = sem_seg._val_counts
def spy(cfg, paths, device, base, indices, *args, **kw):
    walked.append([base.image_ids[i] for i in indices] if indices is not None else list(base.image_ids))
    return counts(cfg, paths, device, base, indices, *args, **kw)
sem_seg._val_counts = spy
cfg = conf.tiny_cfg(sem_seg={tune!r})
res = sem_seg.walk_settings(cfg, RunPaths({out!r}))
rank = os.environ["RANK"]
with open(os.path.join({out!r}, f"rank{{rank}}.json"), "w") as f:
    json.dump({{"walked": walked, "res": res}}, f)
"""


def test_merge_equals_one_evaluator():
    rng = np.random.default_rng(0)
    images = [(rng.integers(0, 3, (5, 7)), rng.integers(0, 3, (5, 7))) for _ in range(6)]
    images[2][1][:] = 0  # a negative image
    images[4][1][0, :3] = 255  # ignored pixels
    one, parts = SegEvaluator(3), [SegEvaluator(3), SegEvaluator(3)]
    for i, (pred, gt) in enumerate(images):
        one.add(pred, gt)
        parts[i % 2].add(pred, gt)
    merged = parts[0].merge(parts[1])
    assert merged is parts[0]
    a, b = one.result(), merged.result()
    assert (a["n_images"], a["n_pos"]) == (b["n_images"], b["n_pos"]) == (6, 5)
    for k in ("miou_all", "miou_pos", "dice"):
        assert a[k] == pytest.approx(b[k], abs=1e-12)
    np.testing.assert_array_equal(one.conf_all, merged.conf_all)
    np.testing.assert_array_equal(one.conf_pos, merged.conf_pos)
    with pytest.raises(ValueError, match="2 classes"):
        SegEvaluator(3).merge(SegEvaluator(2))


def test_walk_chosen_on_val_under_torchrun_pools_the_ranks(fake_data, tmp_path):
    paths, datasets = fake_data
    cfg = tiny_cfg(irn={"epochs": 2}, sem_seg=TUNE)
    make_ir_label(tiny_cfg(), paths)
    train_irn(cfg, paths)
    out = RunPaths(tmp_path / "ddp")
    shutil.copytree(paths.cam, out.cam)
    shutil.copytree(paths.irn, out.irn)
    one = walk_settings(cfg, paths)  # one process, every val image

    here = Path(__file__).resolve()
    script = tmp_path / "tune_ddp.py"
    script.write_text(textwrap.dedent(SCRIPT).format(tests=str(here.parents[2]), conftest=str(here.with_name(
        "conftest.py")), tune=TUNE, out=str(out.root)))
    torchrun(script)
    ranks = [json.loads((out.root / f"rank{r}.json").read_text()) for r in range(2)]
    val = list(datasets["val"].image_ids)
    # each rank walked its own half of val, once
    assert [r["walked"] for r in ranks] == [[val[0::2]], [val[1::2]]]
    stored = json.loads((out.sem_seg / "tune.json").read_text())
    assert ranks[0]["res"] == ranks[1]["res"] == stored
    grid = {(m, n, t): r for m, g in one["grids"].items() for n, row in g.items() for t, r in row.items()}
    pooled = {(m, n, t): r for m, g in stored["grids"].items() for n, row in g.items() for t, r in row.items()}
    assert pooled.keys() == grid.keys() and len(grid) == 18
    assert len({round(r["miou_all"], 9) for r in grid.values()}) > 2  # the grid is not flat
    for k, r in grid.items():
        for metric in ("miou_all", "miou_pos", "dice"):
            assert pooled[k][metric] == pytest.approx(r[metric], abs=2e-3), (k, metric)
    assert (stored["steps"], stored["bg_thres"], stored["edge_mask"]) == (one["steps"], one["bg_thres"],
                                                                         one["edge_mask"])
