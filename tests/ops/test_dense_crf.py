"""Tests of wsss_fast.ops.dense_crf against pydensecrf (the oracle) and the PyTorch reference.

The comparisons with pydensecrf skip where it is not installed (a GPU machine without the
carried build); the rest, CPU against CUDA among them, run without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_fast import _ext
from wsss_fast.data.synthetic import generate_image
from wsss_fast.ops.dense_crf import dense_crf, dense_crf_unary, unary_from_labels, unary_from_softmax
from wsss_fast.reference import dense_crf as ref

try:
    import pydensecrf.densecrf as dcrf
    import pydensecrf.utils as pd_utils
except ImportError:
    dcrf = pd_utils = None
needs_pydensecrf = pytest.mark.skipif(dcrf is None, reason="pydensecrf (pydensecrf2) is not installed")

CUDA = torch.cuda.is_available()
IRNET = dict(gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=50.0, bilateral_srgb=5.0, bilateral_compat=10.0)


def chest_image(h=48, w=64, seed=0) -> np.ndarray:
    """uint8 [H, W] synthetic radiograph (smooth, grey)."""
    img, _ = generate_image(seed, image_size=max(h, w), seed=1, positive=seed % 2 == 1)
    return np.ascontiguousarray(img[:h, :w])


def natural_image(h=48, w=64, seed=0) -> np.ndarray:
    """uint8 [H, W, 3]: coloured blobs on a gradient with texture noise (natural-looking edges)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([60 + 80 * yy / h, 90 + 60 * xx / w, 120 - 40 * yy / h], -1)
    for _ in range(4):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(6, 18)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def soft_probs(n_labels, h, w, seed=0) -> np.ndarray:
    """float32 [L, H, W] smooth class probabilities."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, n_labels, max(h // 8, 2), max(w // 8, 2), generator=g) * 3
    return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0].softmax(0).numpy()


def pydensecrf_q(unary: np.ndarray, rgb: np.ndarray, iterations: int, p=IRNET) -> np.ndarray:
    n_labels, h, w = unary.shape
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary.reshape(n_labels, -1).astype(np.float32)))
    d.addPairwiseGaussian(sxy=p["gaussian_sxy"], compat=p["gaussian_compat"])
    d.addPairwiseBilateral(sxy=p["bilateral_sxy"], srgb=p["bilateral_srgb"], rgbim=np.ascontiguousarray(rgb),
                           compat=p["bilateral_compat"])
    return np.array(d.inference(iterations)).reshape(n_labels, h, w)


def _case(kind, n_labels, unary_kind, seed=0, h=48, w=64):
    img = chest_image(h, w, seed) if kind == "chest" else natural_image(h, w, seed)
    rgb = np.repeat(img[..., None], 3, 2) if img.ndim == 2 else img
    image = torch.from_numpy(img)[None, None] if img.ndim == 2 else torch.from_numpy(img).permute(2, 0, 1)[None]
    probs = soft_probs(n_labels, h, w, seed)
    # pydensecrf's unary helpers, as ours compute them (test_unary_helpers_match_pydensecrf)
    if unary_kind == "soft":
        unary = unary_from_softmax(torch.from_numpy(probs)[None])[0].numpy()
    else:
        labels = torch.from_numpy(probs.argmax(0))[None]
        unary = unary_from_labels(labels, n_labels, gt_prob=0.7, zero_unsure=False)[0].numpy()
    return np.ascontiguousarray(unary), rgb, image.contiguous(), probs


def _agree(q, expected):
    q = q.detach().cpu().numpy()
    return (q.argmax(0) == expected.argmax(0)).mean(), np.abs(q - expected).mean()


@pytest.mark.parametrize("kind", ["chest", "natural"])
@pytest.mark.parametrize("n_labels", [2, 21])
@pytest.mark.parametrize("iterations", [1, 10])
@pytest.mark.parametrize("unary_kind", ["soft", "labels"])
@needs_pydensecrf
def test_matches_pydensecrf(device, compiled_ops, kind, n_labels, iterations, unary_kind):
    unary, rgb, image, _ = _case(kind, n_labels, unary_kind, seed=n_labels + iterations)
    q = dense_crf_unary(torch.from_numpy(unary)[None].to(device), image.to(device), iterations=iterations, **IRNET)
    assert q.shape == (1, n_labels, *unary.shape[1:]) and q.dtype == torch.float32
    expected = pydensecrf_q(unary, rgb, iterations)
    agree, mad = _agree(q[0], expected)
    assert agree >= 0.999 and mad <= 1e-3, (agree, mad)
    if device == "cpu":  # same lattice, same float operations: all but exact
        assert np.abs(q[0].numpy() - expected).max() < 1e-4


@needs_pydensecrf
def test_matches_pydensecrf_at_the_pipelines_widths(device, compiled_ops):
    """Scaled widths (ir_label.crf at 64 px: sxy 3 * 64 / 500, 50 * 64 / 500) on a batch of 3."""
    p = dict(IRNET, gaussian_sxy=3 * 64 / 500, bilateral_sxy=50 * 64 / 500)
    cases = [_case("chest", 2, "labels", seed=s) for s in range(3)]
    unary = torch.from_numpy(np.stack([c[0] for c in cases]))
    image = torch.cat([c[2] for c in cases])
    q = dense_crf_unary(unary.to(device), image.to(device), **p)
    for i, (u, rgb, _, _) in enumerate(cases):
        agree, mad = _agree(q[i], pydensecrf_q(u, rgb, 10, p))
        assert agree >= 0.999 and mad <= 1e-3


@needs_pydensecrf
def test_dense_crf_from_probabilities(device, compiled_ops):
    unary, rgb, image, probs = _case("natural", 3, "soft")
    q = dense_crf(torch.from_numpy(probs)[None].to(device), image.to(device), iterations=5, **IRNET)
    agree, mad = _agree(q[0], pydensecrf_q(unary, rgb, 5))
    assert agree >= 0.999 and mad <= 1e-3


@needs_pydensecrf
def test_reference_matches_pydensecrf():
    unary, rgb, image, _ = _case("natural", 3, "soft", h=24, w=30)
    q = ref.dense_crf_unary(torch.from_numpy(unary)[None], image, iterations=10, **IRNET)
    assert np.abs(q[0].numpy() - pydensecrf_q(unary, rgb, 10)).max() < 1e-4


@needs_pydensecrf
def test_unary_helpers_match_pydensecrf():
    probs = soft_probs(4, 10, 12)
    probs[0, 0, 0] = 0.0  # clipped
    np.testing.assert_allclose(unary_from_softmax(torch.from_numpy(probs)[None])[0].reshape(4, -1).numpy(),
                               pd_utils.unary_from_softmax(probs), rtol=1e-6)
    labels = np.random.default_rng(0).integers(0, 5, (10, 12))
    for zero_unsure, n in ((True, 4), (False, 5)):
        ours = unary_from_labels(torch.from_numpy(labels)[None], n, 0.7, zero_unsure)[0].reshape(n, -1).numpy()
        np.testing.assert_array_equal(ours, pd_utils.unary_from_labels(labels, n, 0.7, zero_unsure=zero_unsure))
    with pytest.raises(ValueError, match="gt_prob"):
        unary_from_labels(torch.from_numpy(labels)[None], 5, 1.0, False)
    with pytest.raises(ValueError, match="labels must lie"):
        unary_from_labels(torch.from_numpy(labels)[None], 4, 0.7, False)


def test_unary_from_labels_reads_the_range_once(device, host_reads):
    """The label range check waits for the device once (one read of min and max), and names
    the range it found."""
    labels = torch.tensor([[[0, 2], [1, 1]]], dtype=torch.uint8, device=device)
    with host_reads(device) as reads:
        unary = unary_from_labels(labels, 3, 0.7, zero_unsure=False)
    assert reads.count <= 1, reads.where
    assert unary.shape == (1, 3, 2, 2) and unary.device.type == device
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\], got \[0, 3\]"):
        unary_from_labels(labels + 1 * (labels == 2), 3, 0.7, zero_unsure=False)


def test_grey_equals_three_channels_and_batch_equals_single(device, compiled_ops):
    unary, _, image, _ = _case("chest", 2, "soft")
    u = torch.from_numpy(unary)[None].to(device)
    grey = image.to(device)
    q_grey = dense_crf_unary(u, grey, iterations=3)
    torch.testing.assert_close(dense_crf_unary(u, grey.expand(1, 3, -1, -1), iterations=3), q_grey)
    u2, _, image2, _ = _case("natural", 2, "soft", seed=5)
    both = dense_crf_unary(torch.cat([u, torch.from_numpy(u2)[None].to(device)]),
                           torch.cat([grey.expand(1, 3, -1, -1), image2.to(device)]), iterations=3)
    torch.testing.assert_close(both[:1], q_grey)
    torch.testing.assert_close(both[1:], dense_crf_unary(torch.from_numpy(u2)[None].to(device), image2.to(device),
                                                         iterations=3))


def test_one_thread_equals_several(compiled_ops):
    """One thread scatters the splat in pixel order, several gather per vertex: same sums, same bits."""
    unary, _, image, _ = _case("natural", 21, "soft", h=40, w=56)
    u = torch.from_numpy(unary)[None]
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = dense_crf_unary(u, image, iterations=3, **IRNET)
        torch.set_num_threads(2)
        several = dense_crf_unary(u, image, iterations=3, **IRNET)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(one, several)


def test_zero_iterations_is_the_softmax(device, compiled_ops):
    u = torch.rand(2, 3, 9, 11, device=device) * 4
    image = torch.randint(0, 256, (2, 3, 9, 11), dtype=torch.uint8, device=device)
    torch.testing.assert_close(dense_crf_unary(u, image, iterations=0), torch.softmax(-u, 1))


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cpu_vs_cuda(compiled_ops):
    cases = [_case("natural", 21, "soft", seed=s, h=60, w=80) for s in range(4)]
    unary = torch.from_numpy(np.stack([c[0] for c in cases]))
    image = torch.cat([c[2] for c in cases])
    cpu = dense_crf_unary(unary, image)
    cuda = dense_crf_unary(unary.cuda(), image.cuda()).cpu()
    assert (cpu.argmax(1) == cuda.argmax(1)).float().mean() >= 0.999
    assert (cpu - cuda).abs().mean() <= 1e-5


def test_opcheck(device, compiled_ops):
    u = torch.rand(2, 3, 7, 8, device=device)
    image = torch.randint(0, 256, (2, 1, 7, 8), dtype=torch.uint8, device=device)
    torch.library.opcheck(torch.ops.wsss_fast.dense_crf, (u, image, 3.0, 3.0, 50.0, 5.0, 10.0, 2))


def test_torch_compile(device, compiled_ops):
    torch._dynamo.reset()
    u = torch.rand(1, 2, 8, 9, device=device)
    image = torch.randint(0, 256, (1, 3, 8, 9), dtype=torch.uint8, device=device)
    fn = torch.compile(lambda a, b: dense_crf_unary(a * 2, b, iterations=2).argmax(1), fullgraph=True)
    torch.testing.assert_close(fn(u, image), dense_crf_unary(u * 2, image, iterations=2).argmax(1))


def test_backward_raises(device, compiled_ops):
    u = torch.rand(1, 2, 5, 6, device=device, requires_grad=True)
    image = torch.zeros(1, 1, 5, 6, dtype=torch.uint8, device=device)
    with pytest.raises(RuntimeError, match="dense_crf is not differentiable"):
        dense_crf_unary(u, image, iterations=1).sum().backward()


def test_errors(device):
    u = torch.rand(1, 2, 5, 6, device=device)
    image = torch.zeros(1, 3, 5, 6, dtype=torch.uint8, device=device)
    with pytest.raises(ValueError, match="at least 2 labels"):
        dense_crf_unary(u[:, :1], image)
    with pytest.raises(TypeError, match="float32"):
        dense_crf_unary(u.double(), image)
    with pytest.raises(TypeError, match="uint8"):
        dense_crf_unary(u, image.float())
    with pytest.raises(ValueError, match="1, H, W"):
        dense_crf_unary(u, image[:, :2])
    with pytest.raises(ValueError, match="must match"):
        dense_crf_unary(u, image[..., :5])
    with pytest.raises(ValueError, match=r"\[B, L, H, W\]"):
        dense_crf_unary(u[0], image)
    for key in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
        with pytest.raises(ValueError, match=key):
            dense_crf_unary(u, image, **{key: 0.0})
    with pytest.raises(ValueError, match="iterations"):
        dense_crf_unary(u, image, iterations=-1)
    with pytest.raises(ValueError, match="probs must be"):
        dense_crf(u[0], image)
    if device == "cuda":
        with pytest.raises(ValueError, match="same device"):
            dense_crf_unary(u, image.cpu())


def test_compiled_op_errors(device, compiled_ops):
    u = torch.rand(1, 2, 5, 6, device=device)
    image = torch.zeros(1, 3, 5, 6, dtype=torch.uint8, device=device)
    op = torch.ops.wsss_fast.dense_crf
    with pytest.raises(RuntimeError, match="at least 2 labels"):
        op(u[:, :1], image, 3.0, 3.0, 50.0, 5.0, 10.0, 1)
    with pytest.raises(RuntimeError, match="must be > 0"):
        op(u, image, 3.0, 3.0, 50.0, -5.0, 10.0, 1)
    with pytest.raises(RuntimeError, match="iterations must be >= 0"):
        op(u, image, 3.0, 3.0, 50.0, 5.0, 10.0, -1)
    with pytest.raises(RuntimeError, match="uint8|Byte"):
        op(u, image.float(), 3.0, 3.0, 50.0, 5.0, 10.0, 1)
    with pytest.raises(RuntimeError, match="too small"):
        op(u, image, 3.0, 3.0, 50.0, 1e-6, 10.0, 1)


def test_fallback_uses_reference(monkeypatch):
    monkeypatch.setattr(_ext, "has_op", lambda name: False)
    monkeypatch.setattr(_ext, "_WARNED", False)
    calls = []
    real = ref.dense_crf_unary
    monkeypatch.setattr(ref, "dense_crf_unary", lambda *a, **k: calls.append(1) or real(*a, **k))
    u = torch.rand(1, 2, 6, 7)
    image = torch.randint(0, 256, (1, 3, 6, 7), dtype=torch.uint8)
    with pytest.warns(RuntimeWarning, match="dense_crf"):
        out = dense_crf_unary(u, image, iterations=2)
    assert calls == [1]
    torch.testing.assert_close(out, real(u, image, iterations=2))
