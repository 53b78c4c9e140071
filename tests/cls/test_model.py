"""Step-1 classifiers: output stride, shapes, DropBlock placement, local weights."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import vgg as tv_vgg

import wsss_fast.nn
from wsss_fast.config import load_config
from wsss_fast.cls.model import ARCHS, Classifier, build_classifier

DB = {"p": 0.5, "block_size": 3, "place": "after_conv1"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("arch", ARCHS)
def test_output_stride_and_shapes(arch):
    torch.manual_seed(0)
    model = Classifier(arch, num_classes=3, head_channels=16, dropblock=DB).eval()
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        feats = model.feature_map(x)
        logits = model(x)
    assert feats.shape == (2, 16, 6, 4)  # output stride 8 in both directions
    assert (feats >= 0).all() and (feats > 0).any()  # the third head conv ends in its ReLU too
    assert logits.shape == (2, 3)
    assert model.output_stride == 8
    # the CAM layer is named and its output is the map pooled by GAP
    layer = model.get_submodule(model.cam_layer)
    seen = {}
    h = layer.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        model(x)
    h.remove()
    torch.testing.assert_close(seen["out"], feats)
    expected = model.classifier(feats.mean((2, 3)))
    torch.testing.assert_close(logits, expected)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 3


def test_resnet_basicblock_dilation():
    model = Classifier("resnet18", 1, head_channels=8, dropblock=None)
    l3, l4 = model.features.layer3, model.features.layer4
    assert l3[0].conv1.stride == (1, 1) and l3[0].downsample[0].stride == (1, 1)
    assert [b.conv2.dilation for b in l3] == [(2, 2), (2, 2)]
    assert [b.conv1.dilation for b in l4] == [(2, 2), (4, 4)]
    assert [b.conv2.dilation for b in l4] == [(4, 4), (4, 4)]
    assert l4[1].conv2.padding == (4, 4)
    r50 = Classifier("resnet50", 1, head_channels=8, dropblock=None)
    assert r50.features.layer4[0].conv2.dilation == (2, 2)  # torchvision's flag
    assert r50.features.layer4[1].conv2.dilation == (4, 4)


def test_vgg16_d1_layout():
    model = Classifier("vgg16", 1, head_channels=8, dropblock=DB)
    f = model.features
    # seed code: DropBlock right after conv1_1 + BN + ReLU
    assert [type(m) for m in f.conv1] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    names = [n for n, _ in f.named_children()]
    assert names[:2] == ["conv1", "dropblock_conv1"]
    pools = [m for m in f.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 4  # pool5 removed
    assert pools[-1].kernel_size == 3 and pools[-1].stride == 1
    convs5 = [m for m in f.layer5 if isinstance(m, nn.Conv2d)]
    assert len(convs5) == 3 and all(c.dilation == (2, 2) for c in convs5)
    assert all(isinstance(m, nn.BatchNorm2d) for m in f.layer5[1::3])


@pytest.mark.parametrize("arch,place", [("resnet18", "after_layer2"), ("resnet18", "after_pool"),
                                        ("vgg16", "after_layer3"), ("resnet18", "after_head")])
def test_dropblock_placement(arch, place):
    model = Classifier(arch, 1, head_channels=8, dropblock={**DB, "place": place})
    stage = place[len("after_"):]
    names = [n for n, _ in model.features.named_children()]
    assert sum(n.startswith("dropblock") for n in names) == (0 if stage == "head" else 1)
    if stage == "head":
        assert model.head_dropblock is not None
    else:
        assert names[names.index(stage) + 1] == f"dropblock_{stage}"
    assert len(model.dropblocks()) == 1
    # the block really drops in training mode and is the identity in eval mode
    seen = []
    hook = model.dropblocks()[0].register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    x = torch.randn(2, 3, 48, 48)
    model.train()
    model(x)
    model.eval()
    with torch.no_grad():
        model(x)
    hook.remove()
    (tin, tout), (ein, eout) = seen
    assert (tout == 0).float().mean() > 0.05 and not torch.equal(tin, tout)
    assert torch.equal(ein, eout)
    if stage == "head":  # it drops from the head's output (the CAM layer's 8 channels), not its input
        assert tin.shape[1] == 8 and (tin >= 0).all()


def test_dropblock_multiple_places_and_none():
    model = Classifier("resnet18", 1, head_channels=8, dropblock={**DB, "place": ["after_layer3", "after_layer4"]})
    assert [n for n, _ in model.features.named_children()][-4:] == [
        "layer3", "dropblock_layer3", "layer4", "dropblock_layer4"]
    assert len(model.dropblocks()) == 2
    assert Classifier("resnet18", 1, head_channels=8, dropblock={**DB, "place": "none"}).dropblocks() == []
    assert Classifier("resnet18", 1, head_channels=8, dropblock=None).dropblocks() == []
    with pytest.raises(ValueError, match="layer5"):
        Classifier("resnet18", 1, dropblock={**DB, "place": "after_layer5"})
    with pytest.raises(ValueError, match="after_"):
        Classifier("resnet18", 1, dropblock={**DB, "place": "layer1"})
    with pytest.raises(ValueError, match="unknown architecture"):
        Classifier("resnet101", 1)


def test_uses_package_dropblock():
    model = Classifier("resnet18", 1, head_channels=8,
                       dropblock={**DB, "warmup_steps": 5, "shared_mask": True})
    (block,) = model.dropblocks()
    assert isinstance(block, wsss_fast.nn.DropBlock2d)
    assert (block.p, block.block_size, block.warmup_steps, block.shared_mask) == (0.5, 3, 5, True)


def test_vgg16_width_multiplier():
    model = Classifier("vgg16", 1, head_channels=8, width=0.25)
    assert model.feature_map(torch.zeros(1, 3, 64, 64)).shape == (1, 8, 8, 8)
    assert model.head[0].in_channels == 128
    with pytest.raises(ValueError, match="width"):
        Classifier("resnet18", 1, width=0.5)


def test_build_classifier_from_config():
    cfg = load_config(None, ["cls.arch=resnet18", "cls.head_channels=8", "dataset.num_classes=20",
                             "cls.dropblock.place=after_layer1"])
    model = build_classifier(cfg)
    assert model.arch == "resnet18" and model.num_classes == 20
    assert model.feature_map(torch.zeros(1, 3, 32, 32)).shape[1] == 8 and model.classifier.in_features == 8
    assert [n for n, _ in model.features.named_children()][3] == "dropblock_layer1"
    cfg = load_config(None, ["cls.arch=resnet18", "cls.head_channels=8", "cls.dropblock.enabled=false"])
    assert build_classifier(cfg).dropblocks() == []


def test_param_groups_cover_all_parameters():
    model = Classifier("resnet18", 2, head_channels=8, dropblock=None)
    groups = model.param_groups(1e-3, head_lr_mult=10.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(set(ids)) == len(ids)
    assert groups[1]["lr"] == pytest.approx(1e-2)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for m in (model.head, model.classifier)
                                                     for p in m.parameters()}


# ---------------------------------------------------------------- local weights


def test_load_resnet_weights(tmp_path):
    torch.manual_seed(1)
    sd = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    model = Classifier("resnet18", 1, head_channels=8, dropblock=None, pretrained_path=path)
    msd = model.state_dict()
    assert torch.equal(msd["features.conv1.0.weight"], sd["conv1.weight"])
    assert torch.equal(msd["features.layer4.1.conv2.weight"], sd["layer4.1.conv2.weight"])
    assert torch.equal(msd["features.conv1.1.running_var"], sd["bn1.running_var"])
    # wrapped under "state_dict" with DDP's "module." prefix, and without num_batches_tracked
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items() if "num_batches" not in k}}
    torch.save(wrapped, path)
    model = Classifier("resnet18", 1, head_channels=8, dropblock=None, pretrained_path=path)
    assert torch.equal(model.state_dict()["features.layer2.0.downsample.0.weight"], sd["layer2.0.downsample.0.weight"])


def test_load_vgg_weights(tmp_path):
    torch.manual_seed(2)
    features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=True)
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd["classifier.6.weight"] = torch.zeros(1000, 4096)  # the ImageNet head is ignored
    path = tmp_path / "vgg16_bn.pth"
    torch.save(sd, path)
    model = Classifier("vgg16", 1, head_channels=8, dropblock=DB, pretrained_path=path)
    msd = model.state_dict()
    assert torch.equal(msd["features.conv1.0.weight"], sd["features.0.weight"])
    assert torch.equal(msd["features.layer5.0.weight"], sd["features.34.weight"])  # conv5_1 (dilated)
    assert torch.equal(msd["features.layer4.7.running_mean"], sd["features.31.running_mean"])


def test_weights_errors(tmp_path):
    missing = tmp_path / "nope" / "resnet50.pth"
    with pytest.raises(FileNotFoundError, match="nope/resnet50.pth"):
        Classifier("resnet18", 1, pretrained_path=missing)
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match=r"r18\.pth.*resnet34.*missing keys \[layer1\.2"):
        Classifier("resnet34", 1, pretrained_path=path)
    sd = torchvision.models.resnet18().state_dict()
    sd["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"unexpected keys \[extra\.weight\].*shape mismatches \[conv1\.weight"):
        Classifier("resnet18", 1, pretrained_path=path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        Classifier("resnet18", 1, pretrained_path=path)
    torch.save({"epoch": 3, "lr": 0.01}, path)  # a training log, not weights
    with pytest.raises(ValueError, match=r"r18\.pth' does not hold a state dict of tensors"):
        Classifier("resnet18", 1, pretrained_path=path)
