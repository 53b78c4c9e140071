"""SIIM loader on a written synthetic set: DICOM (MONOCHROME1, 16-bit), PNG variant, splits."""

from __future__ import annotations

import csv
import json

import numpy as np
import pydicom
import pytest
import torch

from wsss_fast.config import load_config
from wsss_fast.data import SIIMPneumothorax, build_dataset, stratified_split
from wsss_fast.data.base import BadFileError
from wsss_fast.data.dicom import read_dicom
from wsss_fast.data.synthetic import _uid, generate_synthetic, synthetic_labels
from wsss_fast.engine.paths import RunPaths

from .conftest import N_IMAGES, SEED, SIZE


def _truth():
    return {_uid(SEED, i, "sop"): (img, m) for i, img, m in generate_synthetic(N_IMAGES, SIZE, SEED, 0.5)}


def test_layout_and_csv(synth_root):
    files = sorted((synth_root / "dicom-images-train").rglob("*.dcm"))
    assert len(files) == N_IMAGES
    assert all(len(f.relative_to(synth_root / "dicom-images-train").parts) == 3 for f in files)
    assert (synth_root / "train-rle.csv").read_text().splitlines()[0] == "ImageId, EncodedPixels"
    rows = list(csv.reader(open(synth_root / "train-rle.csv"), skipinitialspace=True))[1:]
    per_id: dict[str, list[str]] = {}
    for image_id, code in rows:
        per_id.setdefault(image_id, []).append(code)
    assert len(per_id) == N_IMAGES
    assert any(len(v) > 1 for v in per_id.values()), "no multi-region positive in the test set"
    assert all(v == ["-1"] for v in per_id.values() if "-1" in v)
    kinds = {(str(pydicom.dcmread(f).PhotometricInterpretation), int(pydicom.dcmread(f).BitsAllocated))
             for f in files}
    assert {("MONOCHROME1", 8), ("MONOCHROME1", 16), ("MONOCHROME2", 8), ("MONOCHROME2", 16)} <= kinds


def test_dicom_loader_recovers_images_and_masks(synth_root):
    ds = SIIMPneumothorax(synth_root)
    truth = _truth()
    assert sorted(ds.image_ids) == sorted(truth) and len(ds) == N_IMAGES
    labels = synthetic_labels(N_IMAGES, SEED, 0.5)
    assert ds.labels.shape == (N_IMAGES, 1) and ds.labels.dtype == np.float32
    assert ds.labels.sum() == labels.sum()
    for i, image_id in enumerate(ds.image_ids):
        img, m = truth[image_id]
        got = ds.load_image(i)
        assert got.shape == (SIZE, SIZE, 3) and got.dtype == np.uint8
        # MONOCHROME1 is inverted back, 12-bit rescaled+windowed data maps back to 8 bits
        assert np.abs(got[..., 0].astype(int) - img).max() <= 1, image_id
        np.testing.assert_array_equal(ds.load_mask(i), m)
        assert ds.labels[i, 0] == float(m.any())


def test_monochrome1_and_16bit_reading(tmp_path, synth_root):
    f = next(p for p in (synth_root / "dicom-images-train").rglob("*.dcm")
             if pydicom.dcmread(p).PhotometricInterpretation == "MONOCHROME1"
             and pydicom.dcmread(p).BitsAllocated == 16)
    raw = pydicom.dcmread(f).pixel_array
    img = read_dicom(f)
    assert raw.dtype == np.uint16 and raw.max() > 255
    # bright raw (MONOCHROME1) = dark display
    assert np.corrcoef(raw.ravel().astype(float), img.ravel().astype(float))[0, 1] < -0.99


def test_item_contract(synth_root):
    ds = SIIMPneumothorax(synth_root)
    pos = int(np.flatnonzero(ds.labels[:, 0] > 0)[0])
    item = ds[pos]
    assert set(item) >= {"image", "label", "image_id", "mask", "orig_size"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, SIZE, SIZE)
    assert item["label"].dtype == torch.float32 and item["label"].tolist() == [1.0]
    assert item["mask"].dtype == torch.uint8 and item["mask"].shape == (SIZE, SIZE)
    assert set(item["mask"].unique().tolist()) == {0, 1}
    assert item["orig_size"] == (SIZE, SIZE)
    # without_masks: a copy whose items skip the mask; the data set itself keeps them
    from wsss_fast.data import without_masks

    bare = without_masks(ds)[pos]
    assert "mask" not in bare and torch.equal(bare["image"], item["image"]) and "mask" in ds[pos]


def test_png_variant_equals_dicom(synth_root):
    a = SIIMPneumothorax(synth_root, image_format="dicom")
    b = SIIMPneumothorax(synth_root, image_format="png")
    assert a.image_ids == b.image_ids
    np.testing.assert_array_equal(a.labels, b.labels)
    for i in range(0, N_IMAGES, 3):
        assert np.abs(a.load_image(i).astype(int) - b.load_image(i)).max() <= 1
        np.testing.assert_array_equal(a.load_mask(i), b.load_mask(i))


def test_paper_split_counts_on_full_size():
    ids = [f"id{i:05d}" for i in range(12047)]
    pos = [i < 2669 for i in range(12047)]
    s = stratified_split(ids, pos, seed=3)
    positive = set(ids[:2669])
    got = {k: (sum(i in positive for i in v), sum(i not in positive for i in v)) for k, v in s.items()}
    assert got == {"train": (2379, 8296), "val": (145, 541), "test": (145, 541)}
    assert stratified_split(ids, pos, seed=3) == s
    assert stratified_split(ids[::-1], pos[::-1], seed=3) == s  # order-independent
    assert stratified_split(ids, pos, seed=4) != s


def test_split_scaled_and_disjoint():
    ids = [f"id{i:04d}" for i in range(1000)]
    pos = [i % 4 == 0 for i in range(1000)]  # 250 positive / 750 negative
    s = stratified_split(ids, pos, seed=0)
    assert sorted(sum(s.values(), [])) == ids
    n_pos = {k: sum(pos[int(i[2:])] for i in v) for k, v in s.items()}
    for k in ("val", "test"):  # largest-remainder rounding of the paper's proportions
        assert abs(n_pos[k] - 250 * 145 / 2669) < 1
        assert abs(len(s[k]) - n_pos[k] - 750 * 541 / 9378) < 1
    assert n_pos["train"] + n_pos["val"] + n_pos["test"] == 250
    tiny = stratified_split(ids[:12], pos[:12], seed=0)  # 3 pos / 9 neg: val and test still get some
    assert all(any(pos[int(i[2:])] for i in tiny[k]) for k in ("val", "test"))


def test_split_written_and_reused(synth_root, tmp_path):
    split_file = tmp_path / "split.json"
    tr = SIIMPneumothorax(synth_root, "train", split_file=split_file)
    va = SIIMPneumothorax(synth_root, "val", split_file=split_file)
    te = SIIMPneumothorax(synth_root, "test", split_file=split_file)
    assert split_file.exists()
    assert len(tr) + len(va) + len(te) == N_IMAGES
    assert not (set(tr.image_ids) & set(va.image_ids)) and not (set(va.image_ids) & set(te.image_ids))
    assert va.labels.sum() >= 1 and te.labels.sum() >= 1
    for ds in (tr, va, te):  # each split's labels are its own images' (positive = a lesion in the mask)
        assert len(ds.labels) == len(ds.image_ids)
        assert [bool(ds.labels[i].any()) for i in range(len(ds))] == [
            bool((ds.load_mask(i) > 0).any()) for i in range(len(ds))]
    data = json.loads(split_file.read_text())
    assert data["splits"]["train"] == tr.image_ids
    # reused: another seed and other counts do not change an existing split
    again = SIIMPneumothorax(synth_root, "val", split_file=split_file, seed=99,
                             split_counts={"train": [1, 1], "val": [5, 5], "test": [1, 1]})
    assert again.image_ids == va.image_ids
    data["splits"]["val"].append("not-an-image")
    split_file.write_text(json.dumps(data))
    with pytest.raises(BadFileError, match="not-an-image|not in"):
        SIIMPneumothorax(synth_root, "val", split_file=split_file)


def test_build_dataset_synthetic(tmp_path):
    cfg = load_config(None, {
        "seed": 0, "dataset": {"name": "synthetic", "image_size": 48, "on_bad_file": "raise",
                               "synthetic": {"num_images": 12, "image_size": 64, "positive_fraction": 0.5}},
        "augment": {"scale": [0.9, 1.1], "rotate": 10, "blur_p": 0.5, "brightness": 0.2, "contrast": 0.2,
                    "hflip": True}})
    paths = RunPaths(tmp_path / "run")
    tr = build_dataset(cfg, "train", paths, train=True)
    va = build_dataset(cfg, "val", paths, train=False)
    assert paths.split.exists() and (paths.root / "data" / "synthetic" / "train-rle.csv").exists()
    assert tr[0]["image"].shape == (3, 48, 48) and va[0]["image"].shape == (3, 48, 48)
    assert va[0]["mask"].shape == (64, 64) and va[0]["orig_size"] == (64, 64)
    assert len(tr) + len(va) + len(build_dataset(cfg, "test", paths, train=False)) == 12


def test_build_dataset_follows_the_split_and_synthetic_settings(tmp_path):
    """dataset.split_seed (null: the run's seed) and dataset.split_counts decide the split;
    dataset.synthetic.positive_fraction the share of positive images."""
    def build(run, split="val", seed=0, fraction=0.5, **dataset):
        cfg = load_config(None, {"seed": seed, "dataset": {
            "name": "synthetic", "root": str(tmp_path / f"data{fraction}"), "image_size": 32, **dataset,
            "synthetic": {"num_images": 24, "image_size": 32, "positive_fraction": fraction, "seed": 0}}})
        return build_dataset(cfg, split, RunPaths(tmp_path / run), train=False)

    one = build("a", split_seed=1).image_ids
    assert build("b", split_seed=2).image_ids != one
    assert build("c", seed=1, split_seed=None).image_ids == one
    more_val = {"train": [1, 1], "val": [2, 2], "test": [1, 1]}
    assert len(build("d", split_seed=1, split_counts=more_val)) > len(one)
    assert build("e", None, fraction=0.25).labels.sum() == 6
    assert build("f", None, fraction=0.75).labels.sum() == 18


# ----------------------------------------------------------------- malformed CSV rows


@pytest.fixture
def csv_root(synth_root, tmp_path):
    """A copy of the synthetic set's CSV next to links to its images: (root, CSV lines)."""
    root = tmp_path / "siim"
    root.mkdir()
    (root / "dicom-images-train").symlink_to(synth_root / "dicom-images-train")
    lines = (synth_root / "train-rle.csv").read_text().splitlines()
    return root, lines


def _write(root, lines):
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")


def _ids_rows(lines):
    """image id -> its 1-based CSV row numbers (the header is row 1)."""
    out: dict[str, list[int]] = {}
    for n, line in enumerate(lines[1:], start=2):
        out.setdefault(line.split(",")[0], []).append(n)
    return out


def _skip(root):
    with pytest.warns(RuntimeWarning, match="skipped 1 bad file") as rec:
        ds = SIIMPneumothorax(root, on_bad_file="skip", progress=False)
    assert len([w for w in rec if "skipped" in str(w.message)]) == 1
    assert not any("no row in" in str(w.message) for w in rec)  # reported once, as bad, not as unlabelled
    return ds


def test_csv_image_with_both_empty_and_region_rows(csv_root):
    root, lines = csv_root
    rows = _ids_rows(lines)
    image_id = next(k for k, v in rows.items() if len(v) > 1)  # a positive with several regions
    first = rows[image_id][0]
    _write(root, lines + [f"{image_id}, -1"])
    with pytest.raises(BadFileError, match=rf"both a '-1' row and region rows.*train-rle.csv, CSV row {first}, "
                                           rf"image {image_id}"):
        SIIMPneumothorax(root)
    ds = _skip(root)
    assert image_id not in ds.image_ids and len(ds) == N_IMAGES - 1
    assert ds.skipped[0]["image_id"] == image_id and ds.skipped[0]["row"] == first
    # a negative image that also has a region row is as contradictory
    neg = next(k for k, v in rows.items() if lines[v[0] - 1].endswith("-1"))
    _write(root, lines + [f"{neg}, 1 5"])
    with pytest.raises(BadFileError, match=rf"both a '-1' row.*image {neg}"):
        SIIMPneumothorax(root)
    # a repeated '-1' row is not a contradiction
    _write(root, lines + [f"{neg}, -1"])
    ds = SIIMPneumothorax(root)
    assert len(ds) == N_IMAGES and ds.labels[ds.index_of(neg), 0] == 0


@pytest.mark.parametrize("bad", ["{id}, 1 5, 7", "{id}"])
def test_csv_row_with_wrong_number_of_columns(csv_root, bad):
    root, lines = csv_root
    rows = _ids_rows(lines)
    image_id = next(k for k, v in rows.items() if len(v) > 1)
    n = rows[image_id][1]  # one of its region rows
    lines[n - 1] = bad.format(id=image_id)
    _write(root, lines)
    with pytest.raises(BadFileError, match=rf"malformed CSV row.*train-rle.csv, CSV row {n}, image {image_id}"):
        SIIMPneumothorax(root)
    ds = _skip(root)
    # the image is left out as a whole: its mask would lack a region, its label could flip
    assert image_id not in ds.image_ids and len(ds) == N_IMAGES - 1
    assert ds.skipped[0]["image_id"] == image_id and ds.skipped[0]["row"] == n


def test_csv_row_with_empty_id(csv_root):
    root, lines = csv_root
    _write(root, lines[:3] + [" , 1 5"] + lines[3:])
    with pytest.raises(BadFileError, match=r"malformed CSV row.*train-rle.csv, CSV row 4\b"):
        SIIMPneumothorax(root)
    ds = _skip(root)
    assert len(ds) == N_IMAGES and ds.skipped[0]["row"] == 4 and ds.skipped[0]["image_id"] is None


@pytest.mark.parametrize("header", ["ImageId, Pixels", "Id, EncodedPixels", "", "1.2.3, -1"])
def test_csv_bad_header(csv_root, header):
    root, lines = csv_root
    _write(root, [header] + lines[1:] if header else [])
    for mode in ("raise", "skip"):  # no row of the file can be trusted: raised even in skip mode
        with pytest.raises(BadFileError, match=r"train-rle.csv row 1: header must name 'ImageId' and "
                                               r"'EncodedPixels'"):
            SIIMPneumothorax(root, on_bad_file=mode, progress=False)


def test_csv_header_with_byte_order_mark(csv_root):
    root, lines = csv_root
    (root / "train-rle.csv").write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    assert len(SIIMPneumothorax(root)) == N_IMAGES
