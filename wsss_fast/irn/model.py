"""IRNet: class-boundary and displacement-field branches on a frozen ResNet.

Ahn, Cho & Kwak, "Weakly Supervised Learning of Instance Segmentation with Inter-pixel
Relations", CVPR 2019 (``net/resnet50_irn.py`` of the reference code). The backbone is a
torchvision ResNet with strides (2, 2, 2, 1) (output stride 16), frozen, with its
BatchNorm always in eval mode. Both branches output at stride 4.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from ..nn.weights import load_torchvision_weights

# channels of the five stage outputs (stem+maxpool, layer1 .. layer4)
STAGE_CHANNELS = {
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
}


def _block(cin: int, cout: int, groups: int, up: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout)]
    if up > 1:
        layers.append(nn.Upsample(scale_factor=up, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class MeanShift(nn.BatchNorm2d):
    """IRNet's MeanShift: tracks the mean displacement while training (output unchanged),
    subtracts it at inference."""

    def __init__(self, num_features: int = 2, momentum: float = 0.1):
        super().__init__(num_features, affine=False, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            super().forward(x.detach().float())
            return x
        return x - self.running_mean.view(1, -1, 1, 1).to(x.dtype)


def build_backbone(arch: str, pretrained_path: str | Path | None = None) -> nn.Module:
    """torchvision ResNet with layer4 at stride 1 (strides 2, 2, 2, 1).

    Args:
        arch: ``resnet50`` | ``resnet34`` | ``resnet18``.
        pretrained_path: a local torchvision state dict (``fc.*`` keys are ignored); None =
            random initialization. Nothing is ever downloaded.
    """
    if arch not in STAGE_CHANNELS:
        raise ValueError(f"irn.backbone must be one of {sorted(STAGE_CHANNELS)}, got '{arch}'")
    net = getattr(torchvision.models, arch)(weights=None)
    block = net.layer4[0]
    for m in (block.conv1, block.conv2, *(block.downsample or [])):
        if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
            m.stride = (1, 1)
    if pretrained_path:
        load_torchvision_weights(net, pretrained_path, name=f"torchvision {arch} (irn.pretrained_path)")
    return net


class IRNet(nn.Module):
    """Boundary + displacement network.

    ``forward(x)`` takes ``[B, 3, H, W]`` normalized images and returns ``(edge_logits
    [B, 1, h, w], displacement [B, 2, h, w])`` with ``h = ceil(H / 4)`` (for H divisible
    by 4: H / 4). Displacement channel 0 is dy, channel 1 is dx, in stride-4 pixels.
    ``forward(x, displacement=False)`` skips the displacement branch (None in its place): the
    random walk of the semantic labels needs the boundaries only.
    """

    def __init__(self, backbone: str = "resnet50", pretrained_path: str | Path | None = None):
        super().__init__()
        self.arch = backbone
        net = build_backbone(backbone, pretrained_path)
        c1, c2, c3, c4, c5 = STAGE_CHANNELS[backbone]
        self.backbone = nn.ModuleList([
            nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
            net.layer1, net.layer2, net.layer3, net.layer4,
        ])
        # class boundary branch: 5 x (1x1 conv -> 32, GroupNorm, upsample to stride 4, ReLU), 1x1 conv
        self.edge_layers = nn.ModuleList([
            _block(c1, 32, 4), _block(c2, 32, 4), _block(c3, 32, 4, up=2), _block(c4, 32, 4, up=4),
            _block(c5, 32, 4, up=4), nn.Conv2d(160, 1, 1, bias=True),
        ])
        # displacement field branch (IRNet's fc_dp1 .. fc_dp7), ending in the 2-channel mean shift
        self.dp_layers = nn.ModuleList([
            _block(c1, 64, 8), _block(c2, 128, 16), _block(c3, 256, 16), _block(c4, 256, 16, up=2),
            _block(c5, 256, 16, up=2), _block(768, 256, 16, up=2),
            nn.Sequential(nn.Conv2d(448, 256, 1, bias=False), nn.GroupNorm(16, 256), nn.ReLU(inplace=True),
                          nn.Conv2d(256, 2, 1, bias=False), MeanShift(2)),
        ])
        for p in self.backbone.parameters():
            p.requires_grad_(False)

    @property
    def mean_shift(self) -> MeanShift:
        return self.dp_layers[6][-1]

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five (detached) stage outputs."""
        feats = []
        with torch.no_grad():
            for stage in self.backbone:
                x = stage(x)
                feats.append(x)
        return [f.detach() for f in feats]

    def forward(self, x: torch.Tensor, displacement: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        x1, x2, x3, x4, x5 = self.features(x)
        e, d = self.edge_layers, self.dp_layers
        h, w = x2.shape[-2:]
        edge = torch.cat([e[0](x1), e[1](x2), _fit(e[2](x3), h, w), _fit(e[3](x4), h, w),
                          _fit(e[4](x5), h, w)], dim=1)
        edge = e[5](edge)
        if not displacement:
            return edge, None
        dp3 = d[2](x3)
        h3, w3 = dp3.shape[-2:]
        up3 = d[5](torch.cat([dp3, _fit(d[3](x4), h3, w3), _fit(d[4](x5), h3, w3)], dim=1))
        dp = d[6](torch.cat([d[0](x1), d[1](x2), _fit(up3, h, w)], dim=1))
        return edge, dp

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(boundary branch parameters, displacement branch parameters)."""
        return list(self.edge_layers.parameters()), list(self.dp_layers.parameters())

    def train(self, mode: bool = True) -> "IRNet":
        super().train(mode)
        self.backbone.eval()  # frozen backbone: BatchNorm statistics never change
        return self


def _fit(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Crop (or replicate-pad) ``t`` to ``h x w`` (odd sizes make the x2 upsampling overshoot)."""
    t = t[..., :h, :w]
    ph, pw = h - t.shape[-2], w - t.shape[-1]
    if ph > 0 or pw > 0:
        t = F.pad(t, (0, pw, 0, ph), mode="replicate")
    return t


class EdgeDisplacement(nn.Module):
    """Inference wrapper (IRNet's ``EdgeDisplacement``), batched.

    ``forward(x)`` runs the images and their horizontal flips in one pass and returns
    ``(edge [B, h, w] = sigmoid(mean of the image's and the un-flipped flip's logits),
    displacement [B, 2, h, w] of the unflipped image, mean-shifted)``; with
    ``displacement=False`` the displacement branch does not run and is None.
    """

    def __init__(self, net: IRNet, displacement: bool = True):
        super().__init__()
        self.net, self.displacement = net, displacement

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = x.shape[0]
        edge, dp = self.net(torch.cat([x, x.flip(-1)], dim=0), self.displacement)
        edge = edge.float()
        edge = torch.sigmoid(edge[:b, 0] / 2 + edge[b:, 0].flip(-1) / 2)
        return edge, None if dp is None else dp[:b].float()


def load_irnet(path: str | Path, map_location: str | torch.device = "cpu") -> IRNet:
    """Load a trained IRNet from ``final.pt`` (or ``last.pt``) written by ``train_irn``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"IRNet checkpoint not found: {path} (run train-irn first)")
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    net = IRNet(ckpt.get("backbone", "resnet50"))
    net.load_state_dict(ckpt["model"])
    return net
