"""Tests of wsss_fast.ops.permutohedral_filter against the pure-PyTorch lattice (the reference)."""

from __future__ import annotations

import pytest
import torch

from wsss_fast import _ext
from wsss_fast.ops.permutohedral_filter import permutohedral_filter
from wsss_fast.reference import permutohedral_filter as ref

CUDA = torch.cuda.is_available()


def _inputs(device, b=2, c=3, d=5, n=150, spread=2.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(b, c, n, generator=g, dtype=dtype)
    f = torch.randn(b, d, n, generator=g) * spread
    return v.to(device), f.to(device)


@pytest.mark.parametrize("d", [1, 2, 5, 8])
@pytest.mark.parametrize("transpose", [False, True])
def test_matches_reference(device, compiled_ops, d, transpose):
    v, f = _inputs(device, d=d, seed=d)
    out = permutohedral_filter(v, f, transpose=transpose)
    assert out.shape == v.shape and out.dtype == v.dtype and out.device == v.device
    torch.testing.assert_close(out.cpu(), ref.permutohedral_filter(v.cpu(), f.cpu(), transpose=transpose),
                               rtol=1e-5, atol=1e-5)


def test_transpose_is_the_adjoint_and_differs(compiled_ops, device):
    """<K x, y> = <x, K^T y> in float64; on a sparse lattice K^T != K (the blur axes do not
    commute where vertices are missing), so the backward must use transpose=True."""
    v, f = _inputs(device, b=1, c=1, d=3, n=200, spread=3.0, dtype=torch.float64)
    y = torch.rand_like(v)
    kx = permutohedral_filter(v, f)
    kty = permutohedral_filter(y, f, transpose=True)
    torch.testing.assert_close((kx * y).sum(), (v * kty).sum(), rtol=1e-12, atol=1e-12)
    assert (kx - permutohedral_filter(v, f, transpose=True)).abs().max() > 1e-3


def test_gradcheck_float64(device, compiled_ops):
    v, f = _inputs(device, b=2, c=2, d=3, n=40, spread=2.0, dtype=torch.float64)
    v.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: permutohedral_filter(x, f), (v,))
    assert torch.autograd.gradcheck(lambda x: permutohedral_filter(x, f, transpose=True), (v,))


def test_constant_features_give_a_plain_sum(device, compiled_ops):
    """All points at one feature vector splat to one simplex: every output is the same multiple
    kappa of the plain sum of the values, kappa being the filter of a single unit point."""
    torch.manual_seed(0)
    for f0 in ([0.0, 0.0, 0.0], [0.3, -1.7, 2.2]):
        f = torch.tensor(f0, device=device)[None, :, None].expand(2, 3, 50).contiguous()
        v = torch.rand(2, 4, 50, device=device)
        kappa = permutohedral_filter(torch.ones(1, 1, 1, device=device), f[:1, :, :1])[0, 0, 0]
        assert 0.3 < kappa.item() <= 1.0
        expected = (kappa * v.sum(2, keepdim=True)).expand_as(v)
        torch.testing.assert_close(permutohedral_filter(v, f), expected, rtol=1e-5, atol=1e-5)


def test_approximates_the_gaussian(compiled_ops):
    """Far-apart points do not interact; nearby ones get weights that fall with distance."""
    f = torch.tensor([[[0.0, 0.5, 1.5, 40.0]]])  # 1-D features
    v = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    out = permutohedral_filter(v, f)[0, 0]
    assert out[0] > out[1] > out[2] > 0 and out[3] == 0


def test_layouts_and_images(device, compiled_ops):
    """[B, C, H, W] equals [B, C, N]; each image is filtered on its own features."""
    v, f = _inputs(device, b=3, c=2, d=3, n=60, seed=3)
    out = permutohedral_filter(v, f)
    torch.testing.assert_close(permutohedral_filter(v.view(3, 2, 6, 10), f.view(3, 3, 6, 10)), out.view(3, 2, 6, 10))
    for i in range(3):
        torch.testing.assert_close(permutohedral_filter(v[i:i + 1], f[i:i + 1]), out[i:i + 1])
    vt = v.transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous values
    torch.testing.assert_close(permutohedral_filter(vt, f.double()), out)


def test_empty(device, compiled_ops):
    v = torch.rand(2, 0, 5, device=device)
    f = torch.rand(2, 2, 5, device=device)
    assert permutohedral_filter(v, f).shape == (2, 0, 5)
    assert permutohedral_filter(torch.rand(0, 3, 4, device=device), torch.rand(0, 2, 4, device=device)).shape == (0, 3, 4)


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cpu_vs_cuda(compiled_ops):
    v, f = _inputs("cpu", b=4, c=21, d=5, n=3000, seed=7)
    cpu = permutohedral_filter(v, f)
    cuda = permutohedral_filter(v.cuda(), f.cuda())
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-5, atol=1e-6)


def test_opcheck(device, compiled_ops):
    v, f = _inputs(device, b=2, c=3, d=2, n=30)
    torch.library.opcheck(torch.ops.wsss_fast.permutohedral_filter, (v.view(2, 3, 5, 6), f.view(2, 2, 5, 6), False))
    torch.library.opcheck(torch.ops.wsss_fast.permutohedral_filter, (v.double().requires_grad_(), f, True))


def test_torch_compile(device, compiled_ops):
    torch._dynamo.reset()
    v, f = _inputs(device, b=1, c=2, d=3, n=40)
    fn = torch.compile(lambda a, b: permutohedral_filter(a * 2, b) + 1, fullgraph=True)
    torch.testing.assert_close(fn(v, f), permutohedral_filter(v * 2, f) + 1)


def test_backward_to_features_raises(device, compiled_ops):
    v, f = _inputs(device, b=1, c=2, d=2, n=20)
    f.requires_grad_(True)
    out = permutohedral_filter(v, f)
    with pytest.raises(RuntimeError, match="not differentiable with respect to features"):
        out.sum().backward()


def test_errors(device):
    v, f = _inputs(device, b=1, c=2, d=2, n=10)
    with pytest.raises(ValueError, match="3-D"):
        permutohedral_filter(v[0], f)
    with pytest.raises(ValueError, match="must match"):
        permutohedral_filter(v, f[..., :5])
    with pytest.raises(TypeError, match="float32 or float64"):
        permutohedral_filter(v.half(), f)
    with pytest.raises(TypeError, match="float32 or float64"):
        permutohedral_filter(v, f.long())
    with pytest.raises(ValueError, match="1 to 16 channels"):
        permutohedral_filter(v, torch.rand(1, 17, 10, device=device))
    if device == "cuda":
        with pytest.raises(ValueError, match="same device"):
            permutohedral_filter(v, f.cpu())


def test_compiled_op_errors(device, compiled_ops):
    v, f = _inputs(device, b=1, c=2, d=2, n=10)
    op = torch.ops.wsss_fast.permutohedral_filter
    with pytest.raises(RuntimeError, match="1 to 16 channels"):
        op(v, torch.rand(1, 0, 10, device=device), False)
    with pytest.raises(RuntimeError, match="finite"):
        op(v, f * float("nan"), False)
    with pytest.raises(RuntimeError, match="exact in float32"):
        op(v, f * 1e7, False)
    with pytest.raises(RuntimeError, match="must match values"):
        op(v, f[..., :4], False)


def test_fallback_uses_reference(monkeypatch):
    monkeypatch.setattr(_ext, "has_op", lambda name: False)
    monkeypatch.setattr(_ext, "_WARNED", False)
    calls = []
    real = ref.permutohedral_filter
    monkeypatch.setattr(ref, "permutohedral_filter", lambda *a, **k: calls.append(1) or real(*a, **k))
    v, f = _inputs("cpu", b=1, c=2, d=2, n=20)
    with pytest.warns(RuntimeWarning, match="permutohedral_filter"):
        out = permutohedral_filter(v, f)
    assert calls == [1]
    torch.testing.assert_close(out, real(v, f))
