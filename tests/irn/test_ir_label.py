"""CRF input validation and IR labels (thresholds, CRF, noise filter, files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_fast.engine.files import read_png
from wsss_fast.irn.common import resize_label
from wsss_fast.irn.crf import CRFParams, crf_inference_label, to_rgb_uint8, validate_crf_inputs
from wsss_fast.irn.ir_label import _fg_counts, _fg_maps, cam_to_ir_label, make_ir_label, remove_small_regions

from .conftest import assert_one_in_flight, tiny_cfg


def _img(h=20, w=30):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, w // 2:] = 200
    return img


def test_crf_validation_errors():
    img, lab = _img(), np.zeros((20, 30), np.int64)
    with pytest.raises(TypeError, match="uint8"):
        validate_crf_inputs(img.astype(np.float32), lab, 2)
    with pytest.raises(ValueError, match="channels last"):
        validate_crf_inputs(np.ascontiguousarray(img.transpose(2, 0, 1)), lab, 2)
    with pytest.raises(ValueError, match="C-contiguous"):
        validate_crf_inputs(np.asfortranarray(img), lab, 2)
    with pytest.raises(ValueError, match="does not match"):
        validate_crf_inputs(img, np.zeros((30, 20), np.int64), 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        validate_crf_inputs(img, lab + 2, 2)
    with pytest.raises(TypeError, match="integers"):
        validate_crf_inputs(img, lab.astype(np.float32), 2)
    with pytest.raises(TypeError, match="uint8"):
        to_rgb_uint8(np.zeros((4, 4), np.float64))
    with pytest.raises(KeyError, match="bogus"):
        CRFParams.from_cfg({"bogus": 1})


def test_grayscale_is_stacked():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for x in (g, g[..., None]):
        out = to_rgb_uint8(x)
        assert out.shape == (3, 4, 3) and out.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(out[..., 2], g)


def test_crf_snaps_labels_to_image_edge():
    img = _img()
    lab = np.zeros((20, 30), np.int64)
    lab[:, 12:] = 1  # the label boundary is 3 px left of the image edge at 15
    out = crf_inference_label(img, lab, 2, CRFParams(reference_size=None))  # IRNet's widths as given
    assert out.shape == (20, 30)
    assert (out[:, :12] == 0).all() and (out[:, 17:] == 1).all()
    assert (out[:, 12:15] == 0).mean() > 0.9  # moved to the intensity edge
    np.testing.assert_array_equal(crf_inference_label(img, lab * 0, 1), 0)  # one label: trivial


def test_cam_to_ir_label_values():
    h, w = 40, 40
    yy, xx = np.mgrid[:h, :w]
    cam = np.clip(1 - np.sqrt((yy - 20) ** 2 + (xx - 20) ** 2) / 15, 0, 1)[None].astype(np.float32)
    img = np.where((yy - 20) ** 2 + (xx - 20) ** 2 < 11 ** 2, 180, 30).astype(np.uint8)
    cfg = tiny_cfg(ir_label={"crf": {"enabled": False}})
    lab = cam_to_ir_label(img, {"keys": np.array([3]), "high_res": cam}, cfg)
    assert lab.dtype == np.uint8 and lab.shape == (h, w)
    assert set(np.unique(lab)) == {0, 4, 255}
    assert lab[20, 20] == 4 and lab[0, 0] == 0 and lab[20, 20 + 12] == 255  # cam ~0.2: uncertain
    cfg = tiny_cfg()
    with_crf = cam_to_ir_label(img, {"keys": np.array([3]), "high_res": cam}, cfg)
    assert with_crf[20, 20] == 4 and with_crf[0, 0] == 0
    neg = cam_to_ir_label(img, {"keys": np.zeros(0, np.int64), "high_res": np.zeros((0, h, w))}, cfg)
    np.testing.assert_array_equal(neg, 0)  # negative image: all confident background
    with pytest.raises(ValueError, match="sizes differ"):
        cam_to_ir_label(img[:30], {"keys": np.array([3]), "high_res": cam}, cfg)


def test_remove_small_regions():
    conf = np.zeros((30, 30), np.uint8)
    cams = np.zeros((1, 30, 30), np.float32)
    conf[2:4, 2:4] = 1
    cams[0, 2:4, 2:4] = 0.35  # small, weak: noise
    conf[10:12, 10:12] = 1
    cams[0, 10:12, 10:12] = 0.9  # small but confident: kept
    conf[15:28, 15:28] = 1
    cams[0, 15:28, 15:28] = 0.4  # large: kept
    out = remove_small_regions(conf, cams, np.array([0, 1]), min_region=10, min_region_conf=0.5)
    assert (out[2:4, 2:4] == 255).all()
    assert (out[10:12, 10:12] == 1).all() and (out[15:28, 15:28] == 1).all()
    np.testing.assert_array_equal(remove_small_regions(conf, cams, np.array([0, 1]), 0, 0.5), conf)


def test_make_ir_label_files_and_resume(fake_data):
    paths, datasets = fake_data
    cfg = tiny_cfg()
    make_ir_label(cfg, paths)
    ds = datasets["train"]
    for i, image_id in enumerate(ds.image_ids):
        lab = read_png(paths.ir_label / f"{image_id}.png")
        assert lab.shape == (64, 64)
        assert set(np.unique(lab)) <= {0, 1, 255}
        disk = resize_label(ds.load_mask(i), (64, 64)) > 0  # the lesion at the labels' size
        if ds.labels[i, 0]:
            fg = lab == 1
            iou = (fg & disk).sum() / (fg | disk).sum()
            assert iou > 0.8, (image_id, iou)  # 0.93 .. 0.95 here
            assert (lab == 0).sum() > 0.3 * lab.size and not (disk & (lab == 0)).any()  # bg is bg
        else:
            assert (lab == 0).all()
    assert paths.is_done(paths.ir_label)
    f = paths.ir_label / f"{ds.image_ids[0]}.png"
    f.write_bytes(b"sentinel")  # resumable: existing files are not recomputed
    make_ir_label(cfg, paths)
    assert f.read_bytes() == b"sentinel"


def test_crf_spatial_widths_scale_with_image_size():
    assert CRFParams().spatial_scale(128, 96) == pytest.approx(128 / 500)
    assert CRFParams(reference_size=None).spatial_scale(128, 96) == 1.0
    with pytest.raises(ValueError, match="reference_size"):
        CRFParams(reference_size=0).spatial_scale(8, 8)
    # reference_size equal to the image's longer side is the unscaled CRF
    img = _img()
    lab = np.zeros(img.shape[:2], np.int64)
    lab[:, img.shape[1] // 2 - 3:] = 1
    same = crf_inference_label(img, lab, 2, CRFParams(reference_size=max(img.shape[:2])))
    np.testing.assert_array_equal(same, crf_inference_label(img, lab, 2, CRFParams(reference_size=None)))
    assert CRFParams.from_cfg({"reference_size": None, "enabled": True}).reference_size is None


def _cam_case(seed: int, size: int = 96):
    """A synthetic radiograph and a blurred, noisy CAM around its pneumothorax (or a blob)."""
    from scipy import ndimage

    from wsss_fast.data.synthetic import generate_image

    img, mask = generate_image(seed, image_size=size, seed=3, positive=True)
    rng = np.random.default_rng(seed)
    cam = ndimage.gaussian_filter(mask.astype(np.float32), size / 24) * 1.6
    cam += (ndimage.gaussian_filter(rng.random((size, size)).astype(np.float32), 2) - 0.5) * 0.6
    second = np.zeros_like(cam)
    second[size // 5:size // 2, size // 2:size - 8] = 0.6
    cams = np.stack([np.clip(cam, 0, 1), ndimage.gaussian_filter(second, 5)]).astype(np.float32)
    return img, {"keys": np.array([0, 2]), "high_res": cams}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="no CUDA device"))])
def test_ir_labels_agree_between_crf_backends(compiled_ops, device):
    """The compiled CRF and pydensecrf give the same IR labels (>= 99.5 % of pixels; on the CPU
    the same float operations: identical)."""
    pytest.importorskip("pydensecrf.densecrf")
    agree = []
    for seed in range(3):
        img, cam = _cam_case(seed)
        labels = {b: cam_to_ir_label(img, cam, tiny_cfg(device=device, ir_label={"crf": {"backend": b}}))
                  for b in ("wsss_fast", "pydensecrf")}
        assert set(np.unique(labels["pydensecrf"])) >= {0, 255} and (labels["pydensecrf"] % 255 > 0).any()
        agree.append((labels["wsss_fast"] == labels["pydensecrf"]).mean())
        if device == "cpu":
            np.testing.assert_array_equal(labels["wsss_fast"], labels["pydensecrf"])
    assert min(agree) >= 0.995, agree


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="no CUDA device")
def test_ir_labels_on_cuda_agree_with_the_cpu_op(compiled_ops):
    """IR labels with the CRF on the GPU against the CPU op's (which are pydensecrf's, above):
    >= 99.5 % of pixels, without needing pydensecrf on the GPU machine."""
    agree = []
    for seed in range(3):
        img, cam = _cam_case(seed)
        labels = {d: cam_to_ir_label(img, cam, tiny_cfg(device=d, ir_label={"crf": {"backend": "wsss_fast"}}))
                  for d in ("cpu", "cuda")}
        assert set(np.unique(labels["cpu"])) >= {0, 255} and (labels["cpu"] % 255 > 0).any()
        agree.append((labels["cuda"] == labels["cpu"]).mean())
    assert min(agree) >= 0.995, agree


def test_crf_inference_many_equals_one_image_at_a_time(device, compiled_ops):
    """Several images' maps in one call of the compiled CRF: each image's maps as alone (CPU:
    the same bits), also with an image of no maps in the batch, and from uint8 tensors."""
    from wsss_fast.irn.crf import crf_inference_labels, crf_inference_many

    imgs, labs = [], []
    for seed, k in zip(range(3), (2, 0, 3)):
        img, cam = _cam_case(seed, size=48)
        imgs.append(to_rgb_uint8(img))
        rng = np.random.default_rng(seed)
        labs.append(rng.integers(0, 3, (k, 48, 48)))
    many = crf_inference_many(imgs, labs, 3, CRFParams(), device)
    assert [m.shape for m in many] == [(2, 48, 48), (0, 48, 48), (3, 48, 48)]
    assert all(m.dtype == np.uint8 for m in many)  # at most 256 labels: uint8 maps come back
    for img, lab, got in zip(imgs, labs, many):
        want = crf_inference_labels(img, lab, 3, CRFParams(), "wsss_fast", device)
        assert want.dtype == np.int64
        if device == "cpu":
            np.testing.assert_array_equal(got, want)
        else:
            assert lab.shape[0] == 0 or (got == want).mean() >= 0.999
    # make-ir-label's form: uint8 tensors from the loader (pinned on CUDA), the same maps
    pin = (lambda t: t.pin_memory()) if device == "cuda" else (lambda t: t)
    again = crf_inference_many([pin(torch.from_numpy(im)) for im in imgs],
                               [pin(torch.from_numpy(lab.astype(np.uint8))) for lab in labs], 3, CRFParams(), device)
    for a, b in zip(again, many):
        if device == "cpu":
            np.testing.assert_array_equal(a, b)
        else:
            assert a.size == 0 or (a == b).mean() >= 0.999
    with pytest.raises(ValueError, match="one size"):
        crf_inference_many([imgs[0], imgs[1][:40]], labs[:2], 3)


def test_crf_queue_waits_only_for_the_label_range_and_the_lattices(device, compiled_ops, host_reads):
    """``crf_queue_many`` waits for the device at most three times, in ``ops/dense_crf.py`` and
    the compiled op it calls (the labels' range and the sizes of the two lattices), not for the
    mean field or the copy of the maps to the host; its ``wait()`` gives ``crf_inference_many``'s maps."""
    from wsss_fast.irn.crf import crf_inference_many, crf_queue_many

    pin = (lambda t: t.pin_memory()) if device == "cuda" else (lambda t: t)
    imgs, labs = [], []
    for seed in range(2):
        img, _ = _cam_case(seed, size=48)
        imgs.append(pin(torch.from_numpy(to_rgb_uint8(img))))
        labs.append(pin(torch.from_numpy(np.random.default_rng(seed).integers(0, 3, (2, 48, 48), np.uint8))))
    want = crf_inference_many(imgs, labs, 3, CRFParams(), device)  # also the warm-up
    with host_reads(device) as reads:
        queued = crf_queue_many(imgs, labs, 3, CRFParams(), device)
    # a wait inside the compiled op is reported at torch's _ops.py, which calls it
    assert reads.count <= 3 and all(w.split(":")[0] in ("dense_crf.py", "_ops.py") for w in reads.where), reads.where
    for got, ref in zip((m.numpy() for m in queued.wait()), want):
        assert got.shape == (2, 48, 48) and got.dtype == np.uint8
        assert (got == ref).mean() >= (1.0 if device == "cpu" else 0.999)


@pytest.mark.parametrize("loaders", [0, 2])
@pytest.mark.parametrize("min_region", [0, 10_000])
def test_batched_step_equals_one_image_at_a_time(fake_data, loaders, min_region):
    """make-ir-label with the compiled CRF in the main process (batches of 3 images, negatives
    with no maps among them; inputs from 0 or 2 loader processes; the small-region filter,
    which reads the CAMs, off and on: at 0.762 it drops two of the four positives' regions, whose
    mean CAMs are 0.758-0.765) writes what cam_to_ir_label gives each image alone."""
    from wsss_fast.engine.files import load_cam_file
    from wsss_fast.irn.common import resize_image_uint8

    paths, datasets = fake_data
    cfg = tiny_cfg(num_workers=loaders, ir_label={"batch_size": 3, "workers": 0, "min_region": min_region,
                                                  "min_region_conf": 0.762, "crf": {"backend": "wsss_fast"}})
    make_ir_label(cfg, paths)
    ds = datasets["train"]
    for i, image_id in enumerate(ds.image_ids):
        cam = load_cam_file(paths.cam_file(image_id))
        img = resize_image_uint8(np.asarray(ds.load_image(i)), tuple(np.asarray(cam["high_res"]).shape[1:]))
        np.testing.assert_array_equal(read_png(paths.ir_label / f"{image_id}.png"), cam_to_ir_label(img, cam, cfg))


@pytest.mark.parametrize("how, device", [("batched", "cpu"), ("one_process", "cpu"), pytest.param(
    "batched", "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))])
def test_images_without_classes_are_not_loaded(fake_data, monkeypatch, how, device):
    """An image whose CAM file has no classes gets its all-background label without its image
    being read or a CRF run; the others are read once each."""
    import wsss_fast.irn.ir_label as ir

    paths, datasets = fake_data
    ds = datasets["train"]
    loaded = []
    load = ds.load_image
    monkeypatch.setattr(ds, "load_image", lambda i: loaded.append(i) or load(i))
    backend = "wsss_fast" if how == "batched" else "pydensecrf"
    if backend == "pydensecrf":
        pytest.importorskip("pydensecrf")
    crf_calls = []
    many = ir.crf_queue_many
    monkeypatch.setattr(ir, "crf_queue_many", lambda imgs, *a, **k: crf_calls.append(len(imgs)) or many(imgs, *a, **k))
    make_ir_label(tiny_cfg(device=device, ir_label={"batch_size": 3, "workers": 0, "crf": {"backend": backend}}), paths)
    positive = [i for i in range(len(ds)) if ds.labels[i, 0]]
    assert sorted(loaded) == positive and 0 < len(positive) < len(ds)
    assert sum(crf_calls) == (len(positive) if how == "batched" else 0)
    for i, image_id in enumerate(ds.image_ids):
        if i not in positive:
            lab = read_png(paths.ir_label / f"{image_id}.png")
            assert lab.shape == (64, 64) and (lab == 0).all()


def test_a_batch_is_labelled_once_the_next_is_launched(fake_data, monkeypatch, device):
    """One batch in flight: the batched step makes a batch's labels (``_finish``) only after it
    queued the next batch's CRF (``_launch``); every batch is finished once, in order."""
    import wsss_fast.irn.ir_label as ir

    paths, datasets = fake_data
    calls: list[tuple[str, tuple]] = []
    launch, finish = ir._launch, ir._finish

    def spy_launch(items, *args):
        out = launch(items, *args)
        calls.append(("launch", tuple(it[0] for it in items)))
        return out

    def spy_finish(cfg, paths, writer, pending):
        calls.append(("finish", tuple(it[0] for group, _ in pending for it in group)))
        finish(cfg, paths, writer, pending)

    monkeypatch.setattr(ir, "_launch", spy_launch)
    monkeypatch.setattr(ir, "_finish", spy_finish)
    make_ir_label(tiny_cfg(device=device, ir_label={"batch_size": 1, "workers": 0, "crf": {"backend": "wsss_fast"}}),
                  paths)
    launched = assert_one_in_flight(calls)
    positives = [n for i, n in enumerate(datasets["train"].image_ids) if datasets["train"].labels[i, 0]]
    assert all(launched)  # no empty batch
    assert [n for b in launched for n in b] == positives and len(positives) >= 3


@pytest.mark.parametrize("fn", ["_finish", "_fg_finish"])
def test_every_batch_is_labelled_inside_the_loader_loop(fake_data, loop_watch, fn):
    """The batched step and the fg threshold's choice on val finish their last batch inside the
    loader's last iteration, so a profile timing the loader's loop sees all of their work."""
    import wsss_fast.irn.ir_label as ir

    paths, _ = fake_data
    watch = loop_watch(ir, ir, fn)
    cfg = tiny_cfg(ir_label={"batch_size": 3, "workers": 0, "crf": {"backend": "wsss_fast"}})
    if fn == "_finish":
        make_ir_label(cfg, paths)
    else:
        ir.fg_threshold_on_val(cfg, paths)
    assert watch.calls > 0 and watch.outside == 0


def test_fg_choice_counts_an_image_once_the_next_is_launched(fake_data, monkeypatch, device):
    """The fg threshold's choice on val queues an image's CRF before it counts the image
    before it; every image with classes is counted once, in order."""
    import wsss_fast.irn.ir_label as ir

    paths, datasets = fake_data
    calls: list[tuple[str, str]] = []
    launch, finish = ir._fg_launch, ir._fg_finish
    monkeypatch.setattr(ir, "_fg_launch", lambda it, *a: calls.append(("launch", it["id"])) or launch(it, *a))
    monkeypatch.setattr(ir, "_fg_finish", lambda counts, p: calls.append(("finish", p[0]["id"])) or finish(counts, p))
    cfg = tiny_cfg(device=device, ir_label={"crf": {"backend": "wsss_fast"}})
    ir.fg_threshold_on_val(cfg, paths)
    launched = assert_one_in_flight(calls)
    val = datasets["val"]
    assert launched == [n for k, n in enumerate(val.image_ids) if val.labels[k, 0]] and len(launched) >= 2


def test_crf_inference_labels_backends_and_batching():
    from wsss_fast.irn.crf import crf_inference_labels

    img = _img()
    labs = np.zeros((3, 20, 30), np.int64)
    labs[0, :, 12:] = 1
    labs[1, :, 17:] = 2
    labs[2, 5:15, 5:25] = 1
    singles = np.stack([crf_inference_label(img, lab, 3) for lab in labs])
    np.testing.assert_array_equal(crf_inference_labels(img, labs, 3, backend="pydensecrf"), singles)
    np.testing.assert_array_equal(crf_inference_labels(img, labs, 3, backend="wsss_fast"), singles)
    np.testing.assert_array_equal(crf_inference_labels(img, labs[:, :, :] * 0, 1, backend="wsss_fast"), 0)
    with pytest.raises(ValueError, match="backend"):
        crf_inference_labels(img, labs, 3, backend="cuda")
    with pytest.raises(ValueError, match=r"\[K, H, W\]"):
        crf_inference_labels(img, labs[0], 3, backend="wsss_fast")


def test_crf_backend_setting(monkeypatch):
    from wsss_fast import _ext
    from wsss_fast.irn.crf import resolve_backend

    assert tiny_cfg()["ir_label"]["crf"]["backend"] == "auto"
    assert resolve_backend("pydensecrf") == "pydensecrf" and resolve_backend("wsss_fast") == "wsss_fast"
    monkeypatch.setattr(_ext, "has_op", lambda name: name == "dense_crf")
    assert resolve_backend("auto") == "wsss_fast"
    monkeypatch.setattr(_ext, "has_op", lambda name: False)
    assert resolve_backend("auto") == "pydensecrf"  # the fallback when the op is not built
    with pytest.raises(ValueError, match="ir_label.crf.backend must be one of"):
        resolve_backend("gpu")
    cfg = tiny_cfg()
    del cfg["ir_label"]["crf"]["backend"]
    img, cam = _cam_case(0, size=48)
    with pytest.raises(KeyError, match="ir_label.crf.backend"):  # no second default in the code
        cam_to_ir_label(img, cam, cfg)


def test_fg_maps_are_irnet_padded_argmax():
    """Each threshold's map is IRNet's argmax of the CAMs padded with a channel at it: a tie
    with the threshold is background, a tie between classes goes to the first."""
    rng = np.random.default_rng(0)
    thresholds = [0.0, 0.25, 0.3, 0.5, 1.0]
    for k in (0, 1, 3):
        cams = (rng.integers(0, 5, (k, 6, 7)) / 4).astype(np.float32)  # ties with each other and the thresholds
        if k:
            cams[0, 0, :3] = np.float32(0.3)  # equal to a threshold only in float32
        want = np.stack([np.argmax(np.concatenate([np.full((1, 6, 7), t, np.float32), cams]), 0) for t in thresholds])
        for dtype in (np.int64, np.uint8):
            got = _fg_maps(cams, thresholds, dtype)
            assert got.dtype == dtype
            np.testing.assert_array_equal(got, want)


def test_fg_counts_against_the_pixel_sets():
    """True/false positives and false negatives over the non-ignored pixels, and whether any fg
    was kept (ignored pixels included), per map."""
    rng = np.random.default_rng(1)
    keys = np.array([0, 2, 5, 7])
    preds = rng.integers(0, 4, (4, 9, 11))
    gt = rng.choice(np.array([0, 2, 5, 7, 255], np.uint8), (9, 11))
    preds[0] = 0
    preds[0][gt == 255] = 1  # fg only where the truth is ignored: kept, yet no positive counted
    preds[1] = 0
    got = _fg_counts(preds.astype(np.uint8), keys, gt)
    lab, valid = keys[preds], gt != 255
    for t in range(len(preds)):
        fg, right = lab[t] > 0, lab[t] == gt
        assert list(got[:, t]) == [(fg & right & valid).sum(), (fg & ~right & valid).sum(),
                                   ((gt > 0) & ~right & valid).sum(), fg.any()], t
    assert list(got[:, 0]) == [0, 0, ((gt > 0) & valid).sum(), 1] and got[3, 1] == 0
