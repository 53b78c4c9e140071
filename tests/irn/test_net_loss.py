"""IRNet network and loss: shapes, frozen backbone, weights, gradient through path_affinity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from wsss_fast.irn.loss import irn_loss
from wsss_fast.irn.net import EdgeDisplacement, IRNet
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
    with pytest.raises(ValueError, match="stride 4"):
        irn_loss(torch.zeros(1, 1, h + 4, w), torch.zeros(1, 2, h + 4, w), *labels, radius=radius)
