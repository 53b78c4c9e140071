"""make-sem-seg / eval-sem-seg with several classes per image: CAM channel -> class id, the
background threshold against several class maps, zero-padded CAMs in a batch of images with
different numbers of classes, and the sweep's labels.

The boundary network is a stub whose edges are 0.999 everywhere: the walk starts from
``cam * (1 - edge)`` and every affinity is ``0.001 ** beta``, so up to the common factor,
which the division by the maximum removes, the walk is the identity and the expected labels
follow from the CAMs alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_fast.engine.files import read_png
from wsss_fast.irn.sem_seg import eval_sem_seg, make_sem_seg
from wsss_fast.irn.walk import labels_from_soft
from wsss_fast.metrics import SegEvaluator
from wsss_fast.engine.paths import RunPaths
from wsss_fast.engine.files import save_cam_file

from .conftest import MEAN, STD, tiny_cfg

WORK, ORIG, G = 64, (80, 72), 16  # working size, original size, stride-4 grid
BG = 0.28  # background score (not the default 0.25)
# the CAM of each channel in the four 8x8 quadrants of the grid (top-left, top-right,
# bottom-left, bottom-right). Channel 0 holds the image's maximum (1.0), channel 1 only 0.6:
# labels come from the maps divided by the image's maximum, not each map's own.
QUAD = [[1.0, 0.5, 0.3, 0.26], [0.0, 0.6, 0.2, 0.19], [0.0, 0.0, 0.0, 0.5]]
# per image: the positive classes (CAM keys); batches of 3 mix 2, 1, 0 and 3, 1, 2 classes
KEYS = [[3, 7], [5], [], [0, 3, 7], [7], [2, 6]]


def _quadrant_labels(keys: list[int]) -> list[int]:
    """Expected label of each quadrant: the best class above BG, 0 if none."""
    out = []
    for q in range(4):
        vals = [QUAD[c][q] for c in range(len(keys))]
        out.append(keys[int(np.argmax(vals))] + 1 if vals and max(vals) > BG else 0)
    return out


def _label_map(keys: list[int]) -> np.ndarray:
    """The blocky label map [H0, W0] of the quadrants (also the ground truth)."""
    lab = np.zeros(ORIG, np.uint8)
    h, w = ORIG[0] // 2, ORIG[1] // 2
    for q, v in enumerate(_quadrant_labels(keys)):
        lab[(q // 2) * h:(q // 2 + 1) * h, (q % 2) * w:(q % 2 + 1) * w] = v
    return lab


class MultiFake:
    """Eight classes; the ground truth is the quadrant labels of the image's CAMs."""

    num_classes = 8
    class_names = [f"c{c}" for c in range(8)]

    def __init__(self):
        self.image_ids = [f"mc{i}" for i in range(len(KEYS))]
        self.labels = np.zeros((len(KEYS), 8), np.float32)
        for i, keys in enumerate(KEYS):
            self.labels[i, keys] = 1

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_mask(self, i: int) -> np.ndarray:
        return _label_map(KEYS[i])

    def original_size(self, i: int) -> tuple[int, int]:
        return ORIG

    def __getitem__(self, i: int) -> dict:
        img = torch.full((3, WORK, WORK), 0.5)
        img = (img - torch.from_numpy(MEAN).view(3, 1, 1)) / torch.from_numpy(STD).view(3, 1, 1)
        return {"image": img, "label": torch.from_numpy(self.labels[i]), "image_id": self.image_ids[i],
                "mask": torch.from_numpy(self.load_mask(i)), "orig_size": ORIG}


class WallNet(torch.nn.Module):
    """IRNet stand-in: edge logits of 6.9 everywhere (sigmoid 0.999), zero displacement."""

    def forward(self, x, displacement=True):
        h, w = (x.shape[-2] + 3) // 4, (x.shape[-1] + 3) // 4
        return x.new_full((x.shape[0], 1, h, w), 6.9), x.new_zeros((x.shape[0], 2, h, w)) if displacement else None


@pytest.fixture
def multi(monkeypatch, tmp_path):
    import wsss_fast.irn.common as common
    import wsss_fast.irn.sem_seg as sem_seg

    ds = MultiFake()
    monkeypatch.setattr(common, "build_split", lambda cfg, split, paths, train=False: ds)
    monkeypatch.setattr(sem_seg, "load_irnet", lambda path, map_location="cpu": WallNet())
    paths = RunPaths(tmp_path / "run")
    paths.irn.mkdir(parents=True)
    (paths.irn / "final.pt").write_bytes(b"")  # make-sem-seg checks that the weights exist
    for image_id, keys in zip(ds.image_ids, KEYS):
        cam = np.zeros((len(keys), G, G), np.float32)
        for c in range(len(keys)):
            for q in range(4):
                cam[c, (q // 2) * 8:(q // 2 + 1) * 8, (q % 2) * 8:(q % 2 + 1) * 8] = QUAD[c][q]
        hr = cam.repeat(4, 1).repeat(4, 2)
        save_cam_file(paths.cam / f"{image_id}.npy", np.array(keys, np.int64), cam, hr)
    cfg = tiny_cfg(sem_seg={"bg_thres": BG, "batch_size": 3, "splits": ["train"],
                            "eval_thresholds": [0.1, 0.2, BG, 0.4, 0.55]})
    return cfg, paths, ds


def test_labels_of_several_classes(multi):
    cfg, paths, ds = multi
    make_sem_seg(cfg, paths)
    assert paths.is_done(paths.sem_seg)
    seen = set()
    for i, (image_id, keys) in enumerate(zip(ds.image_ids, KEYS)):
        png = read_png(paths.sem_seg / f"{image_id}.png")
        rw = np.load(paths.rw / f"{image_id}.npy").astype(np.float32)
        assert png.shape == ORIG and rw.shape == (len(keys), WORK, WORK)
        assert set(np.unique(png)) <= {0, *(k + 1 for k in keys)}
        # the soft maps are the CAMs (identity walk) upsampled x4 and divided by their common max
        inner = rw[:, 4:28, 4:28], rw[:, 4:28, 36:60], rw[:, 36:60, 4:28], rw[:, 36:60, 36:60]
        for q, block in enumerate(inner):
            np.testing.assert_allclose(block.reshape(len(keys), -1).max(1) if len(keys) else [],
                                       [QUAD[c][q] for c in range(len(keys))], atol=2e-3)
        # quadrant interiors (6 px from any quadrant edge) carry the expected labels
        gt = _label_map(keys)
        inside = np.zeros(ORIG, bool)
        h, w = ORIG[0] // 2, ORIG[1] // 2
        for r in (slice(6, h - 6), slice(h + 6, 2 * h - 6)):
            for c in (slice(6, w - 6), slice(w + 6, 2 * w - 6)):
                inside[r, c] = True
        np.testing.assert_array_equal(png[inside], gt[inside], err_msg=f"{image_id} keys {keys}")
        seen |= set(np.unique(png).tolist())
    assert {4, 8, 6, 1} <= seen  # keys 3, 7 (two-class images), 5 (one class), 0 (three classes)


def test_sweep_labels_of_several_classes(multi):
    cfg, paths, ds = multi
    make_sem_seg(cfg, paths)
    report = eval_sem_seg(cfg, paths)["train"]
    assert report["labels"]["miou_pos"] > 0.9  # the CAMs are the ground truth
    metrics = ("miou_all", "miou_pos", "dice")
    assert report["sweep"][f"{BG:g}"] == {k: pytest.approx(report["labels"][k]) for k in metrics}
    for t in cfg["sem_seg"]["eval_thresholds"]:
        ev = SegEvaluator(9, class_names=["background", *ds.class_names])
        for i, (image_id, keys) in enumerate(zip(ds.image_ids, KEYS)):
            rw = np.load(paths.rw / f"{image_id}.npy").astype(np.float32)
            ev.add(labels_from_soft(rw, np.array(keys, np.int64), t, ORIG), ds.load_mask(i), bool(keys))
        r = ev.result()
        for k in metrics:
            assert report["sweep"][f"{t:g}"][k] == pytest.approx(r[k], nan_ok=True), (t, k)
    # the sweep moves: a low threshold labels the background quadrants, a high one drops classes
    assert report["sweep"]["0.1"]["miou_pos"] < report["sweep"][f"{BG:g}"]["miou_pos"]
    assert report["sweep"]["0.55"]["miou_pos"] < report["sweep"][f"{BG:g}"]["miou_pos"]
