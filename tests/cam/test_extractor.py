"""Tests of wsss_fast.cam.CAMExtractor against pytorch-grad-cam and for batching invariances."""

from __future__ import annotations

import dataclasses
import gc
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision

from wsss_fast.cam import CAMExtractor, CAMResult

N_CLS = 6


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=N_CLS).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 80, 72, generator=torch.Generator().manual_seed(1))


class Tiny(nn.Module):
    def __init__(self, n=4):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        )
        self.unused = nn.Conv2d(16, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, n)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def _pgc(cls, model, x, classes):
    """pytorch-grad-cam's weights and its min-max normalized maps at the layer resolution."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = cls(model, [model.layer4])
    captured = {}
    orig = cam.get_cam_weights

    def get_weights(*args, **kwargs):
        captured["w"] = orig(*args, **kwargs)
        return captured["w"]

    cam.get_cam_weights = get_weights
    fh, fw = (x.shape[-2] + 31) // 32, (x.shape[-1] + 31) // 32
    cam.get_target_width_height = lambda _: (fw, fh)  # cv2.resize to the same size: identity
    maps = cam(x, [ClassifierOutputTarget(int(c)) for c in classes])
    cam.activations_and_grads.release()
    return captured["w"], maps


def _minmax(m):
    mn, mx = m.amin(dim=(-2, -1), keepdim=True), m.amax(dim=(-2, -1), keepdim=True)
    return (m - mn) / (mx - mn + 1e-7)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_matches_pytorch_grad_cam(resnet, images, method):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    classes = [1, 4, 2]
    w_ref, maps_ref = _pgc({"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}[method], resnet, images, classes)
    labels = torch.zeros(3, N_CLS)
    labels[torch.arange(3), torch.tensor(classes)] = 1
    lc = CAMExtractor(resnet, "layer4", method).layer_cams(images, labels)
    w = lc.weights[:, 0].numpy()
    assert np.abs(w - w_ref).max() <= 1e-4 * np.abs(w_ref).max()
    np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-4 * np.abs(w_ref).max())
    np.testing.assert_allclose(_minmax(lc.maps[:, 0]).numpy(), maps_ref, atol=1e-3)


def test_cam_method_uses_classifier_rows(resnet, images):
    labels = torch.zeros(3, N_CLS)
    labels[:, 3] = 1
    labels[0, 0] = 1
    lc = CAMExtractor(resnet, resnet.layer4, "cam").layer_cams(images, labels)
    torch.testing.assert_close(lc.weights[0, 0], resnet.fc.weight[0].detach())
    torch.testing.assert_close(lc.weights[1, 0], resnet.fc.weight[3].detach())
    # GAP + linear head: Grad-CAM weights are the classifier rows / (h*w), so the maps agree
    lg = CAMExtractor(resnet, "layer4", "gradcam").layer_cams(images, labels)
    torch.testing.assert_close(_minmax(lc.maps), _minmax(lg.maps), atol=1e-5, rtol=1e-4)
    assert CAMExtractor(resnet, "layer4", "cam", classifier="fc").classifier is resnet.fc


@pytest.mark.parametrize("method", ["gradcam++", "gradcam", "cam"])
def test_multilabel_equals_one_class_at_a_time(resnet, images, method):
    ext = CAMExtractor(resnet, "layer4", method)
    labels = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    kw = dict(scales=(1.0, 0.5), flip=True)
    res = ext(images, labels, **kw)
    assert res.keys.tolist() == [0, 2, 3, 1, 0, 5] and res.image_index.tolist() == [0, 0, 0, 1, 2, 2]
    i = 0
    for b in range(3):
        for c in labels[b].nonzero()[:, 0].tolist():
            one = torch.zeros(1, N_CLS)
            one[0, c] = 1
            single = ext(images[b : b + 1], one, **kw)
            assert single.keys.tolist() == [c]
            for field in ("cams", "high_res", "raw", "raw_high_res"):
                torch.testing.assert_close(getattr(res, field)[i], getattr(single, field)[0], rtol=1e-4, atol=1e-5)
            i += 1


@pytest.mark.parametrize("method", ["gradcam++", "cam"])
def test_scale_and_flip_fusion_formula(resnet, images, method):
    """``raw`` is the sum over scales of resize(maps(x_s) + maps(x_s.flip).flip), built here
    from single-scale, un-flipped layer maps (not from the extractor's own fusion)."""
    interp = torch.nn.functional.interpolate
    ext = CAMExtractor(resnet, "layer4", method)
    labels = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, 1]], dtype=torch.bool)
    valid = labels.sum(1)[:, None] > torch.arange(2)[None]  # the [B, C] slots of the pairs
    h, w = images.shape[-2:]
    fused = {}
    for s in (1.0, 0.5):
        x = images if s == 1.0 else interp(images, size=(round(h * s), round(w * s)), mode="bicubic",
                                           align_corners=False, antialias=True)
        m = ext.layer_cams(x, labels).maps
        mf = ext.layer_cams(x.flip(-1), labels).maps.flip(-1)  # the flipped image's maps, flipped back
        assert (mf - mf.flip(-1)).abs().max() > 0.05 * mf.abs().max()  # asymmetric: not flipping back shows
        fused[s] = m + mf
    exp = sum(interp(f, size=((h + 3) // 4, (w + 3) // 4), mode="bilinear", align_corners=False)
              for f in fused.values())
    res = ext(images, labels, scales=(1.0, 0.5), flip=True)
    torch.testing.assert_close(res.raw, exp[valid], rtol=1e-4, atol=1e-5 * float(exp.max()))
    # high-res maps (one scale): upsampled to the input padded to the stride (32), then cropped
    exp_h = interp(fused[1.0], size=(-(-h // 32) * 32, -(-w // 32) * 32), mode="bilinear",
                   align_corners=False)[..., :h, :w]
    res = ext(images, labels, flip=True)
    torch.testing.assert_close(res.raw_high_res, exp_h[valid], rtol=1e-4, atol=1e-5 * float(exp_h.max()))


def test_result_layout_and_normalization(resnet):
    x = torch.randn(2, 3, 70, 54, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([[0, 1, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]])
    res = CAMExtractor(resnet, "layer4")(x, labels, scales=(1.0, 0.75, 1.25), flip=True)
    assert isinstance(res, CAMResult)
    assert res.cams.shape == (2, 18, 14) and res.high_res.shape == (2, 70, 54)
    assert res.counts() == [2, 0] and res.batch_size == 2 and res.num_pairs == 2
    torch.testing.assert_close(res.cams, res.raw / (res.raw.amax(dim=(-2, -1), keepdim=True) + 1e-5))
    torch.testing.assert_close(res.high_res, res.raw_high_res / (res.raw_high_res.amax(dim=(-2, -1), keepdim=True) + 1e-5))
    assert res.cams.min() >= 0 and 0.99 < float(res.cams.amax()) <= 1
    per = res.per_image(numpy=True)
    assert per[0]["cam"].dtype == np.float16 and per[0]["keys"].tolist() == [1, 4]
    assert per[1]["cam"].shape == (0, 18, 14) and per[1]["high_res"].shape == (0, 70, 54)
    dense = res.dense("raw")
    assert dense.shape == (2, N_CLS, 18, 14) and torch.equal(dense[0, 4], res.raw[1]) and dense[1].abs().sum() == 0


def _result(device: str, counts: list[int]) -> CAMResult:
    """A CAMResult of random maps (not fp16-exact) with ``counts[i]`` maps for image ``i``."""
    g = torch.Generator().manual_seed(3)
    p, b = sum(counts), len(counts)
    raw, raw_hr = torch.rand(p, 5, 6, generator=g) * 7, torch.rand(p, 19, 22, generator=g) * 7
    image_index = torch.repeat_interleave(torch.arange(b), torch.tensor(counts))
    keys = torch.randint(0, N_CLS, (p,), generator=g)
    labels = torch.zeros(b, N_CLS, dtype=torch.bool)
    labels[image_index, keys] = True
    return CAMResult(*(t.to(device) for t in (raw / 7, raw_hr / 7, raw, raw_hr, keys, image_index, labels,
                                               torch.randn(b, N_CLS, generator=g))))


@pytest.mark.parametrize("numpy", [True, False])
@pytest.mark.parametrize("dtype", [torch.float16, None])
def test_per_image_fields_match_the_maps_of_each_image(device, dtype, numpy):
    """``per_image(fields=...)`` gives, for every image (some without maps), exactly the maps of
    that image, as the default call does, in the requested dtype, on the host with ``numpy``."""
    res = _result(device, [0, 2, 0, 1, 3, 0])
    src = {"keys": res.keys, "cam": res.cams, "high_res": res.high_res, "raw": res.raw,
           "raw_high_res": res.raw_high_res}
    full = res.per_image(dtype=dtype, numpy=numpy)
    for fields in [("keys", "cam", "high_res"), ("raw", "keys"), ("raw_high_res",), tuple(src)]:
        per = res.per_image(dtype=dtype, numpy=numpy, fields=fields)
        assert len(per) == len(full) == 6
        for i, d in enumerate(per):
            assert list(d) == list(fields)
            for name in fields:
                ref = src[name][res.image_index == i]
                if name != "keys" and dtype is not None:
                    ref = ref.to(dtype)
                for got in (d[name], full[i][name]):
                    if numpy:
                        assert isinstance(got, np.ndarray) and got.dtype == ref.cpu().numpy().dtype
                        assert got.shape == tuple(ref.shape) and got.tobytes() == ref.cpu().numpy().tobytes()
                    else:
                        assert got.device == ref.device and got.dtype == ref.dtype and torch.equal(got, ref)
    assert list(full[1]) == list(src)
    if numpy:  # a field not asked for is never copied (a meta tensor cannot be)
        lazy = dataclasses.replace(res, raw_high_res=res.raw_high_res.to("meta"))
        assert [d["cam"].tobytes() for d in lazy.per_image(dtype, True, ("cam",))] == \
            [d["cam"].tobytes() for d in full]
    with pytest.raises(ValueError, match="unknown fields"):
        res.per_image(fields=("cams",))


def test_predicted_labels(resnet, images):
    ext = CAMExtractor(resnet, "layer4", "gradcam")
    with torch.no_grad():
        logits = resnet(images)
    res = ext(images, threshold=1.1)  # nothing passes: the top class of each image
    assert res.keys.tolist() == logits.argmax(1).tolist()
    res = ext(images, threshold=0.0)  # everything passes
    assert res.num_pairs == 3 * N_CLS
    thr = float(torch.sigmoid(logits).median())
    res = ext(images, threshold=thr)
    expected = torch.sigmoid(logits) > thr
    expected[torch.arange(3), logits.argmax(1)] |= ~expected.any(1)
    assert torch.equal(res.labels, expected)
    torch.testing.assert_close(res.logits, logits)


def test_predicted_labels_single_class_keeps_negatives():
    """With one class (SIIM), an image predicted negative gets no map: the top class is only
    forced on multi-class models (threshold None still means "the top class")."""
    torch.manual_seed(0)
    model = Tiny(1).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        prob = torch.sigmoid(model(x))[:, 0]
    thr = float(prob.median())
    res = CAMExtractor(model, "features")(x, threshold=thr)
    assert res.labels[:, 0].tolist() == (prob > thr).tolist() and 0 < res.num_pairs < 4
    assert CAMExtractor(model, "features")(x, threshold=1.1, allow_empty=True).num_pairs == 0
    assert CAMExtractor(model, "features")(x, threshold=None).num_pairs == 4


def test_batchnorm_in_train_mode_does_not_mix_images():
    torch.manual_seed(0)
    model = Tiny()
    model.train()
    model.features[1].eval()  # one frozen BN: its own flag must be restored
    x = torch.randn(4, 3, 32, 32)
    labels = torch.ones(4, 4)
    ext = CAMExtractor(model, "features")
    stats = model.features[4].running_mean.clone()
    res = ext(x, labels)
    assert model.training and not model.features[1].training and model.features[4].training
    torch.testing.assert_close(model.features[4].running_mean, stats)
    for b in range(4):
        single = ext(x[b : b + 1], labels[b : b + 1])
        torch.testing.assert_close(res.raw[4 * b : 4 * b + 4], single.raw, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # no backward into the parameters


def _n_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("method", ["gradcam++", "cam"])
def test_memory_flat_over_50_calls(device, method):
    torch.manual_seed(0)
    model = Tiny().to(device)
    ext = CAMExtractor(model, "features.5", method)
    x = torch.randn(2, 3, 24, 24, device=device)
    labels = torch.tensor([[1, 1, 0, 1], [0, 1, 0, 0]], device=device)
    ext(x, labels, flip=True)
    base_tensors = _n_tensors()
    base_mem = torch.cuda.memory_allocated() if device == "cuda" else 0
    for _ in range(50):
        res = ext(x, labels, scales=(1.0, 0.5), flip=True)
        assert not model.features[5]._forward_hooks and not any(m._forward_hooks for m in model.modules())
        assert res.raw.grad_fn is None and not res.raw.requires_grad
        del res
    assert _n_tensors() <= base_tensors
    if device == "cuda":
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() <= base_mem


def test_wsmis_variant_backpropagates_exp_score(resnet, images):
    from wsss_fast.reference.gradcampp_weights import gradcampp_weights as ref

    labels = torch.zeros(3, N_CLS)
    labels[:, 2] = 1
    lc = CAMExtractor(resnet, "layer4", variant="wsmis").layer_cams(images, labels)
    feats = {}
    h = resnet.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("a", o))
    logits = resnet(images)
    h.remove()
    (g,) = torch.autograd.grad(logits[:, 2].exp().sum(), feats["a"])
    torch.testing.assert_close(lc.weights, ref(feats["a"].detach(), g[:, None], variant="wsmis"), rtol=1e-4, atol=1e-7)


def test_device_matches_cpu(device, resnet, images):
    if device == "cpu":
        pytest.skip("reference device")
    labels = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]])
    ext_cpu = CAMExtractor(resnet, "layer4")
    res_cpu = ext_cpu(images, labels, scales=(1.0, 0.5), flip=True)
    model = torchvision.models.resnet18(num_classes=N_CLS)
    model.load_state_dict(resnet.state_dict())
    model = model.to(device).eval()
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # compare in true fp32
    try:
        res = CAMExtractor(model, "layer4")(images.to(device), labels.to(device), scales=(1.0, 0.5), flip=True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    assert res.cams.device.type == device
    torch.testing.assert_close(res.cams.cpu(), res_cpu.cams, rtol=1e-3, atol=2e-3)
    torch.testing.assert_close(res.high_res.cpu(), res_cpu.high_res, rtol=1e-3, atol=2e-3)


@pytest.mark.parametrize("method", ["gradcam++", "cam"])
def test_call_waits_for_the_gpu_only_to_read_predicted_labels(device, host_reads, resnet, images, method):
    """With labels on the host (make-cam's ground truth) a call only queues work: the slot layout
    comes from the host labels and the pairs are picked by index, not by a boolean mask.
    Predicted labels are read once, at the reference scale. The maps' copy to the host
    (``to_host``) is queued too."""
    if device == "cpu":
        pytest.skip("counts waits for a GPU")
    model = torchvision.models.resnet18(num_classes=N_CLS)
    model.load_state_dict(resnet.state_dict())
    ext = CAMExtractor(model.to(device).eval(), "layer4", method=method)
    labels = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]])
    x = images.to(device)
    ext(x, labels, scales=(1.0, 0.5), flip=True)  # warm-up: cuDNN, the pinned-memory pool
    with host_reads(device) as given:
        res = ext(x, labels, scales=(1.0, 0.5), flip=True)
    with host_reads(device) as predicted:
        ext(x, None, scales=(1.0, 0.5), flip=True)
    with host_reads(device) as copied:  # make-cam's copy to the host is queued, waited for later
        host = res.to_host(torch.float16, ("keys", "cam", "high_res"))
    assert given.count == 0, given.where
    assert predicted.count == 1, predicted.where
    assert copied.count == 0, copied.where
    for got, want in zip(host.wait(), res.per_image(numpy=True, fields=("keys", "cam", "high_res"))):
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
    assert res.keys.tolist() == [0, 2, 1, 0, 5] and res.image_index.tolist() == [0, 0, 1, 2, 2]


def test_autocast_maps_are_float32_and_close(device, resnet, images):
    """Under bfloat16 autocast (make-cam's ``cam.amp``; here a convolution as the CAM layer, so its
    activations and their gradients are bfloat16) the maps are float32 and close to the float32 run's."""
    labels = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1]], device=device)
    model = torchvision.models.resnet18(num_classes=N_CLS)
    model.load_state_dict(resnet.state_dict())
    ext = CAMExtractor(model.to(device).eval(), "layer4.1.conv2")  # a convolution: bfloat16 under autocast
    x = images.to(device)
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # the reference in true fp32
    try:
        full = ext(x, labels, scales=(1.0, 0.5), flip=True)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    with torch.autocast(device, dtype=torch.bfloat16):
        half = ext(x, labels, scales=(1.0, 0.5), flip=True)
    for name in ("cams", "high_res", "raw"):
        a, b = getattr(full, name), getattr(half, name)
        assert b.dtype == torch.float32, name
        scale = a.abs().max().item()
        # on the CPU: max 0.008, mean 0.0024 of the scale; cuDNN's bfloat16 rounds otherwise
        assert (a - b).abs().max().item() <= 0.02 * scale and (a - b).abs().mean().item() <= 0.005 * scale, name


def test_bad_inputs(resnet, images):
    with pytest.raises(ValueError, match=r"target_layer 'layer5' is not a submodule.*layer4"):
        CAMExtractor(resnet, "layer5")
    with pytest.raises(ValueError, match="not a submodule of the model"):
        CAMExtractor(resnet, nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="method must be one of"):
        CAMExtractor(resnet, "layer4", method="scorecam")
    with pytest.raises(ValueError, match="variant must be one of"):
        CAMExtractor(resnet, "layer4", variant="x")
    ext = CAMExtractor(resnet, "layer4")
    with pytest.raises(ValueError, match=r"labels must be a multi-hot tensor \[B, N\] = \[3, 6\], got shape \[3, 5\]"):
        ext(images, torch.ones(3, 5))
    with pytest.raises(ValueError, match=r"labels must be a multi-hot tensor \[B, N\] = \[3, 6\], got shape \[2, 6\]"):
        ext(images, torch.ones(2, 6))
    with pytest.raises(ValueError, match="no positive class"):
        ext(images, torch.zeros(3, N_CLS))
    empty = ext(images, torch.zeros(3, N_CLS), allow_empty=True)
    assert empty.num_pairs == 0 and empty.cams.shape == (0, 20, 18) and empty.counts() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"images must be a floating tensor \[B, 3, H, W\]"):
        ext(images[0])
    with pytest.raises(ValueError, match="scales must be"):
        ext(images, scales=(1.0, -0.5))
    model = Tiny()
    with pytest.raises(RuntimeError, match="'unused' was not called in forward"):
        CAMExtractor(model, "unused")(torch.randn(1, 3, 16, 16))
    with pytest.raises(TypeError, match=r"must output a 4-D tensor"):
        CAMExtractor(model, "fc")(torch.randn(1, 3, 16, 16))
    assert not any(m._forward_hooks for m in model.modules())  # removed on error too


def test_project_classifier_head():
    from wsss_fast.cls.model import Classifier

    torch.manual_seed(0)
    model = Classifier("resnet18", num_classes=3, head_channels=32).eval()
    x = torch.randn(2, 3, 48, 40)
    labels = torch.tensor([[1, 0, 1], [0, 1, 0]])
    cam = CAMExtractor(model, model.cam_layer, "cam").layer_cams(x, labels)
    grad = CAMExtractor(model, model.cam_layer, "gradcam").layer_cams(x, labels)
    assert cam.maps.shape == (2, 2, 6, 5)
    torch.testing.assert_close(_minmax(cam.maps), _minmax(grad.maps), atol=1e-5, rtol=1e-4)
    res = CAMExtractor(model, "head")(x, labels, scales=(1.0, 0.5), flip=True)
    assert res.cams.shape == (3, 12, 10) and res.keys.tolist() == [0, 2, 1]
