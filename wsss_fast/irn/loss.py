"""IRNet's training loss (Ahn et al., CVPR 2019, ``step/train_irn.py``).

The affinity of a pair is ``1 - max(boundary on the path between them)``; it comes from
the fast :func:`wsss_fast.ops.path_affinity` kernel (with its backward) and is cropped to
IRNet's training layout by :func:`wsss_fast.ops.irnet_affinity_layout`.

- positive: ``-log(a + 1e-5)``, averaged separately over bg-positive and fg-positive pairs,
  then the two halves averaged;
- negative: ``-log(1 + 1e-5 - a)`` averaged over negative pairs;
- displacement: on fg-positive pairs ``|dp(src) - dp(dst) - offset|``, on bg-positive pairs
  ``|dp(src) - dp(dst)|`` (both summed over the 2 channels, divided by 2 x pair count);
- total = (pos + neg) / 2 + (dp_fg + dp_bg) / 2.
"""

from __future__ import annotations

import functools

import torch

from .. import ops
from .pair_labels import displacement_pairs

EPS = 1e-5


def edge_to_affinity(edge_logits: torch.Tensor, radius: int) -> torch.Tensor:
    """``[B, 1, h, w]`` boundary logits -> ``[B, D, (h - r') * (w - 2 r')]`` affinities."""
    edge = torch.sigmoid(edge_logits.float())
    aff = ops.path_affinity(edge, radius)
    return ops.irnet_affinity_layout(aff, radius)


@functools.lru_cache(maxsize=8)
def _offsets(radius: int, device: torch.device) -> torch.Tensor:
    """:func:`wsss_fast.ops.search_offsets` on ``device``, copied there once (a copy from the
    host at every step would wait for the GPU to finish the forward pass)."""
    return ops.search_offsets(radius).to(device)


def irn_loss(edge_logits: torch.Tensor, dp: torch.Tensor, bg_pos: torch.Tensor, fg_pos: torch.Tensor,
             neg: torch.Tensor, radius: int = 10) -> dict[str, torch.Tensor]:
    """IRNet's loss.

    Args:
        edge_logits: ``[B, 1, h, w]`` boundary logits.
        dp: ``[B, 2, h, w]`` displacement field.
        bg_pos, fg_pos, neg: ``[B, D, (h - r') * (w - 2 r')]`` pair labels (0/1, any dtype) from
            :func:`wsss_fast.irn.pair_labels.pair_labels`.
        radius: search radius (10 in IRNet).

    Returns:
        dict with ``total`` and its parts ``pos``, ``neg``, ``dp_fg``, ``dp_bg`` (scalars).
    """
    aff = edge_to_affinity(edge_logits, radius)
    if aff.shape != bg_pos.shape:
        raise ValueError(f"pair labels have shape {tuple(bg_pos.shape)}, affinities {tuple(aff.shape)}: "
                         "the label must be at stride 4 of the crop")
    bg_pos, fg_pos, neg = (t.to(aff.dtype) for t in (bg_pos, fg_pos, neg))
    bg_loss = (-bg_pos * torch.log(aff + EPS)).sum() / (bg_pos.sum() + EPS)
    fg_loss = (-fg_pos * torch.log(aff + EPS)).sum() / (fg_pos.sum() + EPS)
    pos = bg_loss / 2 + fg_loss / 2
    neg_loss = (-neg * torch.log(1.0 + EPS - aff)).sum() / (neg.sum() + EPS)

    disp = displacement_pairs(dp.float(), radius)  # [B, 2, D, N]
    target = _offsets(radius, dp.device).t().to(disp.dtype).view(1, 2, -1, 1)
    dp_fg = (torch.abs(disp - target) * fg_pos.unsqueeze(1)).sum() / (2 * fg_pos.sum() + EPS)
    dp_bg = (torch.abs(disp) * bg_pos.unsqueeze(1)).sum() / (2 * bg_pos.sum() + EPS)
    total = (pos + neg_loss) / 2 + (dp_fg + dp_bg) / 2
    return {"total": total, "pos": pos, "neg": neg_loss, "dp_fg": dp_fg, "dp_bg": dp_bg}
