"""Tests of wsss_fast.ops.drop_block2d (fused DropBlock, Ghiasi et al., NeurIPS 2018)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from wsss_fast.ops.drop_block2d import drop_block2d, drop_block2d_from_seeds
from wsss_fast.reference import drop_block2d as ref

MODES = ["paper", "simple"]


def _gen(device, seed=0):
    return torch.Generator(device=device).manual_seed(seed)


def _seeds(x_shape, bs, shared, mode, rate=0.15, seed=0, device="cpu"):
    shape = ref.seed_grid_shape(x_shape, bs, shared, mode)
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) < rate).to(device)


def _dropped(out):
    return out == 0


def _all_in_full_windows(dropped, bs, mode):
    """Every dropped pixel lies in an all-dropped bs x bs window (outside counts as
    dropped for "simple", whose blocks are clipped at the border)."""
    d = dropped.float()
    if mode == "simple":
        d = F.pad(d, (bs - 1,) * 4, value=1.0)
    full = -F.max_pool2d(-d, bs, stride=1)  # 1 where the whole window is dropped
    covered = F.max_pool2d(F.pad(full, (bs - 1,) * 4), bs, stride=1)
    if mode == "simple":
        covered = covered[..., bs - 1 : -(bs - 1), bs - 1 : -(bs - 1)]
    return torch.equal(covered.bool(), dropped)


def test_compiled_op_loaded(compiled_ops):
    from wsss_fast import _ext

    for name in ("drop_block2d", "drop_block2d_from_seeds", "drop_block2d_backward"):
        assert _ext.has_op(name), name


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape,bs", [((2, 3, 13, 9), 1), ((2, 3, 13, 9), 3), ((2, 3, 13, 9), 4),
                                      ((1, 2, 7, 16), 6), ((2, 2, 9, 9), 9), ((2, 3, 13, 9), 20)])
def test_from_seeds_matches_reference(compiled_ops, device, mode, shared, shape, bs):
    bsc = min(bs, *shape[2:])
    x = torch.randn(shape, dtype=torch.float64, device=device)
    seeds = _seeds(shape, bsc, shared, mode, device=device)
    got = drop_block2d_from_seeds(x, seeds, bs, mode)
    want = ref.drop_block2d_from_seeds(x.cpu(), seeds.cpu(), bsc, mode)
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


def _unpack(words, shape):
    """Keep mask [N, M, H, W] (bool) from the op's int32 bit words (bit e = flat element e)."""
    n = 1
    for s in shape:
        n *= s
    w = words.cpu().to(torch.int64) & 0xFFFFFFFF
    bits = (w[:, None] >> torch.arange(32)) & 1
    return bits.reshape(-1)[:n].reshape(shape).bool()


# W < 32 (several rows per word), H * W % 32 != 0 (maps share words), W > 64, bs > 32 and
# bs > 64 (several 32-column chunks of the horizontal window), bs = 1.
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape,bs", [((2, 3, 13, 9), 4), ((3, 2, 5, 7), 1), ((1, 3, 6, 37), 5),
                                      ((2, 2, 40, 70), 33), ((1, 2, 70, 100), 66), ((1, 1, 3, 130), 2)])
def test_bit_mask_and_count(compiled_ops, device, mode, shared, shape, bs):
    N, C, H, W = shape
    x = torch.randn(shape, device=device)
    seeds = _seeds(shape, bs, shared, mode, rate=0.1, device=device)
    if bs > 30:  # one seed per map (a few random ones would drop everything)
        seeds = torch.zeros_like(seeds)
        seeds[..., seeds.shape[2] // 3, seeds.shape[3] // 4] = True
        seeds[0, -1, -1, 3] = True
    out, words, count = torch.ops.wsss_fast.drop_block2d_from_seeds(x, seeds, bs, mode)
    M = 1 if shared else C
    assert words.dtype == torch.int32 and words.shape == ((N * M * H * W + 31) // 32,)
    keep = ref.keep_mask_from_seeds(seeds.cpu(), H, W, bs, mode)
    got = _unpack(words, (N, M, H, W))
    assert torch.equal(got, keep)
    assert count.item() == int(keep.sum())
    assert 0 < count.item() < keep.numel()
    tail = (N * M * H * W) % 32  # bits past the last element stay clear
    if tail:
        assert (int(words[-1]) & 0xFFFFFFFF) >> tail == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_from_seeds_dtypes(compiled_ops, device, dtype):
    x = torch.randn(2, 4, 12, 10, device=device).to(dtype)
    seeds = _seeds(x.shape, 3, False, "simple", device=device)
    got = drop_block2d_from_seeds(x, seeds, 3, "simple")
    want = ref.drop_block2d_from_seeds(x.cpu(), seeds.cpu(), 3, "simple")
    assert got.dtype == dtype
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


@pytest.mark.parametrize("bs", [1, 3, 5, 7])
def test_paper_mode_equals_torchvision_given_same_seeds(compiled_ops, device, bs):
    N, C, H, W, p = 2, 3, 15, 11, 0.4
    x = torch.randn(N, C, H, W, device=device)
    torch.manual_seed(1234)
    want = torchvision.ops.drop_block2d(x, p, bs)
    torch.manual_seed(1234)  # replay torchvision's draw of the noise on the seed grid
    gamma = (p * H * W) / ((bs**2) * ((H - bs + 1) * (W - bs + 1)))
    noise = torch.empty((N, C, H - bs + 1, W - bs + 1), device=device).bernoulli_(gamma)
    got = drop_block2d_from_seeds(x, noise, bs, "paper")
    assert torch.equal(got == 0, want == 0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # torchvision adds eps=1e-6


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 20, 17), (2, 3, 9, 75)])  # seed rows of < 32 / 2 full + 1 part words
@pytest.mark.parametrize("p,bs", [(0.3, 5), (0.1, 1), (0.6, 1)])  # bs 1: many seeds per word
def test_public_op_matches_reference_same_generator(compiled_ops, device, mode, shared, shape, p, bs):
    x = torch.randn(*shape, device=device)
    got = drop_block2d(x, p, bs, shared_mask=shared, gamma_mode=mode, generator=_gen(device, 7))
    want = ref.drop_block2d(x, p, bs, shared_mask=shared, gamma_mode=mode, generator=_gen(device, 7))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (got == 0).any() and (got != 0).any()


def test_same_seed_same_mask_and_new_seed_new_mask(compiled_ops, device):
    x = torch.rand(2, 8, 24, 24, device=device) + 0.5
    a = drop_block2d(x, 0.3, 3, generator=_gen(device, 1))
    b = drop_block2d(x, 0.3, 3, generator=_gen(device, 1))
    c = drop_block2d(x, 0.3, 3, generator=_gen(device, 2))
    assert torch.equal(a, b)
    assert not torch.equal(a == 0, c == 0)
    torch.manual_seed(5)
    d = drop_block2d(x, 0.3, 3)
    torch.manual_seed(5)
    assert torch.equal(d, drop_block2d(x, 0.3, 3))
    # distinct channels get distinct masks, a shared mask is the same in every channel
    assert not torch.equal(a[:, 0] == 0, a[:, 1] == 0)
    s = drop_block2d(x, 0.3, 3, shared_mask=True, generator=_gen(device, 1))
    assert torch.equal((s == 0).all(1), (s == 0).any(1))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("index64", [False, True])
@pytest.mark.parametrize("shape,bs", [((2, 5, 40, 300), 7), ((1, 2, 300, 300), 250), ((3, 2, 9, 70), 4),
                                      ((2, 3, 5, 7), 3), ((16, 64, 256, 256), 7)])
def test_cuda_kernel_equals_cpu_kernel(compiled_ops, monkeypatch, mode, shared, shape, bs, index64):
    # the last shape has more words than the mask kernels have threads (grid-stride loops)
    if index64:
        monkeypatch.setenv("WSSS_FAST_DROPBLOCK_INDEX64", "1")
    x = torch.randn(shape)
    p = torch.tensor(0.3, dtype=torch.float64)
    # a seed whose mask drops some but not all elements (bs 250 on 300 x 300 draws ~0.4 seeds
    # per map), so that the comparison below compares a real mask
    for s0 in range(12345, 12345 + 64):
        seed = torch.tensor([s0, 678], dtype=torch.int64)
        want = torch.ops.wsss_fast.drop_block2d(x, seed, p, bs, shared, mode)
        if 0 < want[2].item() < x.numel() // (x.shape[1] if shared else 1):
            break
    else:
        pytest.fail("no seed among 64 drops some but not all elements")
    got = torch.ops.wsss_fast.drop_block2d(x.cuda(), seed.cuda(), p.cuda(), bs, shared, mode)
    for g, w in zip(got, want):
        torch.testing.assert_close(g.cpu(), w, rtol=0, atol=0)
    grad = torch.randn(shape)
    gw = torch.ops.wsss_fast.drop_block2d_backward(grad, want[1], want[2], shared)
    gg = torch.ops.wsss_fast.drop_block2d_backward(grad.cuda(), got[1], got[2], shared)
    torch.testing.assert_close(gg.cpu(), gw, rtol=0, atol=0)


# --------------------------------------------------------------------------- statistics
def test_gap_table():
    t = ref.gap_table(0.01)
    assert len(t) == 33 and t[0] == 0 and t == sorted(t)
    assert t[1] == int(0.01 * 2**32) and abs(t[32] - (1 - 0.99**32) * 2**32) < 64
    assert ref.gap_table(1.0)[1:] == [2**32] * 32 and ref.gap_table(7.0) == ref.gap_table(1.0)
    assert ref.gap_table(0.0) == [0] * 33 and ref.gap_table(1e-12)[32] == 0
    assert ref.seed_gamma(0.2, 32, 32, 5, 28, 28) == (0.2 * 1024) / (25 * 784)
    assert ref.seed_gamma(float("nan"), 8, 8, 1, 8, 8) == 0.0


@pytest.mark.parametrize("gamma", [0.004, 0.05, 0.5, 0.9])
def test_seed_draw_is_iid_bernoulli(compiled_ops, device, gamma):
    # with bs = 1 the dropped pixels are the seeds: every position of a 32-column seed word
    # (first, last, and the partial word at the row end) fires at rate gamma, independently
    # of its neighbours in the word, across the word boundary and in the next row
    x = torch.ones(2, 64, 128, 200, device=device)
    s = (drop_block2d(x, gamma, 1, generator=_gen(device, 11)) == 0).double().cpu()
    n = s.numel()
    assert abs(s.mean().item() - gamma) < 5 * (gamma * (1 - gamma) / n) ** 0.5
    col = torch.arange(200) % 32
    per_col = torch.stack([s[..., col == i].mean() for i in range(32)])
    tol = 5 * (gamma * (1 - gamma) / (n / 32 * 0.8)) ** 0.5
    assert (per_col - gamma).abs().max().item() < tol, per_col
    pairs = {"adjacent": s[..., 1:] * s[..., :-1], "word boundary": s[..., 31:193:32] * s[..., 32:193:32],
             "vertical": s[:, :, 1:] * s[:, :, :-1]}
    for name, both in pairs.items():
        sd = (gamma**2 * (1 - gamma**2) / both.numel()) ** 0.5
        assert abs(both.mean().item() - gamma**2) < 5 * sd + 1e-12, (name, both.mean().item(), gamma**2)


def _expected_drop_fraction(H, W, bs, p, mode):
    Hs, Ws, shift = ref.geometry(H, W, bs, mode)
    gamma = min(1.0, p * H * W / (bs * bs * Hs * Ws))
    r = torch.arange(H)
    a = torch.arange(Hs)
    rows = ((a[None] >= r[:, None] - bs + 1 + shift) & (a[None] <= r[:, None] + shift)).sum(1)
    c = torch.arange(W)
    b = torch.arange(Ws)
    cols = ((b[None] >= c[:, None] - bs + 1 + shift) & (b[None] <= c[:, None] + shift)).sum(1)
    n = rows[:, None] * cols[None, :]
    return float((1 - (1 - gamma) ** n.double()).mean())


@pytest.mark.parametrize("mode", MODES)
def test_dropped_fraction(compiled_ops, device, mode):
    N, C, H, W, bs, p = 8, 16, 32, 32, 5, 0.2
    x = torch.rand(N, C, H, W, device=device) + 0.5
    ours = torch.stack([(drop_block2d(x, p, bs, gamma_mode=mode, generator=_gen(device, s)) == 0).double().mean()
                        for s in range(3)]).mean().item()
    expected = _expected_drop_fraction(H, W, bs, p, mode)
    assert abs(ours - expected) < 0.02, (ours, expected)
    if mode == "paper":
        torch.manual_seed(0)
        tv = torch.stack([(torchvision.ops.drop_block2d(x, p, bs) == 0).double().mean() for _ in range(3)])
        assert abs(ours - tv.mean().item()) < 0.025, (ours, tv)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("bs", [3, 4])
def test_dropped_pixels_lie_in_full_blocks(compiled_ops, device, mode, shared, bs):
    x = torch.rand(2, 3, 19, 23, device=device) + 0.5
    out = drop_block2d(x, 0.25, bs, shared_mask=shared, gamma_mode=mode, generator=_gen(device, 3))
    dropped = _dropped(out)
    assert dropped.any()
    assert _all_in_full_windows(dropped, bs, mode)
    # and the check can fail: a lone dropped pixel is not in a full window
    broken = dropped.clone()
    broken[0, 0] = False
    broken[0, 0, 9, 11] = True
    assert not _all_in_full_windows(broken, bs, mode)


@pytest.mark.parametrize("shared", [False, True])
def test_rescaling_preserves_mean(compiled_ops, device, shared):
    ones = torch.ones(4, 8, 32, 32, device=device)
    out = drop_block2d(ones, 0.3, 5, shared_mask=shared, generator=_gen(device, 0))
    assert (out == 0).any()
    torch.testing.assert_close(out.double().mean(), torch.tensor(1.0, dtype=torch.float64, device=device))
    x = torch.rand(8, 16, 32, 32, device=device, dtype=torch.float64)
    means = torch.stack([drop_block2d(x, 0.3, 5, shared_mask=shared, generator=_gen(device, s)).mean()
                         for s in range(4)])
    assert abs(means.mean().item() - x.mean().item()) < 0.02


def test_all_dropped_gives_zeros_not_nan(compiled_ops, device):
    x = torch.randn(2, 3, 8, 8, device=device, dtype=torch.float64, requires_grad=True)
    seeds = torch.ones(2, 3, 6, 6, device=device)
    out = drop_block2d_from_seeds(x, seeds, 3, "paper")
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    p1 = drop_block2d(x.detach(), 1.0, 8, generator=_gen(device, 0))  # bs = H: gamma = 1, one seed drops all
    assert torch.equal(p1, torch.zeros_like(p1))


# --------------------------------------------------------------------------- edge cases
def test_eval_and_p0_return_input(compiled_ops, device):
    x = torch.randn(2, 3, 8, 8, device=device)
    assert drop_block2d(x, 0.5, 3, training=False) is x
    assert drop_block2d(x, 0.0, 3) is x


def test_p_below_one_draw_in_2_32_drops_nothing(compiled_ops, device):
    # 32 gamma 2^32 < 1: the gap table is all 0 and the kernels skip the draws (no seed anywhere)
    x = torch.randn(2, 3, 40, 70, device=device)
    got = drop_block2d(x, 1e-12, 3, generator=_gen(device, 3))
    assert torch.equal(got, x)
    want = ref.drop_block2d(x, 1e-12, 3, generator=_gen(device, 3))
    assert torch.equal(got, want)


def test_fallback_uses_reference(monkeypatch):
    import importlib

    from wsss_fast import _ext

    op = importlib.import_module("wsss_fast.ops.drop_block2d")  # the module, not the re-exported function

    monkeypatch.setattr(op, "_HAS_OP", False)
    monkeypatch.setattr(_ext, "_WARNED", False)
    x = torch.randn(2, 3, 20, 37, dtype=torch.float64, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="drop_block2d"):  # the fallback ran, and said so once
        got = op.drop_block2d(x, torch.tensor(0.3), 4, gamma_mode="simple", generator=_gen("cpu", 5))
    want = ref.drop_block2d(x, 0.3, 4, gamma_mode="simple", generator=_gen("cpu", 5))
    assert torch.equal(got, want) and (got == 0).any()
    (g,) = torch.autograd.grad(got.sum(), x)
    assert torch.equal(g == 0, got == 0)


def test_block_size_clipped(compiled_ops, device):
    x = torch.randn(2, 3, 6, 9, device=device)
    a = drop_block2d(x, 0.5, 50, generator=_gen(device, 4))
    b = drop_block2d(x, 0.5, 6, generator=_gen(device, 4))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["transposed", "sliced", "channels_last", "channels_last_sliced"])
def test_layouts(compiled_ops, device, kind):
    base = torch.randn(2, 6, 14, 12, device=device)
    x = {
        "transposed": base.transpose(2, 3),
        "sliced": base[:, ::2, 1:, ::3],
        "channels_last": base.contiguous(memory_format=torch.channels_last),
        "channels_last_sliced": base.contiguous(memory_format=torch.channels_last)[:, 1:5],
    }[kind]
    for shared in (False, True):
        got = drop_block2d(x, 0.3, 3, shared_mask=shared, generator=_gen(device, 9))
        want = ref.drop_block2d(x.contiguous(), 0.3, 3, shared_mask=shared, generator=_gen(device, 9))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        if kind == "channels_last":
            assert got.is_contiguous(memory_format=torch.channels_last)
        xr = x.detach().clone().requires_grad_(True)
        g = torch.randn_like(xr)
        out = drop_block2d(xr, 0.3, 3, shared_mask=shared, generator=_gen(device, 9))
        (gx,) = torch.autograd.grad(out, xr, g)
        torch.testing.assert_close(gx, g * (want / x.contiguous()).nan_to_num(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(0, 3, 8, 8), (2, 0, 8, 8), (2, 3, 0, 8), (1, 1, 1, 1), (1, 3, 5, 5)])
def test_empty_and_batch1(compiled_ops, device, shape):
    x = torch.randn(shape, device=device, requires_grad=True)
    out = drop_block2d(x, 0.4, 3, generator=_gen(device, 0))
    assert out.shape == x.shape
    assert not torch.isnan(out).any()
    out.sum().backward()
    assert x.grad.shape == x.shape
    if x.numel():
        want = ref.drop_block2d(x.detach(), 0.4, 3, generator=_gen(device, 0))
        torch.testing.assert_close(out.detach(), want, rtol=0, atol=0)


def test_bad_input_errors(device):
    x = torch.randn(2, 3, 8, 8, device=device)
    with pytest.raises(ValueError, match="p must be in"):
        drop_block2d(x, 1.5, 3)
    with pytest.raises(ValueError, match="p must be in"):
        drop_block2d(x, -0.1, 3)
    with pytest.raises(ValueError, match="block_size"):
        drop_block2d(x, 0.1, 0)
    with pytest.raises(TypeError, match="block_size"):
        drop_block2d(x, 0.1, 2.5)
    with pytest.raises(TypeError, match="block_size"):
        drop_block2d(x, 0.1, True)  # a bool is not a size
    with pytest.raises(ValueError, match="4-D"):
        drop_block2d(x[0], 0.1, 3)
    with pytest.raises(TypeError, match="floating"):
        drop_block2d(x.long(), 0.1, 3)
    with pytest.raises(ValueError, match="gamma_mode"):
        drop_block2d(x, 0.1, 3, gamma_mode="centre")
    with pytest.raises((RuntimeError, ValueError), match="seeds"):
        drop_block2d_from_seeds(x, torch.ones(2, 3, 8, 8, device=device), 3, "paper")


def test_op_level_errors(compiled_ops, device):
    x = torch.randn(2, 3, 8, 8, device=device)
    seed = torch.zeros(2, dtype=torch.int64, device=device)
    p = torch.tensor(0.1, dtype=torch.float64, device=device)
    with pytest.raises(RuntimeError, match="block_size"):
        torch.ops.wsss_fast.drop_block2d(x, seed, p, 9, False, "paper")
    with pytest.raises(RuntimeError, match="seed"):
        torch.ops.wsss_fast.drop_block2d(x, seed.float(), p, 3, False, "paper")
    with pytest.raises(RuntimeError, match="gamma_mode"):
        torch.ops.wsss_fast.drop_block2d(x, seed, p, 3, False, "x")
    with pytest.raises(RuntimeError, match="mask must be the int32 bit mask"):
        torch.ops.wsss_fast.drop_block2d_backward(x, torch.ones(2, 3, 8, 8, device=device), seed[0], False)
    words = torch.zeros(12, dtype=torch.int32, device=device)  # 2 * 3 * 8 * 8 / 32
    with pytest.raises(RuntimeError, match=r"mask must have shape \[4\]"):
        torch.ops.wsss_fast.drop_block2d_backward(x, words, seed[0], True)
    with pytest.raises(RuntimeError, match="count"):
        torch.ops.wsss_fast.drop_block2d_backward(x, words, seed.float(), False)


# --------------------------------------------------------------------------- autograd / library
@pytest.mark.parametrize("shared", [False, True])
def test_gradcheck(compiled_ops, device, shared):
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64, device=device, requires_grad=True)
    seeds = _seeds(x.shape, 3, shared, "simple", rate=0.1, device=device)
    fs = lambda t: drop_block2d_from_seeds(t, seeds, 3, "simple")  # noqa: E731
    assert (fs(x) == 0).any()
    assert torch.autograd.gradcheck(fs, (x,))
    assert torch.autograd.gradgradcheck(fs, (x,), fast_mode=True)
    fn = lambda t: drop_block2d(t, 0.3, 2, shared_mask=shared, generator=_gen(device, 5))  # noqa: E731
    assert (fn(x) == 0).any()
    assert torch.autograd.gradcheck(fn, (x,), fast_mode=True)


def test_backward_matches_reference(compiled_ops, device):
    x = torch.randn(2, 3, 11, 10, dtype=torch.float64, device=device, requires_grad=True)
    xr = x.detach().clone().requires_grad_(True)
    seeds = _seeds(x.shape, 4, False, "paper", device=device)
    g = torch.randn_like(x)
    (a,) = torch.autograd.grad(drop_block2d_from_seeds(x, seeds, 4, "paper"), x, g)
    (b,) = torch.autograd.grad(ref.drop_block2d_from_seeds(xr, seeds, 4, "paper"), xr, g)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(compiled_ops, device, channels_last):
    x = torch.randn(2, 3, 9, 8, device=device, requires_grad=True)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    seed = torch.tensor([3, 4], dtype=torch.int64, device=device)
    p = torch.tensor(0.3, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.wsss_fast.drop_block2d, (x, seed, p, 3, False, "paper"))
    torch.library.opcheck(torch.ops.wsss_fast.drop_block2d, (x, seed, p, 4, True, "simple"))
    seeds = _seeds(x.shape, 3, False, "paper", device=device)
    torch.library.opcheck(torch.ops.wsss_fast.drop_block2d_from_seeds, (x, seeds, 3, "paper"))
    _, mask, count = torch.ops.wsss_fast.drop_block2d(x.detach(), seed, p, 3, False, "paper")
    torch.library.opcheck(torch.ops.wsss_fast.drop_block2d_backward, (torch.randn_like(x), mask, count, False))
    _, mask, count = torch.ops.wsss_fast.drop_block2d(x.detach(), seed, p, 3, True, "paper")
    torch.library.opcheck(torch.ops.wsss_fast.drop_block2d_backward, (torch.randn_like(x), mask, count, True))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compiled_ops, device, backend):
    torch._dynamo.reset()
    fn = torch.compile(
        lambda t: drop_block2d(t, 0.3, 3, shared_mask=True, gamma_mode="simple"), fullgraph=True, backend=backend
    )
    x = (torch.rand(2, 4, 16, 16, device=device) + 0.5).requires_grad_(True)
    out = fn(x)
    dropped = out == 0
    assert dropped.any() and (~dropped).any()
    assert _all_in_full_windows(dropped.detach(), 3, "simple")
    out.sum().backward()
    torch.testing.assert_close(x.grad, (out / x).detach())
