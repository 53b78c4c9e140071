"""Step-1 classifiers: dilated VGG16 ("D1") and ResNets at output stride 8, with DropBlock.

Follows Viniavskyi, Dobko and Dobosevych, "Weakly-Supervised Segmentation for Disease
Localization in Chest X-Ray Images", AIME 2020, and their released code (WSMIS):

* **VGG16-D1**: VGG16 with BatchNorm; pool5 is removed, pool4 (the last remaining
  max-pool) becomes a 3x3 stride-1 pool and the conv5 layers are dilated by 2, so the
  output stride is 8.
* **ResNet50** (torchvision) with ``replace_stride_with_dilation=[False, True, True]``
  (output stride 8). ResNet18/34 for small runs: torchvision's ``BasicBlock`` refuses that
  flag, so layer3/layer4 are dilated here by hand (strides 1, dilations 2 and 4, the first
  block of each layer keeping the previous dilation in its first conv, as torchvision does
  for Bottleneck).
* Head: three conv3x3 + ReLU, global average pooling, a linear layer.
* DropBlock (Ghiasi et al., NeurIPS 2018) at a configurable place; the seed code puts it
  right after the first conv layer (``after_conv1``).

Every model exposes ``features`` (the backbone, an ``nn.Sequential`` of named stages),
``head``, ``classifier`` (the final ``nn.Linear``), ``cam_layer = "head"`` (the name of the
module whose output, the last feature map before GAP, is the CAM target layer) and
``output_stride = 8``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import vgg as _tv_vgg
from torch import nn

from ..config import get
from ..nn import DropBlock2d
from ..nn.weights import load_torchvision_weights

ARCHS = ("vgg16", "resnet18", "resnet34", "resnet50")

# stage names of each architecture, in order; DropBlock may go after any of them
STAGES = {
    "vgg16": ("conv1", "layer1", "layer2", "layer3", "layer4", "layer5"),
    "resnet": ("conv1", "pool", "layer1", "layer2", "layer3", "layer4"),
}


def make_dropblock(p: float = 0.2, block_size: int = 7, shared_mask: bool = False,
                   gamma_mode: str = "paper", warmup_steps: int = 0) -> nn.Module:
    """A ``wsss_fast.nn.DropBlock2d`` (the fused kernel)."""
    return DropBlock2d(p, block_size, shared_mask=shared_mask, gamma_mode=gamma_mode,
                       warmup_steps=warmup_steps)


def _dilate_basic_layer(layer: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Turn a stride-2 torchvision ``BasicBlock`` layer into a stride-1 layer dilated by ``dilation``."""
    for i, block in enumerate(layer):
        first = previous_dilation if i == 0 else dilation
        for conv, d in ((block.conv1, first), (block.conv2, dilation)):
            conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
        block.stride = 1
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


def _resnet_features(arch: str, pretrained_path: str | Path | None) -> tuple[list, int]:
    ctor = getattr(torchvision.models, arch)
    if arch == "resnet50":
        net = ctor(weights=None, replace_stride_with_dilation=[False, True, True])
    else:
        net = ctor(weights=None)
    if pretrained_path:
        load_torchvision_weights(net, pretrained_path, ignore_prefixes=("fc.",), name=arch)
    if arch != "resnet50":
        _dilate_basic_layer(net.layer3, 1, 2)
        _dilate_basic_layer(net.layer4, 2, 4)
    stages = [("conv1", nn.Sequential(net.conv1, net.bn1, net.relu)), ("pool", net.maxpool),
              ("layer1", net.layer1), ("layer2", net.layer2), ("layer3", net.layer3), ("layer4", net.layer4)]
    return stages, net.fc.in_features


def _vgg16_d1_features(pretrained_path: str | Path | None, width: float = 1.0) -> tuple[list, int]:
    # torchvision's vgg16_bn without its 120M-parameter ImageNet classifier (state-dict keys
    # ``features.N.*`` stay those of torchvision's file). ``width`` scales every layer's
    # channels (a narrow VGG16-D1 for CPU demos; pretrained weights need width 1).
    if pretrained_path and width != 1.0:
        raise ValueError(f"cls.width: pretrained VGG16 weights need width 1.0, got {width}")
    layer_cfg = [v if v == "M" else max(8, int(round(v * width))) for v in _tv_vgg.cfgs["D"]]
    net = nn.Module()
    net.features = _tv_vgg.make_layers(layer_cfg, batch_norm=True)
    for m in net.features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    if pretrained_path:
        load_torchvision_weights(net, pretrained_path, ignore_prefixes=("classifier.",),
                                 name="vgg16_bn")
    f = list(net.features)  # conv(3) x2, M, x2, M, x3, M, x3, M(33), x3 (34..42), M(43)
    f[33] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)  # pool4 -> 3x3 stride 1
    for idx in (34, 37, 40):  # conv5_x dilated by 2
        f[idx].dilation, f[idx].padding = (2, 2), (2, 2)
    stages = [("conv1", nn.Sequential(*f[0:3])), ("layer1", nn.Sequential(*f[3:7])),
              ("layer2", nn.Sequential(*f[7:14])), ("layer3", nn.Sequential(*f[14:24])),
              ("layer4", nn.Sequential(*f[24:34])), ("layer5", nn.Sequential(*f[34:43]))]  # pool5 dropped
    return stages, layer_cfg[-2]


def _places(place: str | Sequence[str] | None) -> list[str]:
    if place is None or place == "none":
        return []
    items = [place] if isinstance(place, str) else list(place)
    out = []
    for item in items:
        if item == "none":
            continue
        if not str(item).startswith("after_"):
            raise ValueError(f"cls.dropblock.place: '{item}' must look like after_<stage> or be 'none'")
        out.append(str(item)[len("after_"):])
    return out


class Classifier(nn.Module):
    """Backbone (output stride 8) -> [DropBlock] -> 3 x (conv3x3 + ReLU) -> GAP -> Linear.

    Args:
        arch: ``vgg16`` | ``resnet18`` | ``resnet34`` | ``resnet50``.
        num_classes: number of foreground classes N (multi-label logits).
        head_channels: channels of the three head convolutions.
        dropblock: keyword arguments of :func:`make_dropblock` plus ``place`` (``after_<stage>``,
            a list of them, or ``none``); None disables DropBlock. Stages: ``conv1`` (the first
            conv + BN + ReLU), ``pool`` (ResNet stem max-pool), ``layer1`` ... ``layer4``
            (ResNet) or ``layer1`` ... ``layer5`` (VGG16 conv blocks after conv1_1), ``head``.
        pretrained_path: local torchvision state dict of the backbone (``resnet50-*.pth``,
            ``vgg16_bn-*.pth``); None = random initialization.
        width: channel multiplier of VGG16-D1 (e.g. 0.25 for quick CPU runs; ResNets need 1.0).

    Shapes:
        input ``[B, 3, H, W]`` -> logits ``[B, N]``; CAM layer output ``[B, head_channels,
        H/8, W/8]`` for H, W multiples of 8 (otherwise ResNets round up, VGG16 rounds down).
    """

    cam_layer = "head"
    output_stride = 8

    def __init__(self, arch: str = "resnet50", num_classes: int = 1, head_channels: int = 512,
                 dropblock: dict | None = None, pretrained_path: str | Path | None = None,
                 width: float = 1.0) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"cls.arch: unknown architecture '{arch}'; choose one of {ARCHS}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.arch, self.num_classes = arch, int(num_classes)
        if width != 1.0 and arch != "vgg16":
            raise ValueError(f"cls.width: only vgg16 supports a width multiplier, got {width} for {arch}")
        if arch == "vgg16":
            stages, in_ch = _vgg16_d1_features(pretrained_path, float(width))
            valid = STAGES["vgg16"] + ("head",)
        else:
            stages, in_ch = _resnet_features(arch, pretrained_path)
            valid = STAGES["resnet"] + ("head",)
        db = dict(dropblock or {})
        places = _places(db.pop("place", "after_conv1")) if dropblock is not None else []
        bad = [p for p in places if p not in valid]
        if bad:
            raise ValueError(f"cls.dropblock.place: unknown stage(s) {bad} for {arch}; "
                             f"use after_<stage> with stage in {list(valid)}, or none")
        self.dropblock_places = places
        layers: list[tuple[str, nn.Module]] = []
        for name, module in stages:
            layers.append((name, module))
            if name in places:
                layers.append((f"dropblock_{name}", make_dropblock(**db)))
        self.features = nn.Sequential(OrderedDict(layers))
        convs: list[nn.Module] = []
        for i in range(3):
            convs += [nn.Conv2d(in_ch if i == 0 else head_channels, head_channels, 3, padding=1),
                      nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*convs)
        self.head_dropblock = make_dropblock(**db) if "head" in places else None
        self.classifier = nn.Linear(head_channels, self.num_classes)
        self._init_new_layers()

    def _init_new_layers(self) -> None:
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def dropblocks(self) -> list[nn.Module]:
        """The DropBlock modules of the model, in forward order."""
        out = [m for n, m in self.features.named_children() if n.startswith("dropblock_")]
        return out + ([self.head_dropblock] if self.head_dropblock is not None else [])

    def new_modules(self) -> list[nn.Module]:
        """Modules that are not part of the pretrained backbone (trained with ``head_lr_mult``)."""
        return [self.head, self.classifier]

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The CAM layer's output ``[B, head_channels, H/8, W/8]``."""
        x = self.head(self.features(x))
        return self.head_dropblock(x) if self.head_dropblock is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` for images ``[B, 3, H, W]``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"Classifier expects images [B, 3, H, W], got {tuple(x.shape)}")
        f = self.feature_map(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(f, 1), 1))

    def param_groups(self, lr: float, head_lr_mult: float = 1.0) -> list[dict[str, Any]]:
        """Two optimizer groups: the backbone at ``lr`` and the new layers at ``lr * head_lr_mult``."""
        new = {id(p) for m in self.new_modules() for p in m.parameters()}
        backbone = [p for p in self.parameters() if id(p) not in new]
        head = [p for p in self.parameters() if id(p) in new]
        return [{"params": backbone, "lr": lr, "name": "backbone"},
                {"params": head, "lr": lr * head_lr_mult, "name": "head"}]


def classifier_kwargs(cfg: dict, load_pretrained: bool = True) -> dict:
    """The :class:`Classifier` arguments a config gives (``cls.*`` and ``dataset.num_classes``)."""
    db = dict(get(cfg, "cls.dropblock"))
    enabled = db.pop("enabled") and db["place"] not in (None, "none")
    return {
        "arch": get(cfg, "cls.arch"),
        "num_classes": int(get(cfg, "dataset.num_classes")),
        "head_channels": int(get(cfg, "cls.head_channels")),
        "dropblock": db if enabled else None,
        "pretrained_path": get(cfg, "cls.pretrained_path") if load_pretrained else None,
        "width": float(get(cfg, "cls.width")),
    }


def build_classifier(cfg: dict, load_pretrained: bool = True) -> Classifier:
    """Build the step-1 classifier of a config.

    Args:
        cfg: the run configuration (``cls.arch``, ``cls.head_channels``, ``cls.dropblock.*``,
            ``cls.pretrained_path``, ``dataset.num_classes``).
        load_pretrained: load ``cls.pretrained_path`` (False when a checkpoint is loaded next).
    """
    return Classifier(**classifier_kwargs(cfg, load_pretrained))


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a classifier from a ``train-cls`` checkpoint (``best.pt`` or ``last.pt``), in eval mode.

    Raises:
        FileNotFoundError: the checkpoint is missing (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier checkpoint not found: {path} (run `wsss-fast train-cls` first)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = Classifier(**{**ckpt["model_kwargs"], "pretrained_path": None})
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
