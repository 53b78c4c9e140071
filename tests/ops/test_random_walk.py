"""Tests of wsss_fast.ops.random_walk against IRNet's dense walk (the reference)."""

from __future__ import annotations

import pytest
import torch

from wsss_fast import _ext
from wsss_fast.ops.random_walk import random_walk
from wsss_fast.reference import random_walk as ref

CUDA = torch.cuda.is_available()


def _dense64(x, edge, **kw):
    """The dense IRNet-literal walk in float64 on the CPU: the ground truth."""
    return ref.random_walk(x.detach().cpu().double(), edge.detach().cpu().double(), **kw)


def _rel_err(out, expected):
    return ((out.detach().cpu().double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("beta", [1.0, 10.0])
@pytest.mark.parametrize("steps", [0, 1, 7, 256])
def test_matches_dense_reference(device, compiled_ops, steps, beta):
    torch.manual_seed(steps)
    x = torch.rand(2, 3, 10, 13, device=device)
    edge = torch.rand(2, 1, 10, 13, device=device)
    out = random_walk(x, edge, radius=5, beta=beta, steps=steps)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert _rel_err(out, _dense64(x, edge, radius=5, beta=beta, steps=steps)) < 1e-4


@pytest.mark.parametrize("steps", [0, 7])
def test_without_the_edge_mask(device, compiled_ops, steps):
    """mask_edge=False starts from x itself: the same transition, and 0 steps return a copy of x."""
    torch.manual_seed(11 + steps)
    x = torch.rand(2, 3, 10, 13, device=device)
    edge = torch.rand(2, 10, 13, device=device) * 0.9
    out = random_walk(x, edge, radius=5, beta=10.0, steps=steps, mask_edge=False)
    expected = _dense64(x, edge, radius=5, beta=10.0, steps=steps, mask_edge=False)
    assert _rel_err(out, expected) < 1e-4
    # linear in x: the unmasked walk of x is the masked walk of x / (1 - edge)
    masked = _dense64(x / (1 - edge[:, None]), edge, radius=5, beta=10.0, steps=steps)
    assert _rel_err(out, masked) < 1e-4
    assert _rel_err(out, _dense64(x, edge, radius=5, beta=10.0, steps=steps)) > 1e-2
    if steps == 0:
        assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("radius", [1, 2, 3, 10])
def test_radii(device, compiled_ops, radius):
    torch.manual_seed(radius)
    x = torch.rand(1, 2, 12, 9, device=device)
    edge = torch.rand(1, 12, 9, device=device)
    out = random_walk(x, edge, radius=radius, beta=2.0, steps=5)
    assert _rel_err(out, _dense64(x, edge, radius=radius, beta=2.0, steps=5)) < 1e-5
    if radius == 1:  # no neighbours: the walk keeps x * (1 - edge)
        torch.testing.assert_close(out, x * (1 - edge[:, None]))


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_portable_and_avx2_rows_agree(compiled_ops, monkeypatch, channels):
    # The CPU kernel picks AVX2+FMA rows at run time; WSSS_FAST_NO_AVX2 forces the portable
    # 4-float rows. Both must match the dense float64 walk (and so each other).
    torch.manual_seed(channels)
    x = torch.rand(2, channels, 19, 37)
    edge = torch.rand(2, 19, 37)
    expected = _dense64(x, edge, radius=5, beta=10.0, steps=64)
    fast = random_walk(x, edge, steps=64)
    monkeypatch.setenv("WSSS_FAST_NO_AVX2", "1")
    portable = random_walk(x, edge, steps=64)
    assert _rel_err(fast, expected) < 1e-4 and _rel_err(portable, expected) < 1e-4
    assert _rel_err(fast, portable.double()) < 1e-4
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert not torch.equal(fast, portable)  # FMAs round differently: the switch took effect


def test_sparse_reference_matches_dense():
    torch.manual_seed(0)
    x = torch.rand(2, 2, 9, 11, dtype=torch.float64)
    edge = torch.rand(2, 9, 11, dtype=torch.float64)
    for steps in (0, 3, 16):
        torch.testing.assert_close(
            ref.random_walk_sparse(x, edge, radius=4, beta=3.0, steps=steps),
            ref.random_walk(x, edge, radius=4, beta=3.0, steps=steps),
        )


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_row_split_of_one_large_map(compiled_ops, threads):
    """One map with more rows than one CPU task takes (IRNet's 48x48 maps stay on one
    thread): every step is split over rows; same result as the sparse reference."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(2)
        x = torch.rand(1, 1, 160, 64, dtype=torch.float64)
        edge = torch.rand(1, 160, 64, dtype=torch.float64) ** 4
        out = random_walk(x, edge, radius=5, beta=10.0, steps=5)
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(out, ref.random_walk_sparse(x, edge, radius=5, beta=10.0, steps=5))


def test_float64_cpu(compiled_ops):
    torch.manual_seed(1)
    x = torch.rand(1, 2, 8, 10, dtype=torch.float64)
    edge = torch.rand(1, 8, 10, dtype=torch.float64)
    out = random_walk(x, edge, radius=5, beta=10.0, steps=37)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref.random_walk(x, edge, radius=5, beta=10.0, steps=37), rtol=1e-10, atol=1e-12)


def test_each_image_uses_its_edge_map(device, compiled_ops):
    torch.manual_seed(2)
    x = torch.rand(3, 2, 11, 12, device=device)
    edge = torch.rand(3, 11, 12, device=device)
    out = random_walk(x, edge, steps=9)
    for i in range(3):
        torch.testing.assert_close(out[i : i + 1], random_walk(x[i : i + 1], edge[i : i + 1], steps=9))


def test_non_contiguous_and_channels(device, compiled_ops):
    torch.manual_seed(3)
    x = torch.rand(2, 12, 5, 7, device=device).permute(0, 2, 3, 1)  # [2, 5, 7, 12] non-contiguous
    edge = torch.rand(2, 7, 12, device=device).transpose(1, 2).contiguous().transpose(1, 2)
    assert not x.is_contiguous()
    out = random_walk(x, edge, radius=3, beta=10.0, steps=11)
    assert _rel_err(out, _dense64(x, edge, radius=3, beta=10.0, steps=11)) < 1e-4


@pytest.mark.parametrize("shape", [(0, 2, 8, 8), (1, 0, 8, 8), (1, 1, 1, 1), (1, 2, 3, 7), (2, 1, 2, 2)])
def test_empty_and_tiny(device, compiled_ops, shape):
    torch.manual_seed(4)
    x = torch.rand(*shape, device=device)
    edge = torch.rand(shape[0], shape[2], shape[3], device=device)
    out = random_walk(x, edge, radius=5, beta=10.0, steps=7)
    assert out.shape == x.shape
    if x.numel():
        assert _rel_err(out, _dense64(x, edge, radius=5, beta=10.0, steps=7)) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cuda_reduced_precision(compiled_ops, dtype):
    torch.manual_seed(5)
    x = torch.rand(2, 3, 20, 24, device="cuda").to(dtype)
    edge = torch.rand(2, 20, 24, device="cuda").to(dtype)
    out = random_walk(x, edge, steps=64)
    assert out.dtype == dtype
    assert _rel_err(out, _dense64(x, edge, radius=5, beta=10.0, steps=64)) < 1e-2


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
# (4, 8, 160, 160) has more tiles than fit on the GPU at once: the walk without cached weights.
@pytest.mark.parametrize("shape", [(2, 3, 37, 45), (1, 2, 128, 128), (1, 21, 64, 48), (4, 8, 160, 160)])
def test_cpu_vs_cuda(compiled_ops, shape):
    """Both float32 walks against the CPU op in float64, with the dense oracle's bound (1e-4): 256
    float32 steps summed in another order drift apart by more than either drifts from the truth
    (5.5e-5 between them on an H200 for (4, 8, 160, 160); 1-2e-5 CPU against float64)."""
    torch.manual_seed(6)
    x = torch.rand(*shape)
    edge = torch.rand(shape[0], shape[2], shape[3])
    for steps in (1, 256):
        for mask in (True, False):
            truth = random_walk(x.double(), edge.double(), steps=steps, mask_edge=mask)
            cpu = random_walk(x, edge, steps=steps, mask_edge=mask)
            gpu = random_walk(x.cuda(), edge.cuda(), steps=steps, mask_edge=mask).cpu()
            assert _rel_err(cpu, truth) < 1e-4
            assert _rel_err(gpu, truth) < 1e-4


def test_opcheck(device, compiled_ops):
    x = torch.rand(2, 3, 6, 7, device=device)
    edge = torch.rand(2, 6, 7, device=device)
    torch.library.opcheck(torch.ops.wsss_fast.random_walk, (x, edge, 3, 10.0, 4))
    torch.library.opcheck(torch.ops.wsss_fast.random_walk, (x, edge.unsqueeze(1), 5, 1.0, 0))
    torch.library.opcheck(torch.ops.wsss_fast.random_walk, (x, edge, 3, 10.0, 4, False))
    torch.library.opcheck(torch.ops.wsss_fast.random_walk, (x, edge, 3, 10.0, 0, False))


def test_torch_compile(device, compiled_ops):
    torch._dynamo.reset()
    x = torch.rand(1, 2, 9, 10, device=device)
    edge = torch.rand(1, 9, 10, device=device)
    fn = torch.compile(lambda a, e: random_walk(a, e, radius=4, beta=10.0, steps=16) * 2, fullgraph=True)
    torch.testing.assert_close(fn(x, edge), random_walk(x, edge, radius=4, beta=10.0, steps=16) * 2)


def test_errors(device):
    x = torch.rand(1, 2, 5, 6, device=device)
    edge = torch.rand(1, 5, 6, device=device)
    with pytest.raises(ValueError, match="radius"):
        random_walk(x, edge, radius=0)
    with pytest.raises(ValueError, match="steps"):
        random_walk(x, edge, steps=-1)
    with pytest.raises(ValueError, match="beta"):
        random_walk(x, edge, beta=0.0)
    with pytest.raises(ValueError, match="mask_edge"):
        random_walk(x, edge, mask_edge=1)
    with pytest.raises(ValueError, match="edge must have shape"):
        random_walk(x, edge[:, :4])
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        random_walk(x[0], edge)
    with pytest.raises(TypeError, match="floating-point"):
        random_walk(x, edge.long())
    with pytest.raises(TypeError, match="floating-point"):
        random_walk(x.long(), edge)
    if device == "cuda":
        with pytest.raises(ValueError, match="same device"):
            random_walk(x, edge.cpu())


def test_compiled_op_errors(device, compiled_ops):
    x = torch.rand(1, 2, 5, 6, device=device)
    edge = torch.rand(1, 5, 6, device=device)
    with pytest.raises(RuntimeError, match="radius must be >= 1"):
        torch.ops.wsss_fast.random_walk(x, edge, 0, 10.0, 4)
    with pytest.raises(RuntimeError, match="steps must be >= 0"):
        torch.ops.wsss_fast.random_walk(x, edge, 5, 10.0, -1)
    with pytest.raises(RuntimeError, match="edge must have shape"):
        torch.ops.wsss_fast.random_walk(x, edge[:, :3], 5, 10.0, 4)


def test_fallback_uses_sparse_reference(monkeypatch):
    """Without the compiled op the wrapper warns and runs the sparse reference (a spy counts
    the calls: the compiled op gives nearly the same values)."""
    monkeypatch.setattr(_ext, "has_op", lambda name: False)
    monkeypatch.setattr(_ext, "_WARNED", False)
    calls = []
    real = ref.random_walk_sparse
    monkeypatch.setattr(ref, "random_walk_sparse", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.rand(1, 2, 6, 7)
    edge = torch.rand(1, 6, 7)
    with pytest.warns(RuntimeWarning, match="random_walk"):
        out = random_walk(x, edge, steps=3)
    assert calls == [1]
    torch.testing.assert_close(out, real(x, edge, steps=3))


@pytest.mark.parametrize("which", ["x", "edge"])
def test_backward_raises_instead_of_a_silent_none(device, compiled_ops, which):
    x = torch.rand(1, 2, 6, 7, device=device, requires_grad=which == "x")
    edge = torch.rand(1, 6, 7, device=device, requires_grad=which == "edge")
    out = random_walk(x, edge, radius=3, steps=4)
    assert out.requires_grad
    with pytest.raises(RuntimeError, match="random_walk is not differentiable"):
        out.sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(random_walk(x, edge, radius=3, steps=4), out.detach())


@pytest.mark.parametrize("layout", ["channels_last", "transposed"])
@pytest.mark.parametrize("steps", [0, 3])
def test_opcheck_non_contiguous(device, compiled_ops, layout, steps):
    """The output is contiguous whatever x's layout (steps 0 included), as the fake says."""
    x = torch.rand(2, 3, 6, 7, device=device)
    x = x.to(memory_format=torch.channels_last) if layout == "channels_last" else x.transpose(2, 3)
    edge = torch.rand(2, *x.shape[-2:], device=device)
    out = torch.ops.wsss_fast.random_walk(x, edge, 3, 10.0, steps)
    assert out.is_contiguous()
    torch.library.opcheck(torch.ops.wsss_fast.random_walk, (x, edge, 3, 10.0, steps))
