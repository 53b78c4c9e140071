"""Reference of the dense CRF (pydensecrf's ``DenseCRF2D`` inference), in plain PyTorch.

Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge
Potentials", NeurIPS 2011, as pydensecrf runs it: a Gaussian kernel on ``(x, y) / sxy`` and a
bilateral kernel on ``(x / sxy, y / sxy, r / srgb, g / srgb, b / srgb)``, each with Potts
compatibility ``w``, DIAG_KERNEL and NORMALIZE_SYMMETRIC (``norm = 1 / sqrt(K 1 + 1e-20)``,
message ``norm * K (norm * Q)``), and mean field ``Q_0 = softmax(-U)``,
``Q <- softmax(-U + sum_k w_k norm_k K_k (norm_k Q))``. The unary helpers are pydensecrf's
``unary_from_softmax`` and ``unary_from_labels``.
"""

from __future__ import annotations

import math

import torch

from .permutohedral_filter import permutohedral_filter

__all__ = ["dense_crf", "dense_crf_unary", "unary_from_softmax", "unary_from_labels"]


def unary_from_softmax(probs: torch.Tensor, clip: float = 1e-5) -> torch.Tensor:
    """``-log(clip(probs, clip, 1))`` as float32 (pydensecrf's ``unary_from_softmax``, scale None).

    Args:
        probs: ``[B, L, H, W]`` class probabilities.
        clip: smallest probability.

    Returns:
        float32 unary energies of probs' shape.
    """
    return -torch.log(probs.clamp(clip, 1.0)).to(torch.float32)


def unary_from_labels(labels: torch.Tensor, n_labels: int, gt_prob: float, zero_unsure: bool = True) -> torch.Tensor:
    """pydensecrf's ``unary_from_labels`` (see :func:`wsss_fast.ops.unary_from_labels`); float32 ``[B, L, H, W]``."""
    lab = labels.to(torch.int64)
    n_energy = float(-math.log((1.0 - gt_prob) / (n_labels - 1)))
    p_energy = float(-math.log(gt_prob))
    b, h, w = lab.shape
    u = torch.full((b, n_labels, h, w), n_energy, dtype=torch.float32, device=lab.device)
    idx = (lab - 1).clamp_min(0) if zero_unsure else lab
    u.scatter_(1, idx[:, None], p_energy)
    if zero_unsure:
        u.masked_fill_((lab == 0)[:, None], float(-math.log(1.0 / n_labels)))
    return u


def _features(image: torch.Tensor, gaussian_sxy, bilateral_sxy, bilateral_srgb):
    b, _, h, w = image.shape
    f32 = lambda x: torch.tensor(float(x), dtype=torch.float32)  # noqa: E731  # pydensecrf: C floats
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    xs, ys = xs.to(image.device), ys.to(image.device)
    gs, bs, br = f32(gaussian_sxy).to(image.device), f32(bilateral_sxy).to(image.device), \
        f32(bilateral_srgb).to(image.device)
    fg = torch.stack([xs / gs, ys / gs]).expand(b, 2, h, w)
    rgb = image.expand(b, 3, h, w).to(torch.float32) / br
    fb = torch.cat([torch.stack([xs / bs, ys / bs]).expand(b, 2, h, w), rgb], 1)
    return fg, fb


def dense_crf_unary(unary: torch.Tensor, image: torch.Tensor, *, gaussian_sxy: float = 3.0,
                    gaussian_compat: float = 3.0, bilateral_sxy: float = 50.0, bilateral_srgb: float = 5.0,
                    bilateral_compat: float = 10.0, iterations: int = 10) -> torch.Tensor:
    """Mean-field marginals of the dense CRF from unary energies (see :func:`wsss_fast.ops.dense_crf_unary`).

    Args:
        unary: float32 ``[B, L, H, W]`` energies (-log p).
        image: uint8 ``[B, 3, H, W]`` or ``[B, 1, H, W]``.

    Returns:
        float32 ``[B, L, H, W]`` marginals Q.
    """
    fg, fb = _features(image, gaussian_sxy, bilateral_sxy, bilateral_srgb)
    kernels = []
    for f, w in ((fg, gaussian_compat), (fb, bilateral_compat)):
        ones = torch.ones_like(unary[:, :1])
        norm = (1.0 / torch.sqrt(permutohedral_filter(ones, f).double() + 1e-20)).float()
        kernels.append((f, norm, torch.tensor(float(w), dtype=torch.float32)))
    mu = -unary
    q = torch.softmax(mu, 1)
    for _ in range(iterations):
        e = mu
        for f, norm, w in kernels:
            e = e + w * (permutohedral_filter(q * norm, f) * norm)
        q = torch.softmax(e, 1)
    return q


def dense_crf(probs: torch.Tensor, image: torch.Tensor, *, gaussian_sxy: float = 3.0, gaussian_compat: float = 3.0,
              bilateral_sxy: float = 50.0, bilateral_srgb: float = 5.0, bilateral_compat: float = 10.0,
              iterations: int = 10) -> torch.Tensor:
    """:func:`dense_crf_unary` of ``unary_from_softmax(probs)``."""
    return dense_crf_unary(unary_from_softmax(probs), image, gaussian_sxy=gaussian_sxy,
                           gaussian_compat=gaussian_compat, bilateral_sxy=bilateral_sxy,
                           bilateral_srgb=bilateral_srgb, bilateral_compat=bilateral_compat,
                           iterations=iterations)
