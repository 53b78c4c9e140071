"""Tests of wsss_fast.ops.gradcampp_weights (kernel vs reference, pytorch-grad-cam formula)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_fast.ops.gradcampp_weights import gradcampp_weights
from wsss_fast.reference.gradcampp_weights import gradcampp_weights as ref_weights

VARIANTS = ["paper", "wsmis"]


def _inputs(b=2, c=3, k=5, h=4, w=6, device="cpu", dtype=torch.float32, gscale=1e-2, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(b, k, h, w, generator=g, dtype=torch.float64).relu()
    gr = torch.randn(b, c, k, h, w, generator=g, dtype=torch.float64) * gscale
    gr[gr.abs() < 0.3 * gscale] = 0  # exact zeros, as after a ReLU
    return a.to(device, dtype), gr.to(device, dtype)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gscale", [1.0, 1e-3])
def test_matches_reference(compiled_ops, device, variant, dtype, gscale):
    a, g = _inputs(device=device, dtype=dtype, gscale=gscale)
    out = torch.ops.wsss_fast.gradcampp_weights(a, g, variant, None)
    ref = ref_weights(a, g, variant=variant)
    assert out.shape == (2, 3, 5) and out.dtype == dtype
    # fp32: summation order differs (and sum(A * g^3) cancels for "wsmis")
    rtol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out, ref, rtol=rtol, atol=rtol * float(ref.abs().max()))
    assert out.abs().sum() > 0


def _accumulated_in(a: torch.Tensor, g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The "paper" weights with every pixel sum accumulated in ``dtype`` (what the kernel
    must not do), pixel by pixel."""
    a, g = a.to(dtype), g.to(dtype)
    af, gf = a.flatten(2), g.flatten(3)
    s = torch.zeros(a.shape[:2], dtype=dtype)
    for i in range(af.shape[-1]):
        s = s + af[..., i]
    out = torch.zeros(g.shape[:3], dtype=dtype)
    for i in range(gf.shape[-1]):
        gi = gf[..., i]
        term = gi * gi / (2 * gi * gi + s[:, None] * gi**3 + 1e-6) * gi
        out = out + torch.where(gi > 0, term, torch.zeros_like(gi))
    return out


@pytest.mark.parametrize("dtype,rtol", [(torch.float16, 1e-3), (torch.bfloat16, 8e-3)])
def test_half_accumulates_in_fp32(compiled_ops, device, dtype, rtol):
    # 4096 pixels per sum: only the rounding of the output itself (about 2^-11 for fp16,
    # 2^-8 for bf16) is allowed; accumulating in the input dtype misses by 10-100x that.
    a, g = _inputs(k=7, h=64, w=64, device=device, dtype=dtype, gscale=1.0)
    out = gradcampp_weights(a, g)
    ref = ref_weights(a.float(), g.float())
    assert out.dtype == dtype
    tol = {"rtol": rtol, "atol": 0.1 * rtol * float(ref.abs().max())}
    torch.testing.assert_close(out.float(), ref, **tol)
    with pytest.raises(AssertionError):  # the tolerance is tight enough to tell
        torch.testing.assert_close(_accumulated_in(a.cpu().float(), g.cpu().float(), dtype).float(), ref.cpu(),
                                   **tol)


def test_paper_equals_pytorch_grad_cam(compiled_ops, device):
    from pytorch_grad_cam.grad_cam_plusplus import GradCAMPlusPlus

    a, g = _inputs(c=1, k=8, h=7, w=7, device=device, gscale=1e-3)
    expected = GradCAMPlusPlus.get_cam_weights(None, None, None, None, a.cpu().numpy(), g[:, 0].cpu().numpy())
    out = gradcampp_weights(a, g)[:, 0].cpu().numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-9)


def test_wsmis_equals_seed_code_formula(compiled_ops, device):
    a, g = _inputs(device=device, gscale=0.5)
    sq = g**2
    alpha = sq / (2 * sq + (sq * g * a[:, None]).sum(dim=(-2, -1), keepdim=True) + 1e-8)
    expected = (alpha * g.relu()).sum(dim=(-2, -1))
    torch.testing.assert_close(gradcampp_weights(a, g, variant="wsmis"), expected, rtol=1e-5, atol=1e-9)
    # the variants differ
    assert not torch.allclose(gradcampp_weights(a, g, variant="paper"), expected, rtol=1e-3)


def test_eps_is_used(compiled_ops, device):
    a, g = _inputs(device=device, gscale=1e-4)
    w6 = gradcampp_weights(a, g)
    w0 = gradcampp_weights(a, g, eps=0.0)
    torch.testing.assert_close(w6, ref_weights(a, g, eps=1e-6))
    assert (w0 - w6).abs().max() > 1e-3 * w0.abs().max()


def test_noncontiguous_inputs(compiled_ops, device):
    a, g = _inputs(b=3, c=2, k=6, device=device)
    g_cb = g.transpose(0, 1).contiguous().transpose(0, 1)  # [C, B, ...] storage, permuted view
    a_nc = torch.stack([a, a], dim=2).flatten(1, 2)[:, ::2]  # strided channels
    assert not g_cb.is_contiguous() and not a_nc.is_contiguous()
    ref = ref_weights(a, g)
    torch.testing.assert_close(gradcampp_weights(a_nc, g_cb), ref)
    # spatially transposed slices take the copy path
    torch.testing.assert_close(
        gradcampp_weights(a.transpose(-1, -2), g.transpose(-1, -2)), ref_weights(a.mT, g.mT)
    )


@pytest.mark.parametrize("shape", [(0, 2, 3, 4, 4), (2, 0, 3, 4, 4), (2, 2, 0, 4, 4), (2, 2, 3, 0, 4), (1, 1, 3, 4, 4)])
def test_empty_and_batch1(compiled_ops, device, shape):
    b, c, k, h, w = shape
    a, g = _inputs(b=b, c=c, k=k, h=h, w=w, device=device)
    out = gradcampp_weights(a, g)
    assert out.shape == (b, c, k)
    torch.testing.assert_close(out, ref_weights(a, g))


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck(compiled_ops, device, variant):
    a, g = _inputs(b=2, c=2, k=3, h=3, w=3, device=device, dtype=torch.float64, gscale=0.5, seed=3)
    a.requires_grad_(True)
    g.requires_grad_(True)
    fn = lambda a_, g_: gradcampp_weights(a_, g_, variant=variant)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, g), eps=1e-6, atol=1e-6)


def test_opcheck(compiled_ops, device):
    a, g = _inputs(device=device)
    for variant in VARIANTS:
        torch.library.opcheck(torch.ops.wsss_fast.gradcampp_weights.default, (a, g, variant, None))
    a64, g64 = _inputs(device=device, dtype=torch.float64, gscale=0.5)
    torch.library.opcheck(
        torch.ops.wsss_fast.gradcampp_weights.default,
        (a64.requires_grad_(), g64.requires_grad_(), "wsmis", 1e-3),
    )
    # the schema's defaults (variant, eps) left out, gradients included
    torch.library.opcheck(torch.ops.wsss_fast.gradcampp_weights.default, (a64, g64))


def test_compile_fullgraph(compiled_ops, device):
    a, g = _inputs(device=device)
    fn = torch.compile(lambda a_, g_: gradcampp_weights(a_, g_, variant="paper") * 2, fullgraph=True)
    torch.testing.assert_close(fn(a, g), 2 * ref_weights(a, g))


def test_bad_inputs(compiled_ops, device):
    a, g = _inputs(device=device)
    with pytest.raises(ValueError, match=r"activations must be a 4-D tensor \[B, K, h, w\]"):
        gradcampp_weights(a[0], g)
    with pytest.raises(ValueError, match=r"grads must be a 5-D tensor"):
        gradcampp_weights(a, g[:, 0])
    with pytest.raises(ValueError, match=r"grads must have shape \[B, C, K, h, w\] = \[2, C, 5, 4, 6\]"):
        gradcampp_weights(a, g[:, :, :4])
    with pytest.raises(TypeError, match="share one floating dtype"):
        gradcampp_weights(a, g.double())
    with pytest.raises(RuntimeError, match="same device"):
        gradcampp_weights(a, g.to("meta"))
    with pytest.raises(TypeError, match="must be tensors"):
        gradcampp_weights(a.cpu().numpy(), g)
    with pytest.raises(ValueError, match="variant must be one of"):
        gradcampp_weights(a, g, variant="plusplus")
    with pytest.raises(ValueError, match="eps must be >= 0"):
        gradcampp_weights(a, g, eps=-1.0)
    # the C++ checks name the argument too
    with pytest.raises(RuntimeError, match="grads must have shape"):
        torch.ops.wsss_fast.gradcampp_weights(a, g[:, :, :4], "paper", None)
    with pytest.raises(RuntimeError, match="variant must be 'paper' or 'wsmis'"):
        torch.ops.wsss_fast.gradcampp_weights(a, g, "x", None)
    with pytest.raises(RuntimeError, match="grads must have dtype"):
        torch.ops.wsss_fast.gradcampp_weights(a, g.double(), "paper", None)
