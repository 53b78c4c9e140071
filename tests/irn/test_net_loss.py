"""IRNet network and loss: shapes, frozen backbone, weights, gradient through path_affinity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from wsss_fast.irn.loss import edge_to_affinity, irn_loss
from wsss_fast.irn.model import EdgeDisplacement, IRNet
from wsss_fast.irn.pair_labels import pair_labels


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_shapes_and_frozen_backbone(size):
    net = IRNet("resnet18").train()
    edge, dp = net(torch.randn(2, 3, *size))
    h, w = (size[0] + 3) // 4, (size[1] + 3) // 4
    assert edge.shape == (2, 1, h, w) and dp.shape == (2, 2, h, w)
    assert not net.backbone.training and net.edge_layers.training and net.dp_layers.training
    assert all(not p.requires_grad for p in net.backbone.parameters())
    edge_p, dp_p = net.trainable_parameters()
    n_train = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert n_train == sum(p.numel() for p in edge_p + dp_p)
    # (boundary, displacement): train-irn gives the second irn.dp_lr_mult times the learning rate
    assert {id(p) for p in edge_p} == {id(p) for p in net.edge_layers.parameters()}
    assert {id(p) for p in dp_p} == {id(p) for p in net.dp_layers.parameters()}
    bn = net.backbone[0][1]
    before = bn.running_mean.clone()
    net(torch.randn(2, 3, *size) * 5 + 3)
    torch.testing.assert_close(bn.running_mean, before)  # BN in eval mode while training


def test_pretrained_weights(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    net = IRNet("resnet18", pretrained_path=path)
    torch.testing.assert_close(net.backbone[1][0].conv1.weight, ref.layer1[0].conv1.weight)
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        IRNet("resnet18", pretrained_path=tmp_path / "nothere.pth")
    with pytest.raises(ValueError, match="irn.backbone"):
        IRNet("vgg16")


def test_edge_displacement_flip_average():
    torch.manual_seed(0)
    model = EdgeDisplacement(IRNet("resnet18").eval())
    x = torch.randn(2, 3, 64, 64)
    e1, d1 = model(x)
    e2, _ = model(x.flip(-1))
    assert e1.shape == (2, 16, 16) and d1.shape == (2, 2, 16, 16)
    assert float(e1.min()) >= 0 and float(e1.max()) <= 1
    torch.testing.assert_close(e1, e2.flip(-1), atol=1e-5, rtol=1e-5)  # flip-averaged: equivariant
    torch.testing.assert_close(d1, model.net(x)[1])  # the displacement of the image itself, not its flip


def test_boundaries_only_skip_the_displacement_branch():
    """displacement=False (make-sem-seg's walk) gives the same boundaries and never runs the
    displacement branch."""
    torch.manual_seed(0)
    net = IRNet("resnet18").eval()
    runs = []
    for m in net.dp_layers:
        m.register_forward_hook(lambda *a: runs.append(1))
    x = torch.randn(2, 3, 48, 64)
    e_only, none = EdgeDisplacement(net, displacement=False)(x)
    assert none is None and not runs
    e, d = EdgeDisplacement(net)(x)
    assert torch.equal(e_only, e) and d.shape == (2, 2, 12, 16) and runs


def test_mean_shift_is_subtracted_at_inference():
    """IRNet's MeanShift: the displacement field at inference is the branch's output minus the
    mean displacement tracked while training."""
    torch.manual_seed(0)
    net = IRNet("resnet18").eval()
    x = torch.randn(1, 3, 32, 32)
    net.mean_shift.running_mean.zero_()
    raw = net(x)[1]
    net.mean_shift.running_mean.copy_(torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(net(x)[1], raw - torch.tensor([1.0, -2.0]).view(1, 2, 1, 1))


def _labels(h, w, radius):
    lab = np.zeros((h, w), np.uint8)
    lab[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    lab[h // 4 - 1, :] = 255
    return [t[None] for t in pair_labels(lab, radius)]


def test_loss_gradient_flows_through_path_affinity():
    torch.manual_seed(0)
    radius, h, w = 5, 16, 16
    edge = torch.randn(1, 1, h, w, requires_grad=True)
    dp = torch.randn(1, 2, h, w, requires_grad=True)
    losses = irn_loss(edge, dp, *_labels(h, w, radius), radius=radius)
    assert set(losses) == {"total", "pos", "neg", "dp_fg", "dp_bg"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    assert edge.grad is not None and edge.grad.abs().sum() > 0
    assert dp.grad is not None and dp.grad.abs().sum() > 0


def test_loss_values_at_extremes():
    radius, h, w = 5, 16, 16
    labels = _labels(h, w, radius)
    no_edge = irn_loss(torch.full((1, 1, h, w), -30.0), torch.zeros(1, 2, h, w), *labels, radius=radius)
    assert float(no_edge["pos"]) < 1e-4  # affinity 1 everywhere: positives are free
    assert float(no_edge["neg"]) > 5  # ... negatives are maximally wrong
    assert float(no_edge["dp_bg"]) == 0.0  # constant displacement: bg pairs agree
    assert float(no_edge["dp_fg"]) > 0  # ... fg pairs should point to a common centre
    # a constant boundary b: every affinity is 1 - b, whatever the pair counts
    b = torch.sigmoid(torch.tensor(0.7)).item()
    flat = irn_loss(torch.full((1, 1, h, w), 0.7), torch.zeros(1, 2, h, w), *labels, radius=radius)
    assert float(flat["pos"]) == pytest.approx(-np.log(1 - b + 1e-5), rel=1e-5)
    assert float(flat["neg"]) == pytest.approx(-np.log(b + 1e-5), rel=1e-5)
    # dp(p) = -p: dp(src) - dp(dst) is the offset, the fg target, on every pair
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    centre = irn_loss(torch.zeros(1, 1, h, w), -torch.stack([yy, xx])[None], *labels, radius=radius)
    assert float(centre["dp_fg"]) == pytest.approx(0.0, abs=1e-6)
    assert float(centre["dp_bg"]) > 1  # bg pairs should agree instead
    with pytest.raises(ValueError, match="stride 4"):
        irn_loss(torch.zeros(1, 1, h + 4, w), torch.zeros(1, 2, h + 4, w), *labels, radius=radius)


def test_loss_hand_computed_on_eight_pairs():
    """radius 2 on a 2 x 4 map: sources (0, 1) and (0, 2), offsets (0, 1), (1, -1), (1, 0), (1, 1).

    label  0 0 1 1      from (0, 1) [bg]: (0, 2) neg, (1, 0) bg, (1, 1) neg, (1, 2) neg
           0 1 1 X      from (0, 2) [fg]: (0, 3) fg,  (1, 1) fg, (1, 2) fg,  (1, 3) ignored
    """
    label = np.array([[0, 0, 1, 1], [0, 1, 1, 255]], np.uint8)
    labels = [t[None] for t in pair_labels(label, 2)]
    assert [int(t.sum()) for t in labels] == [1, 3, 3]
    edge = torch.tensor([[[[-2.0, 1.0, -1.0, 0.5], [0.0, -3.0, 2.0, -0.5]]]])
    a = edge_to_affinity(edge, 2)[0].double().numpy()  # [4 offsets, 2 sources]
    assert len(set(a.ravel().tolist())) >= 3  # pairs differ: the averages below are tested
    eps = 1e-5
    bg = -np.log(a[1, 0] + eps) / (1 + eps)
    fg = -(np.log(a[0, 1] + eps) + np.log(a[1, 1] + eps) + np.log(a[2, 1] + eps)) / (3 + eps)
    neg = -(np.log(1 + eps - a[0, 0]) + np.log(1 + eps - a[2, 0]) + np.log(1 + eps - a[3, 0])) / (3 + eps)
    # dp(p) = -p on the fg pairs' side: dp(src) - dp(dst) = offset -> dp_fg 0; bg pair (1, -1): |1| + |-1|
    yy, xx = torch.meshgrid(torch.arange(2.0), torch.arange(4.0), indexing="ij")
    for dp, dp_fg, dp_bg in [(-torch.stack([yy, xx])[None], 0.0, 2 / (2 + eps)),
                             (torch.zeros(1, 2, 2, 4), (1 + 2 + 1) / (6 + eps), 0.0)]:
        got = irn_loss(edge, dp, *labels, radius=2)
        want = {"pos": bg / 2 + fg / 2, "neg": neg, "dp_fg": dp_fg, "dp_bg": dp_bg}
        want["total"] = (want["pos"] + neg) / 2 + (dp_fg + dp_bg) / 2
        for k, v in want.items():
            assert float(got[k]) == pytest.approx(float(v), rel=1e-5, abs=1e-6), k


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_loss_on_cuda_never_waits_for_the_gpu():
    """irn_loss and its backward queue kernels only: no copy from the host, no read of a value
    (either would stall train-irn's host until the GPU finishes the step so far)."""
    radius, h, w = 10, 64, 64
    labels = [t.cuda() for t in _labels(h, w, radius)]
    edge = torch.randn(2, 1, h, w, device="cuda", requires_grad=True)
    dp = torch.randn(2, 2, h, w, device="cuda", requires_grad=True)
    labels = [t.expand(2, *t.shape[1:]).contiguous() for t in labels]
    irn_loss(edge, dp, *labels, radius=radius)["total"].backward()  # builds the cached index tables
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        irn_loss(edge, dp, *labels, radius=radius)["total"].backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_displacement_mean_over_every_pixel_in_batches_of_one_size(device):
    """estimate_displacement_mean runs the images in batches of consecutive same-size images
    and gives the mean raw displacement over every pixel of the first max_images images."""
    from wsss_fast.irn.train import estimate_displacement_mean, normalize_uint8

    class Images:
        def __init__(self, sizes):
            rng = np.random.default_rng(0)
            self.imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]

        def __len__(self):
            return len(self.imgs)

        def load(self, i):
            return self.imgs[i], None

    torch.manual_seed(0)
    model = IRNet("resnet18").to(device)
    model.mean_shift.running_mean.fill_(5.0)  # a stale mean must not enter the estimate
    ds = Images([(32, 32), (32, 32), (32, 40), (32, 32), (32, 32), (48, 32)])
    batches = []
    model.register_forward_hook(lambda m, i, o: batches.append(tuple(i[0].shape)))
    got = estimate_displacement_mean(model, ds, torch.device(device), max_images=5, batch_size=4)
    assert [b[0] for b in batches] == [2, 1, 1, 1]  # [32², 32²], [32x40], [32²] | [32²]
    torch.testing.assert_close(model.mean_shift.running_mean.cpu(), got)
    model.mean_shift.running_mean.zero_()  # the raw output
    with torch.no_grad():
        dps = [model(normalize_uint8(img)[None].to(device))[1].double() for img in ds.imgs[:5]]
    want = sum(dp.sum(dim=(0, 2, 3)) for dp in dps) / sum(dp[0, 0].numel() for dp in dps)
    torch.testing.assert_close(got, want.float().cpu(), rtol=1e-5, atol=1e-6)
    assert got.abs().max() > 1e-4  # not trivially zero
