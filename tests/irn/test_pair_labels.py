"""Pair labels against a direct per-pair computation, and their layout against the affinity op."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsss_fast import ops
from wsss_fast.irn.pair_labels import displacement_pairs, pair_labels, reduce_label


def direct_pairs(label: np.ndarray, radius: int):
    """IRNet's definition, one pair at a time."""
    offs = ops.search_offsets(radius).tolist()
    rp = radius - 1
    h, w = label.shape
    srcs = [(y, x) for y in range(0, h - rp) for x in range(rp, w - rp)]
    out = np.zeros((3, len(offs), len(srcs)), np.uint8)
    for k, (dy, dx) in enumerate(offs):
        for n, (y, x) in enumerate(srcs):
            a, b = int(label[y, x]), int(label[y + dy, x + dx])
            valid = a != 255 and b != 255
            out[0, k, n] = valid and a == b == 0
            out[1, k, n] = valid and a == b and a > 0
            out[2, k, n] = valid and a != b
    return out


@pytest.mark.parametrize("radius,shape", [(3, (7, 9)), (5, (12, 15)), (10, (14, 22))])
def test_pair_labels_match_direct(radius, shape):
    rng = np.random.default_rng(radius)
    label = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=shape, p=[0.4, 0.25, 0.2, 0.15])
    got = pair_labels(label, radius)
    want = direct_pairs(label, radius)
    for g, w in zip(got, want):
        assert g.dtype == torch.uint8
        np.testing.assert_array_equal(g.numpy(), w)
    assert sum(int(g.sum()) for g in got) > 0


def test_pair_labels_tiny_and_bad_input():
    bg, fg, neg = pair_labels(np.zeros((4, 4), np.uint8), 5)  # smaller than the search window
    assert bg.shape == (ops.search_offsets(5).shape[0], 0)
    with pytest.raises(ValueError, match=r"\[h, w\]"):
        pair_labels(np.zeros((2, 4, 4), np.uint8), 5)


def test_pair_layout_matches_affinity_op():
    """A boundary line between two regions: negative pairs cross it (affinity 0), positive pairs
    never do (affinity 1), in the op's channel order and IRNet's source layout."""
    radius, h, w, col = 5, 16, 20, 9
    label = np.full((h, w), 1, np.uint8)
    label[:, col + 1:] = 2
    label[:, col] = 255
    edge = torch.zeros(1, h, w)
    edge[0, :, col] = 1.0
    aff = ops.irnet_affinity_layout(ops.path_affinity(edge, radius), radius)[0]
    bg, fg, neg = pair_labels(label, radius)
    assert aff.shape == fg.shape
    assert neg.sum() > 0 and fg.sum() > 0
    assert torch.all(aff[neg.bool()] == 0)
    assert torch.all(aff[fg.bool()] == 1)


# cv2.resize(fx=fy=1/4, INTER_NEAREST), written out (checked once against OpenCV 4/5; cv2 is
# no dependency): round(H / 4) x round(W / 4) outputs, the size rounded half to even
# (2.5 -> 2, 3.5 -> 4, 12.5 -> 12, 17.5 -> 18), output pixel i <- input pixel 4 i.
CV2_NEAREST_QUARTER = {(10, 14): (2, 4), (6, 9): (2, 2), (11, 7): (3, 2), (13, 5): (3, 1),
                       (50, 70): (12, 18), (48, 36): (12, 9), (64, 64): (16, 16)}


@pytest.mark.parametrize("size", list(CV2_NEAREST_QUARTER))
def test_reduce_label_is_cv2_nearest(size):
    lab = np.random.default_rng(0).integers(0, 255, size=size, dtype=np.uint8)
    h, w = CV2_NEAREST_QUARTER[size]
    want = lab[np.arange(h)[:, None] * 4, np.arange(w)[None, :] * 4]
    np.testing.assert_array_equal(reduce_label(lab, 4), want)


def test_displacement_pairs_direct():
    radius = 3
    dp = torch.randn(2, 2, 6, 8)
    offs = ops.search_offsets(radius)
    got = displacement_pairs(dp, radius)
    rp = radius - 1
    n = 0
    for y in range(0, 6 - rp):
        for x in range(rp, 8 - rp):
            for k, (dy, dx) in enumerate(offs.tolist()):
                torch.testing.assert_close(got[:, :, k, n], dp[:, :, y, x] - dp[:, :, y + dy, x + dx])
            n += 1
    assert got.shape == (2, 2, offs.shape[0], n)


def _slice_per_offset(dp, radius):
    """IRNet's to_displacement as it reads: one slice of the destinations per offset."""
    rp = radius - 1
    b, c, h, w = dp.shape
    ch, cw = h - rp, w - 2 * rp
    offsets = ops.search_offsets(radius).tolist()
    dst = torch.stack([dp[:, :, dy:dy + ch, rp + dx:rp + dx + cw] for dy, dx in offsets], 2)
    return (dp[:, :, :ch, rp:rp + cw].unsqueeze(2) - dst).reshape(b, c, dst.shape[2], -1)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))])
@pytest.mark.parametrize("radius, shape", [(10, (32, 40)), (5, (17, 23)), (2, (2, 4))])
def test_displacement_pairs_gather_equals_the_slices(device, radius, shape):
    """The gather gives the slices' values bit for bit, and their gradient (float64)."""
    g = torch.Generator().manual_seed(radius)
    dp = torch.randn(2, 2, *shape, generator=g, dtype=torch.float64).to(device).requires_grad_()
    got, want = displacement_pairs(dp, radius), _slice_per_offset(dp, radius)
    assert got.shape == want.shape and torch.equal(got, want)
    up = torch.randn(got.shape, generator=g, dtype=torch.float64).to(device)
    torch.testing.assert_close(torch.autograd.grad((got * up).sum(), dp)[0],
                               torch.autograd.grad((want * up).sum(), dp)[0], rtol=1e-12, atol=1e-12)
    if dp[0].numel() <= 64:  # the Jacobian's rows are the outputs: only the small case
        assert torch.autograd.gradcheck(lambda t: displacement_pairs(t, radius), (dp[:1],))


@pytest.mark.parametrize("device", ["cpu", "meta"])  # meta: the indexing of the other devices
def test_displacement_pairs_is_a_few_ops_whatever_the_radius(device):
    """Forward and backward dispatch a few ops (about 20), not some per offset (152 at radius 10):
    on a GPU every op costs host time, and train-irn calls this at every step. Off the CPU the
    backward is indexing's sorted accumulation, not a scatter-add (atomics on CUDA: gradients
    that change from run to run)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    dp = torch.randn(2, 2, 40, 40, device=device, requires_grad=True)
    displacement_pairs(dp, 10)  # the index table is built once per size
    with Count():
        displacement_pairs(dp, 10).sum().backward()
    assert dp.grad is not None
    assert device == "cpu" or not any("scatter" in op for op in Count.ops), Count.ops
    assert len(Count.ops) < 50, f"{len(Count.ops)} ops (the slice per offset: over 900)"
