"""The built-in synthetic multi-class scenes and their VOC layout, read by the VOC loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from wsss_fast.config import load_config
from wsss_fast.data import VOC2012, build_dataset, write_synthetic_from_config
from wsss_fast.data.synthetic_voc import (generate_scene, split_synthetic_voc, synthetic_voc_class_names,
                                          write_synthetic_voc)
from wsss_fast.engine.paths import RunPaths

N, SIZE, C = 24, 64, 4


@pytest.fixture(scope="module")
def voc_set(tmp_path_factory):
    """A 24-scene, 64 px, 4-class set (12 / 6 / 6); read-only."""
    root = tmp_path_factory.mktemp("synth_voc")
    write_synthetic_voc(root, N, SIZE, seed=3, num_classes=C,
                        split_counts={"train": [2, 0], "val": [1, 0], "test": [1, 0]}, progress=False)
    return root


def test_deterministic_by_seed_and_index():
    a, am = generate_scene(5, 64, seed=1)
    b, bm = generate_scene(5, 64, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(am, bm)
    assert not np.array_equal(a, generate_scene(5, 64, seed=2)[0])
    assert not np.array_equal(a, generate_scene(6, 64, seed=1)[0])


@pytest.mark.parametrize("size", [64, 128])
def test_scenes_objects_classes_and_ignore_band(size):
    areas, n_two = [], 0
    for i in range(1, 25):
        img, m = generate_scene(i, size, seed=0, num_classes=C)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8 and m.shape == (size, size)
        vals = set(np.unique(m).tolist())
        assert vals <= {0, 1, 2, 3, 4, 255} and 0 in vals and 255 in vals
        classes = sorted(vals - {0, 255})
        assert 1 <= len(classes) <= 2 and (i % C) + 1 in classes  # the first object's class is i % C
        n_two += len(classes) == 2
        # 255 lies exactly on the boundaries of the label map: never inside an object or the
        # background, and every pixel touching two labels is in it (a band 2 px wide)
        band = m == 255
        for v in [0] + classes:
            region = m == v
            assert not (ndimage.binary_dilation(region, np.ones((3, 3))) & ~region & ~band).any(), (i, v)
            if v:
                areas.append(region.sum() / m.size)
        # ... and it is thin: only at star tips and narrow gaps has a band pixel band all around
        assert ndimage.binary_erosion(band, np.ones((3, 3))).sum() <= 0.15 * band.sum()
        # the image is not flat inside the objects (textured) nor a copy of the mask
        assert img[(m > 0) & (m < 255)].std() > 5 and img[m == 0].std() > 5
    assert n_two >= 4 and max(areas) > 0.1 and min(areas) < 0.05  # objects of varied size


def test_class_names_and_bad_arguments():
    assert synthetic_voc_class_names(4) == ["disc", "box", "star", "ring"]
    with pytest.raises(ValueError):
        synthetic_voc_class_names(9)
    with pytest.raises(ValueError, match="image_size"):
        generate_scene(0, 16)


def test_split_is_stratified_disjoint_and_complete():
    s = split_synthetic_voc(40, 4, seed=0, split_counts={"train": [3, 0], "val": [1, 0], "test": [1, 0]})
    assert [len(s[k]) for k in ("train", "val", "test")] == [24, 8, 8]
    every = [i for k in s for i in s[k]]
    assert sorted(every) == [f"synth_{i:06d}" for i in range(1, 41)]
    for k in ("val", "test"):  # two scenes of each first class per 8-scene split
        assert sorted(int(i[-6:]) % 4 for i in s[k]) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert split_synthetic_voc(40, 4, 1)["val"] != split_synthetic_voc(40, 4, 0)["val"]


def test_layout_read_by_voc_loader(voc_set):
    voc = voc_set / "VOCdevkit" / "VOC2012"
    lists = {k: (voc / "ImageSets/Segmentation" / f"{k}.txt").read_text().split() for k in
             ("train_aug", "train", "val", "test")}
    assert lists["train_aug"] == lists["train"] and [len(lists[k]) for k in ("train", "val", "test")] == [12, 6, 6]
    png = Image.open(voc / "SegmentationClassAug" / f"{lists['val'][0]}.png")
    assert png.mode == "P" and png.getpalette()[3:6] == [128, 0, 0]  # VOC's colour map
    jpg = Image.open(voc / "JPEGImages" / f"{lists['val'][0]}.jpg")
    assert jpg.format == "JPEG" and jpg.size == (SIZE, SIZE)
    names = synthetic_voc_class_names(C)
    for split in ("train", "val", "test"):
        ds = VOC2012(voc_set, split, num_classes=C, class_names=names, progress=False)
        assert ds.image_ids == lists[split] and ds.labels.shape == (len(ds), C)
        assert ds.class_names == names and ds.num_classes == C
        for i, image_id in enumerate(ds.image_ids):
            index = int(image_id.removeprefix("synth_"))
            img, m = generate_scene(index, SIZE, seed=3, num_classes=C)
            np.testing.assert_array_equal(ds.load_mask(i), m)  # masks stored losslessly
            err = np.abs(ds.load_image(i).astype(int) - img).mean()  # JPEG at quality 95, 4:2:0
            assert err < 10 and err < 0.5 * np.abs(ds.load_image(i).astype(int) - generate_scene(
                index + 1, SIZE, seed=3, num_classes=C)[0]).mean()
            expect = np.zeros(C, np.float32)
            expect[[v - 1 for v in np.unique(m) if 1 <= v <= C]] = 1
            np.testing.assert_array_equal(ds.labels[i], expect)
            assert ds.labels[i].sum() >= 1  # every scene has an object


def test_voc_loader_rejects_class_ids_above_num_classes(voc_set):
    from wsss_fast.data import BadFileError

    with pytest.raises(BadFileError, match="above num_classes=2"):
        VOC2012(voc_set, "train", num_classes=2, progress=False)
    with pytest.raises(ValueError, match="class_names"):
        VOC2012(voc_set, "train", num_classes=C, class_names=["a"], progress=False)
    ds = VOC2012(voc_set, "val", num_classes=C, progress=False)
    assert ds.class_names == ["class1", "class2", "class3", "class4"]


def test_write_is_idempotent_and_rewrites_on_new_parameters(tmp_path):
    write_synthetic_voc(tmp_path, 6, 48, seed=0, num_classes=3, progress=False)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    jpg, stamp = voc / "JPEGImages" / "synth_000001.jpg", voc / ".wsss_synthetic_voc.json"
    t_jpg, t_stamp = jpg.stat().st_mtime_ns, stamp.stat().st_mtime_ns
    write_synthetic_voc(tmp_path, 6, 48, seed=0, num_classes=3, progress=False)
    assert (jpg.stat().st_mtime_ns, stamp.stat().st_mtime_ns) == (t_jpg, t_stamp)
    write_synthetic_voc(tmp_path, 6, 48, seed=1, num_classes=3, progress=False)
    assert json.loads(stamp.read_text())["seed"] == 1 and jpg.stat().st_mtime_ns != t_jpg


def test_build_dataset_synthetic_voc(tmp_path):
    cfg = load_config("demo_voc", {"dataset": {"synthetic": {"num_images": 12, "image_size": 48},
                                               "image_size": 48}})
    paths = RunPaths(tmp_path / "run")
    ds = build_dataset(cfg, "test", paths, train=False)
    assert isinstance(ds, VOC2012) and ds.class_names == ["disc", "box", "star", "ring"]
    assert (tmp_path / "run/data/synthetic/VOCdevkit/VOC2012/ImageSets/Segmentation/test.txt").exists()
    item = ds[0]
    assert item["image"].shape == (3, 48, 48) and item["label"].shape == (4,)
    # write_synthetic_from_config dispatches on dataset.name
    root = write_synthetic_from_config(cfg, tmp_path / "other")
    assert (root / "VOCdevkit/VOC2012/JPEGImages").is_dir() and not (root / "train-rle.csv").exists()
    siim = write_synthetic_from_config(load_config("demo", {"dataset": {"synthetic": {"num_images": 2,
                                                                                        "image_size": 48}}}),
                                       tmp_path / "siim")
    assert (siim / "train-rle.csv").exists() and not (siim / "VOCdevkit").exists()
