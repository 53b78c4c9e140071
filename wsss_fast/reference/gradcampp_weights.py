"""Pure-PyTorch reference of :func:`wsss_fast.ops.gradcampp_weights`.

Grad-CAM++ channel weights (Chattopadhay et al., "Grad-CAM++: Generalized
Gradient-Based Visual Explanations for Deep Convolutional Networks", WACV 2018, Eq. 19).
See :mod:`wsss_fast.ops.gradcampp_weights` for the formulas of both variants.
"""

from __future__ import annotations

import torch
from torch import Tensor

VARIANTS = ("paper", "wsmis")
DEFAULT_EPS = {"paper": 1e-6, "wsmis": 1e-8}


def gradcampp_weights(
    activations: Tensor, grads: Tensor, *, variant: str = "paper", eps: float | None = None
) -> Tensor:
    """Grad-CAM++ weights, computed with plain tensor ops (fp32 accumulation).

    Args:
        activations: ``[B, K, h, w]`` target-layer activations A.
        grads: ``[B, C, K, h, w]`` gradients g of C target scores w.r.t. A.
        variant: ``"paper"`` or ``"wsmis"``.
        eps: denominator epsilon; ``None`` picks 1e-6 (paper) or 1e-8 (wsmis).

    Returns:
        ``[B, C, K]`` weights, in the dtype of ``grads``.
    """
    eps = DEFAULT_EPS[variant] if eps is None else float(eps)
    acc = torch.promote_types(grads.dtype, torch.float32)
    g = grads.to(acc)
    a = activations.to(acc)
    g2 = g * g
    g3 = g2 * g
    if variant == "paper":
        s = a.sum(dim=(-2, -1))[:, None, :, None, None]  # [B, 1, K, 1, 1]
        denom = 2 * g2 + s * g3 + eps
    else:
        d = (a[:, None] * g3).sum(dim=(-2, -1), keepdim=True)  # [B, C, K, 1, 1]
        denom = 2 * g2 + d + eps
    # alpha * relu(g) vanishes wherever g <= 0; masking avoids 0 * inf where the
    # denominator happens to vanish for a negative gradient.
    pos = g > 0
    alpha = torch.where(pos, g2 / torch.where(pos, denom, torch.ones_like(denom)), torch.zeros_like(g))
    w = (alpha * g.clamp_min(0)).sum(dim=(-2, -1))
    return w.to(grads.dtype)
