"""Tests of wsss_fast.ops.path_affinity / search_offsets / irnet_affinity_layout."""

from __future__ import annotations

import pytest
import torch

from wsss_fast import _ext
from wsss_fast.ops.path_affinity import irnet_affinity_layout, path_affinity, search_offsets
from wsss_fast.reference import path_affinity as ref

CUDA = torch.cuda.is_available()


def _brute_paths(radius):
    """Independent restatement of the issue's definitions (not the reference's helpers)."""
    offs = [(0, x) for x in range(1, radius)]
    offs += [(y, x) for y in range(1, radius) for x in range(-radius + 1, radius) if x * x + y * y < radius**2]
    paths = []
    for dy, dx in offs:
        pts = [
            (y, x)
            for y in range(min(0, dy), max(0, dy) + 1)
            for x in range(min(0, dx), max(0, dx) + 1)
            if (dy * x - dx * y) ** 2 / (dy * dy + dx * dx) < 1
        ]
        paths.append(pts)
    return offs, paths


def _brute_affinity(edge, radius):
    offs, paths = _brute_paths(radius)
    b, h, w = edge.shape
    out = torch.empty(b, len(offs), h, w, dtype=edge.dtype)
    e = edge.tolist()
    for bi in range(b):
        for k, pts in enumerate(paths):
            for y in range(h):
                for x in range(w):
                    vals = [e[bi][y + qy][x + qx] if 0 <= y + qy < h and 0 <= x + qx < w else 1.0 for qy, qx in pts]
                    out[bi, k, y, x] = 1 - max(vals)
    return out


def test_search_offsets():
    assert search_offsets(5).shape == (34, 2)
    assert search_offsets(10).shape == (152, 2)
    assert search_offsets(1).shape == (0, 2)
    assert search_offsets(2).tolist() == [[0, 1], [1, -1], [1, 0], [1, 1]]
    offs = search_offsets(7)
    assert offs.dtype == torch.long
    assert offs.tolist() == [list(o) for o in _brute_paths(7)[0]]


def test_reference_matches_brute_force():
    torch.manual_seed(0)
    edge = torch.rand(2, 6, 7, dtype=torch.float64)
    for r in (1, 2, 4):
        torch.testing.assert_close(ref.path_affinity(edge, r), _brute_affinity(edge, r), rtol=0, atol=0)


@pytest.mark.parametrize("radius", range(1, 11))
def test_matches_reference(device, compiled_ops, radius):
    torch.manual_seed(radius)
    for b, h, w in [(2, 9, 13), (1, 16, 16), (3, 21, 6)]:
        edge = torch.rand(b, h, w, device=device)
        torch.testing.assert_close(path_affinity(edge, radius), ref.path_affinity(edge, radius), rtol=0, atol=0)


def test_brute_force_including_values_above_one(device, compiled_ops):
    # Edge values above 1 make the literal "padded with 1" rule visible at the border.
    torch.manual_seed(1)
    edge = torch.rand(1, 5, 6, dtype=torch.float64) * 1.5
    out = path_affinity(edge.to(device), 3).cpu()
    torch.testing.assert_close(out, _brute_affinity(edge, 3), rtol=0, atol=0)


def test_layout_non_contiguous_and_4d(device, compiled_ops):
    torch.manual_seed(2)
    base = torch.rand(2, 12, 10, device=device)
    edge = base.transpose(1, 2)  # [2, 10, 12], non-contiguous
    assert not edge.is_contiguous()
    expected = ref.path_affinity(edge.contiguous(), 4)
    torch.testing.assert_close(path_affinity(edge, 4), expected, rtol=0, atol=0)
    torch.testing.assert_close(path_affinity(edge.unsqueeze(1), 4), expected, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(0, 8, 8), (1, 1, 1), (1, 3, 7), (2, 2, 3), (1, 0, 5)])
def test_empty_and_tiny(device, compiled_ops, shape):
    edge = torch.rand(*shape, device=device, requires_grad=True)
    out = path_affinity(edge, 5)
    assert out.shape == (shape[0], 34, shape[1], shape[2])
    torch.testing.assert_close(out, ref.path_affinity(edge.detach(), 5), rtol=0, atol=0)
    if out.numel():
        out.sum().backward()
        assert edge.grad.shape == edge.shape


def test_backward_matches_reference(device, compiled_ops):
    torch.manual_seed(3)
    edge = torch.rand(2, 1, 11, 9, dtype=torch.float64, device=device)
    for r in (2, 5):
        grad = torch.randn(2, len(search_offsets(r)), 11, 9, dtype=torch.float64, device=device)
        e1 = edge.clone().requires_grad_()
        path_affinity(e1, r).backward(grad)
        e2 = edge.clone().requires_grad_()
        ref.path_affinity(e2, r).backward(grad)
        torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_values_above_one(device, compiled_ops, dtype):
    # Above 1 an in-image path point beats the padding at the border, so border pixels send
    # gradient (the CPU kernel skips them only when every edge value is <= 1).
    torch.manual_seed(5)
    edge = (torch.rand(2, 9, 12, dtype=torch.float64) * 1.5).to(device=device, dtype=dtype)
    grad = torch.randn(2, len(search_offsets(4)), 9, 12, dtype=dtype, device=device)
    e1 = edge.clone().requires_grad_()
    path_affinity(e1, 4).backward(grad)
    e2 = edge.clone().requires_grad_()
    ref.path_affinity(e2, 4).backward(grad)
    torch.testing.assert_close(e1.grad, e2.grad)


def test_gradcheck(device, compiled_ops):
    torch.manual_seed(4)
    edge = torch.rand(2, 7, 8, dtype=torch.float64, device=device, requires_grad=True)  # no ties
    # CUDA adds the gradients of the paths that share a maximum with atomics: the order, so the
    # last bits of a float64 sum, may differ between two backward passes.
    tol = 1e-12 if device == "cuda" else 0.0
    assert torch.autograd.gradcheck(lambda e: path_affinity(e, 3), (edge,), fast_mode=True, nondet_tol=tol)
    assert torch.autograd.gradcheck(lambda e: path_affinity(e, 4), (edge,), fast_mode=True, nondet_tol=tol)


def test_tie_goes_to_first_path_point(device, compiled_ops):
    # Constant map: every path point ties; the gradient goes to the first point of IRNet's
    # path order, the destination.
    edge = torch.full((1, 6, 7), 0.5, device=device, requires_grad=True)
    offs = search_offsets(3).tolist()
    k = offs.index([1, 1])
    out = path_affinity(edge, 3)
    grad = torch.zeros_like(out)
    grad[0, k, 2, 3] = 1.0
    out.backward(grad)
    expected = torch.zeros(1, 6, 7, device=device)
    expected[0, 3, 4] = -1.0
    torch.testing.assert_close(edge.grad, expected)


def test_irnet_affinity_layout():
    torch.manual_seed(5)
    radius, h, w = 4, 9, 12
    rf = radius - 1
    edge = torch.rand(2, h, w)
    aff = irnet_affinity_layout(ref.path_affinity(edge, radius), radius)
    d = len(search_offsets(radius))
    assert aff.shape == (2, d, (h - rf) * (w - 2 * rf))
    # IRNet's edge_to_affinity on the unpadded map: sources rows 0..h-rf-1, cols rf..w-rf-1.
    _, paths = _brute_paths(radius)
    n = 0
    for y in range(h - rf):
        for x in range(rf, w - rf):
            for k, pts in enumerate(paths):
                m = torch.stack([edge[:, y + qy, x + qx] for qy, qx in pts]).amax(0)
                torch.testing.assert_close(aff[:, k, n], 1 - m)
            n += 1
    small = irnet_affinity_layout(torch.zeros(1, d, 2, 5), radius)
    assert small.shape == (1, d, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cuda_reduced_precision(compiled_ops, dtype):
    torch.manual_seed(6)
    edge = torch.rand(2, 1, 17, 23, device="cuda").to(dtype).requires_grad_()
    out = path_affinity(edge, 5)
    assert out.dtype == dtype
    expected = ref.path_affinity(edge.detach().float(), 5)
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=1e-2)
    out.float().sum().backward()
    e32 = edge.detach().float().requires_grad_()
    ref.path_affinity(e32, 5).sum().backward()
    assert edge.grad.dtype == dtype
    torch.testing.assert_close(edge.grad.float(), e32.grad, rtol=1e-2, atol=1e-1)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_cpu_vs_cuda(compiled_ops):
    torch.manual_seed(7)
    edge = torch.rand(3, 1, 31, 45, dtype=torch.float64)
    grad = torch.randn(3, 152, 31, 45, dtype=torch.float64)
    outs, grads = [], []
    for dev in ("cpu", "cuda"):
        e = edge.to(dev).detach().requires_grad_()  # a leaf on each device
        out = path_affinity(e, 10)
        out.backward(grad.to(dev))
        outs.append(out.cpu())
        grads.append(e.grad.cpu())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_opcheck(device, compiled_ops):
    edge = torch.rand(2, 1, 7, 9, device=device, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.wsss_fast.path_affinity, (edge, 3))
    grad = torch.randn(2, 12, 7, 9, device=device, dtype=torch.float64)
    torch.library.opcheck(torch.ops.wsss_fast.path_affinity_backward, (grad, edge.detach(), 3))


def test_torch_compile(device, compiled_ops):
    torch._dynamo.reset()
    edge = torch.rand(2, 10, 11, device=device, requires_grad=True)
    fn = torch.compile(lambda e: path_affinity(e, 4).square().sum(), fullgraph=True)
    loss = fn(edge)
    loss.backward()
    e2 = edge.detach().clone().requires_grad_()
    ref.path_affinity(e2, 4).square().sum().backward()
    torch.testing.assert_close(loss, ref.path_affinity(edge.detach(), 4).square().sum())
    torch.testing.assert_close(edge.grad, e2.grad)


def test_errors(device):
    edge = torch.rand(1, 5, 5, device=device)
    with pytest.raises(ValueError, match="radius"):
        path_affinity(edge, 0)
    with pytest.raises(TypeError, match="radius"):
        path_affinity(edge, 2.0)
    with pytest.raises(TypeError, match="floating-point"):
        path_affinity(torch.ones(1, 5, 5, dtype=torch.int64, device=device), 3)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        path_affinity(torch.rand(5, 5, device=device), 3)
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        path_affinity(torch.rand(1, 2, 5, 5, device=device), 3)
    with pytest.raises(ValueError, match="channels"):
        irnet_affinity_layout(torch.rand(1, 3, 5, 5), 3)


def test_compiled_op_errors(device, compiled_ops):
    edge = torch.rand(1, 5, 5, device=device)
    with pytest.raises(RuntimeError, match="radius must be >= 1"):
        torch.ops.wsss_fast.path_affinity(edge, 0)
    with pytest.raises(RuntimeError, match="floating-point"):
        torch.ops.wsss_fast.path_affinity(edge.long(), 3)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        torch.ops.wsss_fast.path_affinity_backward(torch.rand(1, 3, 5, 5, device=device), edge, 3)
    if device == "cpu":  # half precision is a CUDA feature: a clear error, not "not implemented"
        for fn, args in [(torch.ops.wsss_fast.path_affinity, (edge.half(), 3)),
                         (torch.ops.wsss_fast.path_affinity_backward, (torch.rand(1, len(search_offsets(3)), 5, 5).half(), edge.half(), 3))]:
            with pytest.raises(RuntimeError, match="edge must be float32 or float64 on CPU, got Half"):
                fn(*args)


def test_fallback_uses_reference(monkeypatch):
    """Without the compiled op the wrapper warns and runs the reference (a spy counts the
    calls: the compiled op gives the same values, so equal outputs alone prove nothing)."""
    monkeypatch.setattr(_ext, "has_op", lambda name: False)
    monkeypatch.setattr(_ext, "_WARNED", False)
    calls = []
    real = ref.path_affinity
    monkeypatch.setattr(ref, "path_affinity", lambda *a, **k: calls.append(1) or real(*a, **k))
    edge = torch.rand(1, 6, 6)
    with pytest.warns(RuntimeWarning, match="path_affinity"):
        out = path_affinity(edge, 3)
    assert calls == [1]
    torch.testing.assert_close(out, real(edge, 3))


def test_no_double_backward(device, compiled_ops):
    edge = torch.rand(1, 6, 6, device=device, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(path_affinity(edge, 3).pow(2).sum(), edge, create_graph=True)
    with pytest.raises(RuntimeError, match="path_affinity_backward is not differentiable"):
        g.sum().backward()
