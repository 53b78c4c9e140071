"""DropBlock module with a linear warm-up of the drop probability.

DropBlock: Ghiasi, Lin and Le, "DropBlock: A regularization method for convolutional
networks", NeurIPS 2018 (https://arxiv.org/abs/1810.12890). The paper ramps the drop
probability linearly from 0 during training; ``warmup_steps`` does that per training
forward, and the step counter is a buffer, so it is saved in the ``state_dict`` and
resumes where it was.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from ..ops.drop_block2d import GAMMA_MODES, drop_block2d

__all__ = ["DropBlock2d"]


class DropBlock2d(nn.Module):
    """Fused DropBlock on ``[N, C, H, W]`` feature maps (see :func:`wsss_fast.ops.drop_block2d`).

    Args:
        p: target drop probability in ``[0, 1]``.
        block_size: block size (any parity; clipped to ``min(H, W)``).
        shared_mask: one mask per sample shared by all channels instead of one per channel.
        gamma_mode: ``"paper"`` or ``"simple"`` seed geometry and rate.
        warmup_steps: number of training forwards over which ``p`` ramps linearly from 0;
            0 disables the warm-up.

    Buffers:
        step: int64 scalar, training forwards seen so far (part of the ``state_dict``).

    Shape:
        input ``[N, C, H, W]`` -> output ``[N, C, H, W]``; identity in eval mode.
    """

    step: torch.Tensor

    def __init__(
        self,
        p: float,
        block_size: int,
        shared_mask: bool = False,
        gamma_mode: str = "paper",
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"DropBlock2d: p must be a float in [0, 1], got {p!r}")
        if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
            raise ValueError(f"DropBlock2d: block_size must be an int >= 1, got {block_size!r}")
        if gamma_mode not in GAMMA_MODES:
            raise ValueError(f"DropBlock2d: gamma_mode must be one of {GAMMA_MODES}, got {gamma_mode!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral) or warmup_steps < 0:
            raise ValueError(f"DropBlock2d: warmup_steps must be an int >= 0, got {warmup_steps!r}")
        self.p = float(p)
        self.block_size = int(block_size)
        self.shared_mask = bool(shared_mask)
        self.gamma_mode = gamma_mode
        self.warmup_steps = int(warmup_steps)
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    def current_p(self) -> torch.Tensor:
        """Drop probability of the next training forward, a float64 0-dim tensor."""
        if self.warmup_steps == 0:
            return torch.full((), self.p, dtype=torch.float64, device=self.step.device)
        frac = torch.clamp(self.step.to(torch.float64) / self.warmup_steps, max=1.0)
        return self.p * frac

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Drop blocks of ``x`` (``[N, C, H, W]``) when training; identity otherwise."""
        if not self.training or self.p == 0.0:
            return x
        if self.warmup_steps == 0:
            p: float | torch.Tensor = self.p
        else:
            p = self.current_p().to(x.device)
            self.step.add_(1)
        return drop_block2d(
            x, p, self.block_size, shared_mask=self.shared_mask, gamma_mode=self.gamma_mode, training=True
        )

    def extra_repr(self) -> str:
        s = f"p={self.p}, block_size={self.block_size}"
        if self.shared_mask:
            s += ", shared_mask=True"
        if self.gamma_mode != "paper":
            s += f", gamma_mode={self.gamma_mode!r}"
        if self.warmup_steps:
            s += f", warmup_steps={self.warmup_steps}, step={int(self.step)}"
        return s
