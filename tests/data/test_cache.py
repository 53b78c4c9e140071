"""The decoded-image cache (dataset.cache): same items as without it, miss then hit, atomic
files, reuse across data sets and steps, one folder per size and source."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from wsss_fast.config import load_config
from wsss_fast.data import SIIMPneumothorax, build_dataset
from wsss_fast.data import siim as siim_mod
from wsss_fast.data.cache import cache_folder, read_cached, write_cached
from wsss_fast.engine.paths import RunPaths

from .conftest import N_IMAGES, SIZE

WORK = 48  # working resolution below the files' 64 px: the cache stores resized images


def _cfg(root, cache="auto", size=WORK):
    return load_config(None, {"dataset": {"root": str(root), "image_size": size, "cache": cache,
                                          "image_format": "dicom"}})


def _count_decodes(monkeypatch):
    calls = []
    real = siim_mod.read_dicom

    def counting(path, *a, **k):
        calls.append(path)
        return real(path, *a, **k)

    monkeypatch.setattr(siim_mod, "read_dicom", counting)
    return calls


def test_items_equal_the_uncached_ones(synth_root, tmp_path):
    """Image tensors, masks, labels and orig_size are identical with and without the cache."""
    plain = build_dataset(_cfg(synth_root, cache=None), None, RunPaths(tmp_path / "a"), train=False)
    cached = build_dataset(_cfg(synth_root), None, RunPaths(tmp_path / "b"), train=False)
    assert plain.cache_dir is None and cached.cache_dir is not None
    for i in range(N_IMAGES):
        for ds in (cached, cached):  # miss, then hit
            a, b = plain[i], ds[i]
            assert torch.equal(a["image"], b["image"]), i
            assert a["orig_size"] == b["orig_size"] == (SIZE, SIZE)
            assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["label"], b["label"])
    assert cached.load_image(0).shape[:2] == (WORK, WORK)
    assert cached.original_size(0) == (SIZE, SIZE)


def test_miss_decodes_once_then_every_reader_hits(synth_root, tmp_path, monkeypatch):
    calls = _count_decodes(monkeypatch)
    paths = RunPaths(tmp_path / "run")
    ds = build_dataset(_cfg(synth_root), None, paths, train=True)
    for i in range(N_IMAGES):
        ds.load_image(i)
    assert len(calls) == N_IMAGES
    files = sorted(ds.cache_dir.glob("*.npz"))
    assert [f.stem for f in files] == sorted(ds.image_ids)
    assert ds.cache_dir.parent == paths.root / "cache" and f"{WORK}px" in ds.cache_dir.name
    # another step (a new data set object, eval transform, one split) reads the same files
    val = build_dataset(_cfg(synth_root), "val", paths, train=False)
    for i in range(len(val)):
        val[i]
    assert len(calls) == N_IMAGES
    img, size = read_cached(files[0])
    assert img.shape == (WORK, WORK) and img.dtype == np.uint8 and size == (SIZE, SIZE)


def test_writes_are_atomic_and_a_broken_file_is_rebuilt(synth_root, tmp_path, monkeypatch):
    paths = RunPaths(tmp_path / "run")
    ds = build_dataset(_cfg(synth_root), None, paths, train=False)
    ds.load_image(0)
    f = ds.cache_dir / f"{ds.image_ids[0]}.npz"
    good = f.read_bytes()
    # a crash mid-write leaves no file under the final name (a temporary file at most)
    real_replace = os.replace

    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        ds.load_image(1)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not (ds.cache_dir / f"{ds.image_ids[1]}.npz").exists()
    assert not list(ds.cache_dir.glob(".*.tmp"))
    # a truncated file (written by something else) is a miss, decoded again and replaced
    f.write_bytes(good[: len(good) // 2])
    calls = _count_decodes(monkeypatch)
    again = ds.load_image(0)
    assert len(calls) == 1 and again.shape == (WORK, WORK, 3)
    img, size = read_cached(f)
    assert np.array_equal(img, again[..., 0]) and size == (SIZE, SIZE)


def test_folder_per_size_and_source_and_off_switch(synth_root, tmp_path):
    a = cache_folder("auto", tmp_path, "siim", synth_root, 48)
    assert a != cache_folder("auto", tmp_path, "siim", synth_root, 64)
    assert a != cache_folder("auto", tmp_path, "siim", tmp_path, 48)
    assert cache_folder("/shared/c", tmp_path, "siim", synth_root, 48).parent == type(a)("/shared/c")
    for off in (None, False, "none"):
        assert cache_folder(off, tmp_path, "siim", synth_root, 48) is None
    assert cache_folder("auto", None, "siim", synth_root, 48) is None
    # auto leaves PNG sets alone (they decode fast); a named folder caches them too
    png = _cfg(synth_root) | {}
    png["dataset"] = {**png["dataset"], "image_format": "png"}
    assert build_dataset(png, None, RunPaths(tmp_path / "p"), train=False).cache_dir is None
    direct = SIIMPneumothorax(synth_root)
    assert direct.cache_dir is None and direct.load_image(0).shape[:2] == (SIZE, SIZE)


def test_a_cached_file_keeps_its_image_and_a_non_square_original_size(tmp_path):
    """Predictions go back to the original (H0, W0); SIIM's are square, other sets' are not."""
    img = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6)
    write_cached(tmp_path / "a.npz", img, (300, 400))
    got, size = read_cached(tmp_path / "a.npz")
    assert size == (300, 400) and got.dtype == np.uint8 and np.array_equal(got, img)
    assert read_cached(tmp_path / "missing.npz") is None
