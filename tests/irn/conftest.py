"""Tiny synthetic data for the IRNet-step tests: a fake dataset following the data contract,
CAM files made from its masks, and a config for a resnet18 at 64 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from wsss_fast.config import load_config
from wsss_fast.engine.paths import RunPaths
from wsss_fast.engine.files import save_cam_file

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class FakeDataset:
    """Gray images (original 80 x 72) with a bright disk on positives; working size 64 x 64."""

    num_classes = 1
    class_names = ["disk"]

    def __init__(self, n: int = 8, work: int = 64, orig=(80, 72), seed: int = 0, prefix: str = "img"):
        rng = np.random.default_rng(seed)
        self.work, self.orig = work, orig
        self.image_ids = [f"{prefix}{i:02d}" for i in range(n)]
        self.labels = np.zeros((n, 1), np.float32)
        self.labels[::2] = 1  # even images are positive
        self._centers = [(rng.uniform(0.3, 0.7) * orig[0], rng.uniform(0.3, 0.7) * orig[1]) for _ in range(n)]
        self._noise = [rng.integers(0, 30, size=orig, dtype=np.uint8) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.image_ids)

    def load_mask(self, i: int) -> np.ndarray:
        yy, xx = np.mgrid[: self.orig[0], : self.orig[1]]
        cy, cx = self._centers[i]
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < (0.22 * self.orig[0]) ** 2
        return (inside & bool(self.labels[i, 0])).astype(np.uint8)

    def load_image(self, i: int) -> np.ndarray:
        g = (40 + self._noise[i] + 150 * self.load_mask(i)).astype(np.uint8)
        return np.stack([g] * 3, -1)

    def original_size(self, i: int) -> tuple[int, int]:
        return self.orig

    def __getitem__(self, i: int) -> dict:
        img = torch.from_numpy(self.load_image(i)).permute(2, 0, 1).float()[None] / 255
        img = torch.nn.functional.interpolate(img, size=(self.work, self.work), mode="bilinear",
                                              align_corners=False)[0]
        img = (img - torch.from_numpy(MEAN).view(3, 1, 1)) / torch.from_numpy(STD).view(3, 1, 1)
        return {"image": img, "label": torch.from_numpy(self.labels[i]), "image_id": self.image_ids[i],
                "mask": torch.from_numpy(self.load_mask(i)), "orig_size": self.orig}


def write_cams(ds: FakeDataset, paths: RunPaths) -> None:
    """CAM files from the masks: a blurred disk (positives) or no class (negatives)."""
    w = ds.work
    for i, image_id in enumerate(ds.image_ids):
        if ds.labels[i, 0] == 0:
            h4 = (w + 3) // 4
            save_cam_file(paths.cam / f"{image_id}.npy", np.zeros(0, np.int64), np.zeros((0, h4, h4)),
                          np.zeros((0, w, w)))
            continue
        m = torch.from_numpy(ds.load_mask(i)).float()[None, None]
        m = torch.nn.functional.interpolate(m, size=(w, w), mode="bilinear", align_corners=False)[0, 0].numpy()
        hr = ndimage.gaussian_filter(m, 4)
        hr = hr / hr.max()
        cam = torch.nn.functional.interpolate(torch.from_numpy(hr)[None, None], size=((w + 3) // 4,) * 2,
                                              mode="bilinear", align_corners=False)[0].numpy()
        save_cam_file(paths.cam / f"{image_id}.npy", np.array([0]), cam, hr[None])


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every IRNet test runs on one intra-op thread (see the root conftest's ``one_thread``)."""
    yield


SPLITS = {"train": dict(n=8, seed=0, prefix="tr"), "val": dict(n=4, seed=1, prefix="va"),
          "test": dict(n=2, seed=2, prefix="te")}


def assert_one_in_flight(calls: list[tuple[str, object]]) -> list:
    """Asserts one batch in flight in ``calls``, the ``("launch", key)`` / ``("finish", key)``
    events of a step in the order they happened: every launched key is finished once, in launch
    order, and only after the next key was launched. Returns the launched keys."""
    launched = [key for what, key in calls if what == "launch"]
    assert [key for what, key in calls if what == "finish"] == launched
    for key, after in zip(launched, launched[1:]):
        assert calls.index(("finish", key)) > calls.index(("launch", after))
    return launched


def tiny_cfg(**over) -> dict:
    o = {"device": "cpu", "num_workers": 0, "seed": 0,
         "ir_label": {"workers": 0, "conf_fg_thres": 0.30, "conf_bg_thres": 0.05},  # IRNet's; "val": tests
         "irn": {"backbone": "resnet18", "crop_size": 64, "radius": 5, "epochs": 4, "batch_size": 4,
                 "log_every": 1, "amp": False},
         "sem_seg": {"steps": 8, "bg_thres": 0.25, "batch_size": 3, "processes": 1, "workers": 0},
         "show": {"split": "val", "num_images": 2, "tile_size": 64}}
    for k, v in over.items():
        o.setdefault(k, {}).update(v) if isinstance(v, dict) else o.__setitem__(k, v)
    return load_config(None, o)


@pytest.fixture
def fake_data(monkeypatch, tmp_path):
    """(paths, datasets) with CAM files written; ``build_split`` returns the fake datasets."""
    import wsss_fast.irn.common as common

    datasets = {s: FakeDataset(**kw) for s, kw in SPLITS.items()}
    monkeypatch.setattr(common, "build_split", lambda cfg, split, paths, train=False: datasets[split])
    paths = RunPaths(tmp_path / "run")
    for ds in datasets.values():
        write_cams(ds, paths)
    return paths, datasets
