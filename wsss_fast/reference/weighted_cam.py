"""Pure-PyTorch reference of :func:`wsss_fast.ops.weighted_cam`.

Class activation maps as a weighted sum of feature maps (Zhou et al., "Learning Deep
Features for Discriminative Localization", CVPR 2016; Selvaraju et al., Grad-CAM, ICCV 2017).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

NORMALIZE_EPS = 1e-7  # as pytorch-grad-cam's scale_cam_image


def weighted_cam(
    activations: Tensor,
    weights: Tensor,
    *,
    out_size: Sequence[int] | None = None,
    normalize: bool = True,
) -> Tensor:
    """``relu(sum_k w[b, c, k] * A[b, k])``, optionally upsampled and min-max normalized.

    Args:
        activations: ``[B, K, h, w]``.
        weights: ``[B, C, K]``.
        out_size: ``(H, W)`` for a bilinear upsampling (``align_corners=False``), or None.
        normalize: min-max normalize every map: ``(m - min) / (max - min + 1e-7)``.

    Returns:
        ``[B, C, H, W]`` (``[B, C, h, w]`` without ``out_size``) in the inputs' dtype.
    """
    b, k, h, w = activations.shape
    acc = torch.promote_types(activations.dtype, torch.float32)
    cam = torch.matmul(weights.to(acc), activations.to(acc).reshape(b, k, h * w))
    cam = torch.relu(cam).reshape(b, weights.shape[1], h, w)
    if out_size is not None:
        cam = F.interpolate(cam, size=tuple(int(s) for s in out_size), mode="bilinear", align_corners=False)
    if normalize and cam.numel() > 0:
        mn = cam.amin(dim=(-2, -1), keepdim=True)
        mx = cam.amax(dim=(-2, -1), keepdim=True)
        cam = (cam - mn) / (mx - mn + NORMALIZE_EPS)
    return cam.to(activations.dtype)
