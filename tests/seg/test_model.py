"""smp segmentation models: output shapes for odd sizes, padding, encoder weights from a file."""

from __future__ import annotations

import pytest
import torch

from wsss_fast.seg.model import PaddedSegModel, build_seg_model, load_encoder_weights, num_outputs


@pytest.mark.parametrize("arch,encoder,num_classes", [
    ("unet", "resnet18", 1),
    ("unet", "resnet18", 20),
    ("deeplabv3plus", "resnet18", 1),
    ("deeplabv3plus", "resnet18", 3),
])
@pytest.mark.parametrize("size", [(100, 70), (64, 64), (33, 129)])
def test_odd_sizes(arch, encoder, num_classes, size):
    torch.manual_seed(0)
    model = build_seg_model(arch, encoder, num_classes).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, num_outputs(num_classes), *size)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("encoder", ["resnet50", "se_resnext50_32x4d"])
def test_large_encoders_build(encoder):
    model = build_seg_model("unet", encoder, 1).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 50, 37)).shape == (1, 1, 50, 37)


def test_deeplab_resnet50_multiclass():
    model = build_seg_model("deeplabv3plus", "resnet50", 20).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 47)).shape == (1, 21, 65, 47)


class _Probe(torch.nn.Module):
    """Records the padded input and returns its first channel as one logit map."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Identity()
        self.seen = None

    def forward(self, x):
        self.seen = x
        return x[:, :1]


@pytest.mark.parametrize("mode", ["reflect", "zero"])
def test_padding_and_crop(mode):
    probe = _Probe()
    model = PaddedSegModel(probe, stride=32, pad_mode=mode)
    x = torch.arange(2 * 3 * 40 * 20, dtype=torch.float32).reshape(2, 3, 40, 20)
    y = model(x)
    assert probe.seen.shape == (2, 3, 64, 32)
    assert torch.equal(y, x[:, :1])  # cropped back exactly
    if mode == "zero":
        assert probe.seen[..., 40:, :].abs().sum() == 0
    else:
        assert torch.equal(probe.seen[..., 40, :20], x[..., 38, :])  # reflected row


def test_padding_tiny_input_falls_back_to_zero():
    probe = _Probe()
    y = PaddedSegModel(probe, stride=32)(torch.ones(1, 3, 5, 7))
    assert probe.seen.shape == (1, 3, 32, 32) and y.shape == (1, 1, 5, 7)


def test_bad_args():
    with pytest.raises(ValueError, match="seg.arch"):
        build_seg_model("fpn", "resnet18", 1)
    with pytest.raises(ValueError, match="seg.encoder"):
        build_seg_model("deeplabv3plus", "se_resnext50_32x4d", 1)
    with pytest.raises(ValueError, match="pad_mode"):
        PaddedSegModel(_Probe(), pad_mode="circular")


def test_missing_weights_file_names_it(tmp_path):
    missing = tmp_path / "nope" / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match="resnet18.pth"):
        build_seg_model("unet", "resnet18", 1, encoder_weights_path=missing)


def test_load_torchvision_style_weights(tmp_path):
    src = build_seg_model("unet", "resnet18", 1)
    state = {k: v.clone() for k, v in src.encoder.state_dict().items()}
    state["fc.weight"] = torch.zeros(1000, 512)  # a torchvision checkpoint's head is dropped
    state["fc.bias"] = torch.zeros(1000)
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    torch.manual_seed(123)
    dst = build_seg_model("unet", "resnet18", 1, encoder_weights_path=path)
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(dst.encoder.state_dict()[k], v), k


def test_mismatched_weights_raise(tmp_path):
    r34 = build_seg_model("unet", "resnet34", 1)
    path = tmp_path / "r34.pth"
    torch.save(r34.encoder.state_dict(), path)
    model = build_seg_model("unet", "resnet18", 1)
    with pytest.raises(RuntimeError, match="do not match"):
        load_encoder_weights(model, path)
    bad = tmp_path / "bad.pth"
    torch.save({"a": 1}, bad)
    with pytest.raises(ValueError, match="state dict"):
        load_encoder_weights(model, bad)


def test_decoder_channels():
    model = build_seg_model("unet", "resnet18", 1, decoder_channels=[64, 32, 16, 16, 8]).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 40)).shape == (1, 1, 40, 40)
    assert model.net.segmentation_head[0].in_channels == 8  # the last decoder width
    deeplab = build_seg_model("deeplabv3plus", "resnet18", 1, decoder_channels=64)
    assert deeplab.net.segmentation_head[0].in_channels == 64
    with pytest.raises(ValueError, match="5 widths"):
        build_seg_model("unet", "resnet18", 1, decoder_channels=[64, 32])


def test_model_from_cfg_reads_pad_mode_and_decoder_channels():
    from wsss_fast.config import load_config
    from wsss_fast.seg.model import model_from_cfg

    cfg = load_config(None, ["seg.encoder=resnet18", "seg.pad_mode=zero", "seg.decoder_channels=[64,32,16,16,8]"])
    model = model_from_cfg(cfg, 1)
    assert model.pad_mode == "zero" and model.net.segmentation_head[0].in_channels == 8
