"""Tests of wsss_fast.ops.weighted_cam (kernel vs reference, pytorch-grad-cam normalization)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_fast.ops.weighted_cam import weighted_cam
from wsss_fast.reference.weighted_cam import weighted_cam as ref_cam


def _inputs(b=2, c=3, k=6, h=5, w=7, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, k, h, w, generator=g, dtype=torch.float64).relu()
    wt = torch.randn(b, c, k, generator=g, dtype=torch.float64)
    return a.to(device, dtype), wt.to(device, dtype)


@pytest.mark.parametrize("out_size", [None, (13, 9)])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(compiled_ops, device, out_size, normalize, dtype):
    a, w = _inputs(c=6, device=device, dtype=dtype)  # 6 classes: one full and one partial block of 4
    out = torch.ops.wsss_fast.weighted_cam(a, w, out_size, normalize)
    ref = ref_cam(a, w, out_size=out_size, normalize=normalize)
    assert out.shape == ref.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert (out > 0).any() and (out == 0).any()  # the ReLU bites
    if normalize:
        assert out.amax(dim=(-2, -1)).min() > 0.99


@pytest.mark.parametrize("out_size", [None, (100, 61), (4, 3)])
def test_many_pixels_and_channels(compiled_ops, device, out_size):
    # More pixels than one block and more channels than one slice per warp; up- and downsampling.
    a, w = _inputs(b=3, c=5, k=70, h=9, w=37, device=device, seed=3)
    for normalize in (False, True):
        out = weighted_cam(a, w, out_size=out_size, normalize=normalize)
        ref = ref_cam(a, w, out_size=out_size, normalize=normalize)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _accumulated_in(a: torch.Tensor, w: torch.Tensor, dtype: torch.dtype, out_size) -> torch.Tensor:
    """The maps with the channel sum accumulated in ``dtype`` (what the kernel must not do),
    channel by channel, then upsampled in fp32 as the kernel does."""
    a, w = a.to(dtype), w.to(dtype)
    s = torch.zeros(a.shape[0], w.shape[1], *a.shape[2:], dtype=dtype)
    for k in range(a.shape[1]):
        s = s + w[:, :, k, None, None] * a[:, None, k]
    return F.interpolate(s.relu().float(), size=out_size, mode="bilinear", align_corners=False).to(dtype)


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_half(compiled_ops, device, dtype, rtol):
    # 256 channels per sum: only the rounding of the output itself (about 2^-11 for fp16,
    # 2^-8 for bf16) is allowed; accumulating in the input dtype misses by far more.
    a, w = _inputs(b=2, c=3, k=256, h=6, w=7, device=device, dtype=dtype)
    out = weighted_cam(a, w, out_size=(10, 14), normalize=False)
    ref = ref_cam(a.float(), w.float(), out_size=(10, 14), normalize=False)
    assert out.dtype == dtype
    tol = {"rtol": rtol, "atol": 0.1 * rtol * float(ref.abs().max())}
    torch.testing.assert_close(out.float(), ref, **tol)
    with pytest.raises(AssertionError):  # the tolerance is tight enough to tell
        torch.testing.assert_close(_accumulated_in(a.cpu().float(), w.cpu().float(), dtype, (10, 14)).float(),
                                   ref.cpu(), **tol)
    # normalized maps: the same rounding budget (values in [0, 1])
    out_n = weighted_cam(a, w, out_size=(10, 14))
    ref_n = ref_cam(a.float(), w.float(), out_size=(10, 14))
    torch.testing.assert_close(out_n.float(), ref_n, rtol=rtol, atol=0.1 * rtol)


def test_normalization_equals_pytorch_grad_cam(compiled_ops, device):
    from pytorch_grad_cam.utils.image import scale_cam_image

    a, w = _inputs(c=1, device=device)
    cam = np.maximum((w.cpu().numpy()[:, 0, :, None, None] * a.cpu().numpy()).sum(axis=1), 0)
    expected = scale_cam_image(cam)
    out = weighted_cam(a, w)[:, 0].cpu().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_noncontiguous(compiled_ops, device):
    a, w = _inputs(device=device)
    a_nc = torch.stack([a, a], dim=2).flatten(1, 2)[:, 1::2]
    w_nc = w.transpose(1, 2).contiguous().transpose(1, 2)
    assert not a_nc.is_contiguous() and not w_nc.is_contiguous()
    torch.testing.assert_close(weighted_cam(a_nc, w_nc), ref_cam(a, w))
    torch.testing.assert_close(weighted_cam(a.mT, w, out_size=(8, 8)), ref_cam(a.mT.contiguous(), w, out_size=(8, 8)))


@pytest.mark.parametrize("b,c,k,h,w", [(0, 2, 3, 4, 4), (2, 0, 3, 4, 4), (2, 2, 0, 4, 4), (1, 1, 3, 4, 4), (2, 2, 3, 0, 4)])
def test_empty_and_batch1(compiled_ops, device, b, c, k, h, w):
    a, wt = _inputs(b=b, c=c, k=k, h=h, w=w, device=device)
    out = weighted_cam(a, wt)
    assert out.shape == (b, c, h, w)
    torch.testing.assert_close(out, ref_cam(a, wt))
    if h > 0:
        assert weighted_cam(a, wt, out_size=(6, 5)).shape == (b, c, 6, 5)


@pytest.mark.parametrize("out_size,normalize", [(None, False), (None, True), ((7, 9), False), ((7, 9), True)])
def test_gradcheck(compiled_ops, device, out_size, normalize):
    a, w = _inputs(b=2, c=2, k=3, h=3, w=4, device=device, dtype=torch.float64, seed=5)
    a = (a + 0.1).requires_grad_(True)
    w = w.requires_grad_(True)
    fn = lambda a_, w_: weighted_cam(a_, w_, out_size=out_size, normalize=normalize)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, w), eps=1e-6, atol=1e-5)


def test_opcheck(compiled_ops, device):
    a, w = _inputs(device=device, dtype=torch.float64)
    for args in [(a, w, None, False), (a, w, [9, 11], True)]:
        torch.library.opcheck(torch.ops.wsss_fast.weighted_cam.default, args)
    torch.library.opcheck(
        torch.ops.wsss_fast.weighted_cam.default, (a.requires_grad_(), w.requires_grad_(), [9, 11], True)
    )
    torch.library.opcheck(torch.ops.wsss_fast.weighted_cam.default, (a, w))  # the schema's defaults, with gradients


def test_compile_fullgraph(compiled_ops, device):
    a, w = _inputs(device=device)
    fn = torch.compile(lambda a_, w_: weighted_cam(a_, w_, out_size=(10, 10)) + 1, fullgraph=True)
    torch.testing.assert_close(fn(a, w), ref_cam(a, w, out_size=(10, 10)) + 1)


def test_bad_inputs(compiled_ops, device):
    a, w = _inputs(device=device)
    with pytest.raises(ValueError, match=r"activations must be a 4-D tensor \[B, K, h, w\]"):
        weighted_cam(a[0], w)
    with pytest.raises(ValueError, match=r"weights must be a 3-D tensor \[B, C, K\]"):
        weighted_cam(a, w[0])
    with pytest.raises(ValueError, match=r"weights must have shape \[B, C, K\] = \[2, C, 6\]"):
        weighted_cam(a, w[..., :5])
    with pytest.raises(TypeError, match="share one floating dtype"):
        weighted_cam(a, w.double())
    with pytest.raises(RuntimeError, match="same device"):
        weighted_cam(a, w.to("meta"))
    with pytest.raises(ValueError, match="out_size must be None or two positive ints"):
        weighted_cam(a, w, out_size=(0, 4))
    with pytest.raises(ValueError, match="out_size must be None or two positive ints"):
        weighted_cam(a, w, out_size=5)
    with pytest.raises(RuntimeError, match="weights must have shape"):
        torch.ops.wsss_fast.weighted_cam(a, w[..., :5], None, True)
    with pytest.raises(RuntimeError, match="out_size must be two positive ints"):
        torch.ops.wsss_fast.weighted_cam(a, w, [3], True)
