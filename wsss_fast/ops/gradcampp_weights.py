"""Fused Grad-CAM++ channel weights for many target classes at once.

Chattopadhay, Sarkar, Howlader and Balasubramanian, "Grad-CAM++: Generalized
Gradient-Based Visual Explanations for Deep Convolutional Networks", WACV 2018 (Eq. 19,
with the exponential trick that reduces the higher-order derivatives to powers of g).

Two variants, both with ``alpha = 0`` where ``g <= 0`` (there ``relu(g) = 0``, so the
weight is unchanged; masking only avoids ``0 * inf`` when a denominator vanishes):

* ``"paper"``, identical to pytorch-grad-cam 1.5.7's ``GradCAMPlusPlus``::

      alpha[p] = g[p]^2 / (2 g[p]^2 + (sum_q A[q]) * g[p]^3 + eps),   eps = 1e-6
      w        = sum_p alpha[p] * relu(g[p])

  The spatial sum multiplies only the activations (the paper's Eq. 19). eps matters:
  late-layer gradients are small, so g^2 is often of the order of eps.

* ``"wsmis"``, the seed paper's released code (Viniavskyi et al., AIME 2020)::

      alpha[p] = g[p]^2 / (2 g[p]^2 + sum_q (A[q] * g[q]^3) + eps),  eps = 1e-8

  The spatial sum runs over the product A * g^3, so the second denominator term is
  one number per channel rather than ``sum(A)`` times the local ``g^3``. That code also
  back-propagates ``exp(score)`` instead of the score, which scales g by ``exp(score)``
  (:class:`wsss_fast.cam.CAMExtractor` does this for ``variant="wsmis"``); this op takes
  the gradients as given.

Both kernels read every gradient once per class (``wsmis`` re-reads each ``h*w`` slice
from cache for its second pass) and accumulate in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import _ext
from ..reference import gradcampp_weights as _ref
from . import _utils

__all__ = ["gradcampp_weights", "VARIANTS", "DEFAULT_EPS"]

_HAS_OP = _ext.has_op("gradcampp_weights")
VARIANTS = _ref.VARIANTS
DEFAULT_EPS = _ref.DEFAULT_EPS


def _check(activations: Tensor, grads: Tensor, variant: str, eps: float | None) -> None:
    _utils.check_maps_and("gradcampp_weights", activations, grads, "grads", "[B, C, K, h, w]")
    _utils.check_choice("gradcampp_weights", "variant", variant, VARIANTS)
    if eps is not None and not (float(eps) >= 0.0):
        raise ValueError(f"gradcampp_weights: eps must be >= 0 or None, got {eps}")


def gradcampp_weights(
    activations: Tensor, grads: Tensor, *, variant: str = "paper", eps: float | None = None
) -> Tensor:
    """Grad-CAM++ weights of C target classes in one fused pass.

    Args:
        activations: ``[B, K, h, w]`` target-layer activations A (any strides).
        grads: ``[B, C, K, h, w]`` gradients of C target scores w.r.t. A. A permuted view
            such as ``g.transpose(0, 1)`` of ``[C, B, K, h, w]`` gradients is read in place
            as long as every ``h*w`` slice is contiguous.
        variant: ``"paper"`` (pytorch-grad-cam, WACV 2018) or ``"wsmis"`` (seed code); see
            the module docstring.
        eps: denominator epsilon; ``None`` picks 1e-6 for ``"paper"`` and 1e-8 for ``"wsmis"``.

    Returns:
        ``[B, C, K]`` weights in the inputs' dtype (accumulated in fp32, or fp64 for fp64).
        Differentiable w.r.t. both inputs.

    Raises:
        TypeError, ValueError, RuntimeError: on bad shapes, dtypes, devices or variant.
    """
    _check(activations, grads, variant, eps)
    if not _utils.use_kernel("gradcampp_weights", _HAS_OP):
        return _ref.gradcampp_weights(activations, grads, variant=variant, eps=eps)
    return torch.ops.wsss_fast.gradcampp_weights(activations, grads, variant, eps)


def _fake(activations, grads, variant="paper", eps=None):
    return grads.new_empty((grads.shape[0], grads.shape[1], grads.shape[2]))


def _backward_formula(
    a: Tensor, g: Tensor, gw: Tensor, variant: str, eps: float | None
) -> tuple[Tensor, Tensor]:
    """Gradients ``([B, K, h, w], [B, C, K, h, w])`` of the weights w.r.t. (activations, grads),
    in closed form, from the gradient ``gw [B, C, K]`` of the weights."""
    eps = DEFAULT_EPS[variant] if eps is None else float(eps)
    acc = torch.promote_types(g.dtype, torch.float32)
    a, g, gw = a.to(acc), g.to(acc), gw.to(acc)[..., None, None]  # gw: [B, C, K, 1, 1]
    m = (g > 0).to(acc)
    g2 = g * g
    g3 = g2 * g
    if variant == "paper":
        s = a.sum(dim=(-2, -1))[:, None, :, None, None]
        den = 2 * g2 + s * g3 + eps
        den = torch.where(m > 0, den, torch.ones_like(den))
        dg = m * (3 * g2 * den - g3 * (4 * g + 3 * s * g2)) / (den * den)
        ds = (m * (-(g3 * g3)) / (den * den)).sum(dim=(-2, -1), keepdim=True)  # [B, C, K, 1, 1]
        grad_g = gw * dg
        grad_a = (gw * ds).sum(dim=1).expand_as(a)
    else:
        d = (a[:, None] * g3).sum(dim=(-2, -1), keepdim=True)
        den = 2 * g2 + d + eps
        den = torch.where(m > 0, den, torch.ones_like(den))
        direct = m * (3 * g2 * den - 4 * g3 * g) / (den * den)
        t = (m * (-g3) / (den * den)).sum(dim=(-2, -1), keepdim=True)  # dw/dD
        grad_g = gw * (direct + t * 3 * a[:, None] * g2)
        grad_a = (gw * t * g3).sum(dim=1)
    return grad_a, grad_g


if _HAS_OP:
    torch.library.register_fake("wsss_fast::gradcampp_weights", _fake)
    _utils.register_closed_form_autograd("wsss_fast::gradcampp_weights", _backward_formula)
