"""VOC 2012 and generic-CSV loaders on tiny generated trees."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wsss_fast.config import load_config
from wsss_fast.data import BadFileError, GenericCSV, VOC2012, build_dataset, wsss_collate
from wsss_fast.data.voc import make_cls_labels
from wsss_fast.engine.paths import RunPaths


def _palette_png(path, arr):
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


@pytest.fixture
def voc_root(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClassAug", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    specs = {"2007_000001": (30, 40, [15]), "2007_000002": (36, 28, [1, 12]), "2008_000003": (20, 20, []),
             "2008_000004": (24, 32, [20])}
    for image_id, (h, w, classes) in specs.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        m = np.zeros((h, w), np.uint8)
        for k, c in enumerate(classes):
            m[2 + 5 * k: 6 + 5 * k, 3:9] = c
            m[1 + 5 * k, 3:9] = 255  # boundary pixels
        sub = "SegmentationClass" if image_id == "2008_000004" else "SegmentationClassAug"
        _palette_png(voc / sub / f"{image_id}.png", m)
    (voc / "ImageSets/Segmentation/train_aug.txt").write_text(
        "/JPEGImages/2007_000001.jpg /SegmentationClassAug/2007_000001.png\n"
        "/JPEGImages/2007_000002.jpg /SegmentationClassAug/2007_000002.png\n2008_000003\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2008_000004\n2007_000002\n")
    return tmp_path


def test_voc_labels_from_masks(voc_root):
    ds = VOC2012(voc_root, "train_aug", progress=False)
    assert ds.image_ids == ["2007_000001", "2007_000002", "2008_000003"]
    assert ds.labels.shape == (3, 20) and ds.num_classes == 20
    assert np.flatnonzero(ds.labels[0]).tolist() == [14]
    assert np.flatnonzero(ds.labels[1]).tolist() == [0, 11]
    assert ds.labels[2].sum() == 0
    item = ds[1]
    assert item["image"].shape == (3, 36, 28) and item["mask"].shape == (36, 28)
    assert set(item["mask"].unique().tolist()) == {0, 1, 12, 255}


def test_voc_val_and_cls_labels_npy(voc_root, tmp_path):
    val = VOC2012(voc_root / "VOCdevkit", "val", progress=False)  # root may be VOCdevkit too
    assert val.image_ids == ["2008_000004", "2007_000002"]
    assert np.flatnonzero(val.labels[0]).tolist() == [19]  # from SegmentationClass/ fallback
    npy = make_cls_labels(voc_root, tmp_path / "cls_labels.npy", splits=("train_aug",))
    # IRNet's integer keys work as well as string ids
    d = np.load(npy, allow_pickle=True).item()
    np.save(tmp_path / "int_keys.npy", {int(k.replace("_", "")): v for k, v in d.items()})
    a = VOC2012(voc_root, "train_aug", cls_labels=npy, progress=False)
    b = VOC2012(voc_root, "train_aug", cls_labels=tmp_path / "int_keys.npy", progress=False)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.labels, VOC2012(voc_root, "train_aug", progress=False).labels)
    batch = wsss_collate([val[0], val[1]] if val[0]["image"].shape == val[1]["image"].shape else [val[0]])
    assert isinstance(batch["mask"], list)


def test_voc_bad_files(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages" / "2008_000003.jpg").unlink()
    with pytest.raises(BadFileError, match="2008_000003"):
        VOC2012(voc_root, "train_aug", progress=False)
    _palette_png(voc / "SegmentationClassAug" / "2007_000001.png", np.zeros((5, 5)))
    with pytest.warns(RuntimeWarning, match="skipped 2"):
        ds = VOC2012(voc_root, "train_aug", on_bad_file="skip", progress=False)
    assert ds.image_ids == ["2007_000002"] and len(ds.skipped) == 2


def test_voc_mask_size_mismatch_raises_on_load(voc_root):
    voc = voc_root / "VOCdevkit" / "VOC2012"
    _palette_png(voc / "SegmentationClassAug" / "2007_000002.png", np.ones((5, 5)))
    ds = VOC2012(voc_root, "val", progress=False)  # labels come from the bad mask, size checked on load
    with pytest.raises(BadFileError, match="2007_000002.png is 5x5"):
        ds.load_mask(1)



def test_voc_item_size_is_height_width_and_index_is_bounded(voc_root):
    """Items of non-square images give ``orig_size`` as (H0, W0), the mask's shape (the CAMs and
    predictions are resized to it: (W0, H0) would transpose every label map), and indexing past
    either end raises IndexError (a loop over ``ds[i]`` stops there instead of wrapping round)."""
    ds = VOC2012(voc_root, "train_aug", progress=False)
    sizes = {"2007_000001": (30, 40), "2007_000002": (36, 28), "2008_000003": (20, 20)}
    for i in range(len(ds)):
        item = ds[i]
        h, w = sizes[item["image_id"]]
        assert item["orig_size"] == (h, w) == tuple(item["mask"].shape)
        assert item["image"].shape == (3, h, w)
    assert ds[-len(ds)]["image_id"] == "2007_000001"
    for bad in (len(ds), len(ds) + 1, -len(ds) - 1):
        with pytest.raises(IndexError):
            ds[bad]
    assert [item["image_id"] for item in ds] == list(sizes)  # the old iteration protocol stops


def test_voc_prefers_segmentation_class_aug(voc_root):
    """An image with a mask in both SegmentationClassAug/ and SegmentationClass/ takes SBD's
    augmented one, for its labels and its evaluation mask (SegmentationClass/ is the fallback)."""
    voc = voc_root / "VOCdevkit" / "VOC2012"
    other = np.zeros((30, 40), np.uint8)
    other[5:10, 5:10] = 3
    _palette_png(voc / "SegmentationClass" / "2007_000001.png", other)
    ds = VOC2012(voc_root, "train_aug", progress=False)
    assert np.flatnonzero(ds.labels[0]).tolist() == [14]
    assert set(ds[0]["mask"].unique().tolist()) == {0, 15, 255}


def test_voc_split_mixing_masked_and_unmasked_images(voc_root, tmp_path):
    """With labels from cls_labels.npy, a split where only some images have a mask (as VOC's
    test images lack them) still evaluates: the masked images' items carry their mask, the
    others none."""
    npy = make_cls_labels(voc_root, tmp_path / "cls_labels.npy", splits=("train_aug",))
    (voc_root / "VOCdevkit/VOC2012/SegmentationClassAug/2008_000003.png").unlink()
    ds = VOC2012(voc_root, "train_aug", cls_labels=npy, progress=False)
    assert ds.has_masks and len(ds) == 3
    assert set(ds[0]["mask"].unique().tolist()) == {0, 15, 255} and ds[1]["mask"].shape == (36, 28)
    assert "mask" not in ds[2] and ds.load_mask(2) is None


def test_make_cls_labels_with_num_classes(voc_root, tmp_path):
    """make_cls_labels(num_classes=N) writes N-long labels for a set of N classes (such as the
    synthetic VOC-layout set), which VOC2012(num_classes=N, cls_labels=...) reads back."""
    voc = voc_root / "VOCdevkit" / "VOC2012"
    for image_id, (h, w), classes in (("2007_000001", (30, 40), [2]), ("2007_000002", (36, 28), [1, 3])):
        m = np.zeros((h, w), np.uint8)
        for k, c in enumerate(classes):
            m[2 + 5 * k: 6 + 5 * k, 3:9] = c
        m[0, :] = 255
        _palette_png(voc / "SegmentationClassAug" / f"{image_id}.png", m)
    npy = make_cls_labels(voc_root, tmp_path / "cls3.npy", splits=("train_aug",), num_classes=3)
    d = np.load(npy, allow_pickle=True).item()
    assert sorted(d) == ["2007_000001", "2007_000002", "2008_000003"]
    assert {k: np.asarray(v).tolist() for k, v in d.items()} == {
        "2007_000001": [0, 1, 0], "2007_000002": [1, 0, 1], "2008_000003": [0, 0, 0]}
    ds = VOC2012(voc_root, "train_aug", cls_labels=npy, num_classes=3, progress=False)
    np.testing.assert_array_equal(ds.labels, [[0, 1, 0], [1, 0, 1], [0, 0, 0]])


@pytest.fixture
def generic_tree(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "img").mkdir()
    rows = ["image,mask,split,cat,dog"]
    for k in range(5):
        Image.fromarray(rng.integers(0, 255, (16, 12), dtype=np.uint8)).save(tmp_path / "img" / f"a{k}.png")
        m = np.zeros((16, 12), np.uint8)
        m[3:6, 2:5] = 1 + k % 2
        mask = ""
        if k != 4:
            Image.fromarray(m).save(tmp_path / "img" / f"a{k}_m.png")
            mask = f"img/a{k}_m.png"
        rows.append(f"img/a{k}.png,{mask},{'val' if k >= 3 else 'train'},{int(k % 2 == 0)},{int(k % 2 == 1)}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_generic_csv_columns(generic_tree):
    ds = GenericCSV(generic_tree / "data.csv")
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2 and len(ds) == 5
    np.testing.assert_array_equal(ds.labels[:2], [[1, 0], [0, 1]])
    item = ds[1]
    assert item["image"].shape == (3, 16, 12) and item["mask"].max() == 2
    assert "mask" not in ds[4] and ds.load_mask(4) is None
    val = GenericCSV(generic_tree / "data.csv", split="val")
    assert val.image_ids == ["a3", "a4"]


def test_generic_labels_column_and_build(generic_tree):
    (generic_tree / "names.csv").write_text("image,labels,id\nimg/a0.png,cat dog,x0\nimg/a1.png,,x1\n"
                                            "img/a2.png,dog,x2\n")
    ds = GenericCSV(generic_tree / "names.csv")
    assert ds.class_names == ["cat", "dog"] and ds.image_ids == ["x0", "x1", "x2"]
    np.testing.assert_array_equal(ds.labels, [[1, 1], [0, 0], [0, 1]])
    cfg = load_config(None, {"dataset": {"name": "generic", "csv": "data.csv", "root": str(generic_tree),
                                         "image_size": 8}})
    tr = build_dataset(cfg, "train", RunPaths(generic_tree / "run"), train=True)
    assert len(tr) == 3 and tr[0]["image"].shape == (3, 8, 8)


def test_generic_bad_rows(generic_tree):
    (generic_tree / "bad.csv").write_text("image,mask,cat\nimg/a0.png,,1\nimg/missing.png,,0\n"
                                          "img/a1.png,,2\nimg/a2.png,img/a0_m.png,1\n")
    with pytest.raises(BadFileError, match=r"missing\.png.*row 3"):
        GenericCSV(generic_tree / "bad.csv")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(generic_tree / "img" / "a0_m.png")  # wrong size
    with pytest.warns(RuntimeWarning, match="skipped 3"):
        ds = GenericCSV(generic_tree / "bad.csv", on_bad_file="skip")
    assert ds.image_ids == ["a0"]
    assert sorted(s["row"] for s in ds.skipped) == [3, 4, 5]


def test_generic_labels_column_of_indices_is_zero_based(generic_tree):
    """A ``labels`` column of numbers holds 0-based class indices: 0 is the first class name."""
    (generic_tree / "idx.csv").write_text("image,labels\nimg/a0.png,0\nimg/a1.png,1;0\nimg/a2.png,1\n")
    ds = GenericCSV(generic_tree / "idx.csv", class_names=["cat", "dog"])
    np.testing.assert_array_equal(ds.labels, [[1, 0], [1, 1], [0, 1]])
    (generic_tree / "idx2.csv").write_text("image,labels\nimg/a0.png,2\n")
    with pytest.raises(BadFileError, match="class index 2 >= 2"):
        GenericCSV(generic_tree / "idx2.csv", class_names=["cat", "dog"])


def test_generic_mask_with_ignore_255(generic_tree):
    """Generic masks may mark pixels 255 = ignore (object boundaries), as VOC's do: they load,
    in both on_bad_file modes, and keep the 255."""
    m = np.zeros((16, 12), np.uint8)
    m[3:6, 2:5] = 1
    m[2, 2:5] = 255
    Image.fromarray(m).save(generic_tree / "img" / "a0_m.png")
    for mode in ("raise", "skip"):
        ds = GenericCSV(generic_tree / "data.csv", on_bad_file=mode)
        assert len(ds) == 5 and ds.skipped == []
        assert set(ds[0]["mask"].unique().tolist()) == {0, 1, 255}


def test_generic_split_without_split_column_is_an_error(generic_tree):
    """Asking for a split of a CSV that has no ``split`` column raises a ValueError naming the
    split and the column, instead of silently training or evaluating on every row."""
    (generic_tree / "nosplit.csv").write_text("image,cat\nimg/a0.png,1\nimg/a1.png,0\n")
    assert len(GenericCSV(generic_tree / "nosplit.csv")) == 2
    with pytest.raises(ValueError, match="split 'val' requested.*no 'split' column"):
        GenericCSV(generic_tree / "nosplit.csv", split="val")
