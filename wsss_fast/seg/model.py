"""Step 3 segmentation networks from segmentation-models-pytorch (smp 0.6), offline.

Viniavskyi, Dobko, Dobosevych, "Weakly-Supervised Segmentation for Disease Localization
in Chest X-Ray Images", AIME 2020, train a U-Net (SEResNeXt50 or ResNet50 encoder) or a
DeepLabV3+ on the IRNet pseudo labels. This module builds those models with
``encoder_weights=None`` (library code never downloads) and loads encoder weights only
from a local file. :class:`PaddedSegModel` pads inputs whose sides are not multiples of
the encoder's output stride and crops the logits back, so any input size works.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import get

ARCHS = ("unet", "deeplabv3plus")
ENCODERS = {
    "unet": ("se_resnext50_32x4d", "resnet50", "resnet34", "resnet18"),
    "deeplabv3plus": ("resnet50", "resnet34", "resnet18"),
}


def num_outputs(num_classes: int) -> int:
    """Output channels: 1 logit for a binary task (one foreground class), else N + 1."""
    return 1 if int(num_classes) == 1 else int(num_classes) + 1


class PaddedSegModel(nn.Module):
    """Wrap an smp model so that it accepts any spatial size.

    The input is padded at the bottom and right to the next multiple of ``stride``
    (reflect padding, or zeros when ``pad_mode="zero"`` or the image is too small to
    reflect) and the output is cropped back to the input size.

    Args:
        net: an smp segmentation model.
        stride: the size divisor the model needs (the encoder's output stride).
        pad_mode: ``"reflect"`` or ``"zero"``.
    """

    def __init__(self, net: nn.Module, stride: int = 32, pad_mode: str = "reflect") -> None:
        super().__init__()
        if pad_mode not in ("reflect", "zero"):
            raise ValueError(f"pad_mode must be 'reflect' or 'zero', got '{pad_mode}'")
        self.net = net
        self.stride = int(stride)
        self.pad_mode = pad_mode

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch.

        Args:
            x: float tensor [B, 3, H, W], any H and W >= 1.

        Returns:
            Logits [B, C, H, W] (C = 1 for binary tasks, N + 1 otherwise).
        """
        if x.dim() != 4:
            raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        ph = (-h) % self.stride
        pw = (-w) % self.stride
        if ph or pw:
            if self.pad_mode == "reflect" and ph < h and pw < w:
                x = F.pad(x, (0, pw, 0, ph), mode="reflect")
            else:
                x = F.pad(x, (0, pw, 0, ph), mode="constant", value=0.0)
        out = self.net(x)
        return out[..., :h, :w]


def _clean_state_dict(obj: object, path: Path) -> dict:
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "encoder"):
            if key in obj and isinstance(obj[key], dict) and obj[key] and all(
                isinstance(v, torch.Tensor) for v in obj[key].values()
            ):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"encoder weights file {path} does not hold a state dict of tensors")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "encoder."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    # classifier heads of torchvision / pretrainedmodels checkpoints are not part of the encoder
    for head in ("fc.weight", "fc.bias", "last_linear.weight", "last_linear.bias"):
        out.pop(head, None)
    return out


def load_encoder_weights(model: nn.Module, path: str | Path) -> None:
    """Load a local state dict into ``model.encoder``.

    Accepts an smp encoder state dict, a torchvision ResNet state dict or a
    pretrainedmodels SE-ResNeXt one (classifier heads dropped; ``module.`` and
    ``encoder.`` prefixes stripped; ``{"state_dict": ...}`` unwrapped).

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        RuntimeError: the keys or shapes do not match the encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"seg.encoder_weights_path: encoder weights file not found: {path} "
            "(wsss_fast never downloads weights; put a local state dict there or set it to null)"
        )
    state = _clean_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
    encoder = model.encoder
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = [f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shape:
        raise RuntimeError(
            f"encoder weights {path} do not match the {type(encoder).__name__} encoder: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:5]}, {len(shape)} shape mismatches {shape[:3]}"
        )
    own.update(state)
    nn.Module.load_state_dict(encoder, own, strict=True)


def build_seg_model(arch: str, encoder: str, num_classes: int,
                    encoder_weights_path: str | Path | None = None,
                    pad_mode: str = "reflect",
                    decoder_channels: list[int] | None = None) -> PaddedSegModel:
    """Build a segmentation model.

    Args:
        arch: ``unet`` or ``deeplabv3plus``.
        encoder: one of :data:`ENCODERS` [arch].
        num_classes: foreground classes N (1 -> one output logit; else N + 1 outputs).
        encoder_weights_path: local encoder state dict, or None for random initialization.
        pad_mode: how inputs are padded to the encoder stride (``reflect`` or ``zero``).
        decoder_channels: U-Net decoder widths (5 numbers; None = smp's 256..16) or the
            DeepLabV3+ decoder width (one number; None = 256).

    Returns:
        A :class:`PaddedSegModel` mapping [B, 3, H, W] to logits [B, C, H, W].
    """
    import segmentation_models_pytorch as smp

    arch = str(arch).lower().replace("_", "").replace("-", "")
    if arch not in ARCHS:
        raise ValueError(f"seg.arch must be one of {ARCHS}, got '{arch}'")
    if encoder not in ENCODERS[arch]:
        raise ValueError(f"seg.encoder for {arch} must be one of {ENCODERS[arch]}, got '{encoder}'")
    classes = num_outputs(num_classes)
    kw = {}
    if decoder_channels is not None:
        if arch == "unet":
            kw["decoder_channels"] = tuple(int(c) for c in decoder_channels)
            if len(kw["decoder_channels"]) != 5:
                raise ValueError(f"seg.decoder_channels for unet needs 5 widths, got {decoder_channels}")
        else:
            dc = decoder_channels[0] if isinstance(decoder_channels, (list, tuple)) else decoder_channels
            kw["decoder_channels"] = int(dc)
    if arch == "unet":
        net = smp.Unet(encoder_name=encoder, encoder_weights=None, classes=classes, **kw)
    else:
        net = smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None, classes=classes, **kw)
    model = PaddedSegModel(net, stride=_stride(net), pad_mode=pad_mode)
    if encoder_weights_path:
        load_encoder_weights(model, encoder_weights_path)
    return model


def _stride(net: nn.Module) -> int:
    # smp checks divisibility by the encoder's output stride; U-Net needs 2**depth = 32
    stride = int(getattr(net.encoder, "output_stride", 32))
    return max(stride, 16)


def model_from_cfg(cfg: dict, num_classes: int) -> PaddedSegModel:
    """:func:`build_seg_model` from the ``seg:`` section of a config."""
    return build_seg_model(get(cfg, "seg.arch"), get(cfg, "seg.encoder"), num_classes,
                           get(cfg, "seg.encoder_weights_path"), get(cfg, "seg.pad_mode"),
                           get(cfg, "seg.decoder_channels"))
