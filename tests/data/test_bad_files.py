"""SIIM bad files: corrupt DICOM, malformed RLE, missing image, mask of the wrong size."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest

from wsss_fast.data import BadFileError, SIIMPneumothorax

from .conftest import N_IMAGES


@pytest.fixture
def siim_copy(synth_root, tmp_path):
    root = tmp_path / "siim"
    shutil.copytree(synth_root, root)
    lines = (root / "train-rle.csv").read_text().splitlines()
    return root, lines


def _csv(root, lines):
    (root / "train-rle.csv").write_text("\n".join(lines) + "\n")


def _file_of(root, image_id):
    return next((root / "dicom-images-train").rglob(f"{image_id}.dcm"))


def test_corrupt_dicom(siim_copy):
    root, lines = siim_copy
    image_id = lines[3].split(",")[0]
    path = _file_of(root, image_id)
    path.write_bytes(path.read_bytes()[:400])  # truncated: header ok-ish, pixel data gone
    ds = SIIMPneumothorax(root)
    i = ds.index_of(image_id)
    with pytest.raises(BadFileError, match=f"{image_id}.dcm") as exc:
        ds[i]
    assert "row" in str(exc.value)
    ds[(i + 1) % len(ds)]  # the others still load
    with pytest.warns(RuntimeWarning, match="skipped 1 bad file") as rec:
        skip = SIIMPneumothorax(root, on_bad_file="skip", progress=False)
    assert len([w for w in rec if "skipped" in str(w.message)]) == 1
    assert len(skip) == N_IMAGES - 1 and image_id not in skip.image_ids
    assert skip.skipped[0]["image_id"] == image_id


def test_malformed_rle_names_row(siim_copy):
    root, lines = siim_copy
    n = next(k for k, line in enumerate(lines) if not line.endswith("-1") and k > 0)
    image_id = lines[n].split(",")[0]
    lines[n] = lines[n] + " 7"  # odd number of values
    _csv(root, lines)
    with pytest.raises(BadFileError, match=rf"train-rle.csv.*CSV row {n + 1}"):
        SIIMPneumothorax(root)
    with pytest.warns(RuntimeWarning, match="skipped 1") as rec:
        skip = SIIMPneumothorax(root, on_bad_file="skip", progress=False)
    assert len(rec) == 1  # one warning, not one per problem
    assert image_id not in skip.image_ids and len(skip) == N_IMAGES - 1
    assert skip.skipped[0]["row"] == n + 1


def test_missing_image(siim_copy):
    root, lines = siim_copy
    image_id = lines[5].split(",")[0]
    _file_of(root, image_id).unlink()
    with pytest.raises(BadFileError, match=rf"missing.*{image_id}.*CSV row 6"):
        SIIMPneumothorax(root)
    with pytest.warns(RuntimeWarning, match="skipped 1"):
        assert len(SIIMPneumothorax(root, on_bad_file="skip")) == N_IMAGES - 1


def test_mask_of_wrong_size(siim_copy):
    root, lines = siim_copy
    n = next(k for k, line in enumerate(lines) if line.endswith("-1") and k > 0)
    image_id = lines[n].split(",")[0]
    lines[n] = f"{image_id}, 4000 100"  # runs past the end of a 64x64 image
    _csv(root, lines)
    ds = SIIMPneumothorax(root)
    assert ds.labels[ds.index_of(image_id), 0] == 1.0
    with pytest.raises(BadFileError, match=rf"does not fit.*CSV row {n + 1}"):
        ds.load_mask(ds.index_of(image_id))
    with pytest.warns(RuntimeWarning, match="skipped 1"):
        assert image_id not in SIIMPneumothorax(root, on_bad_file="skip", progress=False).image_ids


def test_unlabelled_images_are_reported_not_dropped_silently(siim_copy):
    root, lines = siim_copy
    _csv(root, lines[:-1])
    dropped = lines[-1].split(",")[0]
    if any(line.startswith(dropped) for line in lines[:-1]):  # multi-row image: still labelled
        pytest.skip("last row belongs to a multi-region image")
    with pytest.warns(RuntimeWarning, match="no row in train-rle.csv"):
        ds = SIIMPneumothorax(root)
    assert ds.unlabeled == [dropped]


def test_clean_set_emits_no_warning(synth_root):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = SIIMPneumothorax(synth_root, on_bad_file="skip", progress=False)
    assert ds.skipped == [] and len(ds) == N_IMAGES
    assert np.isfinite(ds.labels).all()
