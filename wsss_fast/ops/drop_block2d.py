"""Fused DropBlock (``torch.ops.wsss_fast.drop_block2d``).

DropBlock: Ghiasi, Lin and Le, "DropBlock: A regularization method for convolutional
networks", NeurIPS 2018 (https://arxiv.org/abs/1810.12890).

The mask is built from a small seed tensor drawn from torch's generator: every seed
position is an independent Bernoulli(gamma) draw from a counter-based hash keyed by that
seed (sampled 32 positions at a time as geometric gaps between seeds, so a word of 32
positions costs about one hash at DropBlock's gamma instead of 32), so the op
is a pure function of its inputs (``opcheck``/``torch.compile`` friendly), CPU, CUDA and
the reference draw the same mask from the same seed, and the backward reuses the keep
mask saved by the forward, packed to 1 bit per element (``grad * mask * scale``; the
forward is never recomputed).
"""

from __future__ import annotations

import numbers

import torch

from .. import _ext
from ..reference import drop_block2d as _ref
from . import _utils

__all__ = ["drop_block2d", "drop_block2d_from_seeds"]

_HAS_OP = _ext.has_op("drop_block2d")
GAMMA_MODES = _ref.GAMMA_MODES


def _check(x: torch.Tensor, block_size: int, gamma_mode: str) -> None:
    _utils.check_tensor("drop_block2d", "x", x, ndim=4, layout="[N, C, H, W]", floating=True)
    _utils.check_int("drop_block2d", "block_size", block_size, 1)
    _utils.check_choice("drop_block2d", "gamma_mode", gamma_mode, GAMMA_MODES)


def _check_p(p: float | torch.Tensor) -> None:
    if isinstance(p, torch.Tensor):
        if p.numel() != 1 or not p.is_floating_point():
            raise ValueError(f"drop_block2d: p must be a float or a one-element floating tensor, got {p!r}")
        return
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"drop_block2d: p must be a float, got {type(p).__name__}")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"drop_block2d: p must be in [0, 1], got {p}")


def _check_seeds(x: torch.Tensor, seeds: torch.Tensor, block_size: int, gamma_mode: str) -> None:
    N, C, H, W = x.shape
    Hs, Ws, _ = _ref.geometry(H, W, block_size, gamma_mode)
    _utils.check_tensor("drop_block2d", "seeds", seeds)
    if seeds.dim() != 4 or seeds.shape[0] != N or seeds.shape[1] not in (1, C) or tuple(seeds.shape[2:]) != (Hs, Ws):
        raise ValueError(
            f"drop_block2d: seeds must have shape [{N}, 1 or {C}, {Hs}, {Ws}] for x of shape "
            f"{list(x.shape)}, block_size={block_size}, gamma_mode={gamma_mode!r}; got {list(seeds.shape)}"
        )


def _clip_block_size(block_size: int, H: int, W: int) -> int:
    return max(1, min(int(block_size), H, W))


def drop_block2d(
    x: torch.Tensor,
    p: float | torch.Tensor,
    block_size: int,
    *,
    shared_mask: bool = False,
    gamma_mode: str = "paper",
    training: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DropBlock: zero bs x bs squares around Bernoulli(gamma) seeds and rescale.

    The result is ``x * mask * numel(mask) / sum(mask)`` with the sum over the whole batch;
    when everything is dropped the output is zeros (never NaN).

    Args:
        x: ``[N, C, H, W]`` floating tensor (float32/float64 on CPU, also float16/bfloat16;
            float32/float16/bfloat16/float64 on CUDA), any strides; channels_last input
            gives channels_last output.
        p: drop probability in ``[0, 1]``. A 0-dim tensor is accepted (used by the module's
            warm-up; it is not range-checked and not synced to the host).
        block_size: block size ``bs >= 1``, any parity. A block larger than the input is
            clipped to ``min(H, W)``.
        shared_mask: False: one mask per (sample, channel), as the paper and torchvision;
            True: one mask per sample shared by all channels (``dropblock`` package).
        gamma_mode: ``"paper"``: ``gamma = p / bs^2 * H W / ((H - bs + 1)(W - bs + 1))``,
            seeds on the ``(H - bs + 1) x (W - bs + 1)`` grid of top-left corners (for odd
            ``bs`` exactly ``torchvision.ops.drop_block2d``). ``"simple"``:
            ``gamma = p / bs^2``, seeds anywhere, a seed at ``i`` drops rows
            ``i - (bs - 1) // 2 ... i + bs // 2`` clipped to the image (``dropblock`` package).
        training: when False, ``x`` itself is returned.
        generator: source of the random seed; the same generator state gives the same mask
            on the same device.

    Returns:
        ``[N, C, H, W]`` tensor like ``x`` (``x`` itself when not training or ``p == 0``).

    Raises:
        TypeError: ``x`` is not a floating-point tensor, or ``block_size`` is not an int.
        ValueError: ``x`` is not 4-D, ``p`` is outside ``[0, 1]``, ``block_size < 1`` or
            ``gamma_mode`` is unknown.
    """
    _check(x, block_size, gamma_mode)
    _check_p(p)
    if not training or (not isinstance(p, torch.Tensor) and p == 0):
        return x
    if not _utils.use_kernel("drop_block2d", _HAS_OP):
        return _ref.drop_block2d(
            x, p, block_size, shared_mask=shared_mask, gamma_mode=gamma_mode, training=training, generator=generator
        )
    N, C, H, W = x.shape
    bs = _clip_block_size(block_size, H, W)
    seed = _ref.draw_seed(x.device, generator)
    if isinstance(p, torch.Tensor):
        p_t = p.detach().reshape(()).to(device=x.device, dtype=torch.float64)
    else:
        p_t = torch.full((), float(p), dtype=torch.float64, device=x.device)
    out, _, _ = torch.ops.wsss_fast.drop_block2d(x, seed, p_t, bs, bool(shared_mask), gamma_mode)
    return out


def drop_block2d_from_seeds(
    x: torch.Tensor, seeds: torch.Tensor, block_size: int, gamma_mode: str = "paper"
) -> torch.Tensor:
    """DropBlock with an explicit seed grid (internal entry point, used by the tests).

    Args:
        x: ``[N, C, H, W]`` floating tensor.
        seeds: ``[N, C or 1, Hs, Ws]``, nonzero = seed (one channel = shared mask), with
            ``Hs, Ws = H - bs + 1, W - bs + 1`` (``"paper"``) or ``H, W`` (``"simple"``)
            for the clipped ``bs = min(block_size, H, W)``.
        block_size: block size (clipped to ``min(H, W)``).
        gamma_mode: block geometry, ``"paper"`` or ``"simple"``.

    Returns:
        ``[N, C, H, W]``: ``x * keep * numel(keep) / sum(keep)``.

    Raises:
        TypeError, ValueError: as :func:`drop_block2d`, or ``seeds`` has the wrong shape.
    """
    _check(x, block_size, gamma_mode)
    bs = _clip_block_size(block_size, x.shape[2], x.shape[3])
    _check_seeds(x, seeds, bs, gamma_mode)
    if not _utils.use_kernel("drop_block2d_from_seeds", _HAS_OP):
        return _ref.drop_block2d_from_seeds(x, seeds, bs, gamma_mode)
    out, _, _ = torch.ops.wsss_fast.drop_block2d_from_seeds(x, seeds, bs, gamma_mode)
    return out


def _out_format(x: torch.Tensor) -> torch.memory_format:
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _fake(x, mask_channels):
    N, C, H, W = x.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_out_format(x))
    mask = x.new_empty(((N * mask_channels * H * W + 31) // 32,), dtype=torch.int32)
    count = x.new_empty((), dtype=torch.int64)
    return out, mask, count


def _drop_block2d_fake(x, seed, p, block_size, shared_mask, gamma_mode):
    return _fake(x, 1 if shared_mask else x.shape[1])


def _from_seeds_fake(x, seeds, block_size, gamma_mode):
    return _fake(x, seeds.shape[1])


def _backward_fake(grad, mask, count, shared_mask):
    return torch.empty(grad.shape, dtype=grad.dtype, device=grad.device, memory_format=_out_format(grad))


def _save(ctx, output, shared: bool):
    _, mask, count = output
    ctx.save_for_backward(mask, count)
    ctx.shared_mask = shared
    ctx.set_materialize_grads(False)  # no zero-filled gradients for mask and count


def _drop_block2d_setup_context(ctx, inputs, output):
    _save(ctx, output, bool(inputs[4]))


def _from_seeds_setup_context(ctx, inputs, output):
    _save(ctx, output, inputs[1].shape[1] == 1)


def _grad_x(ctx, grad_out):
    if grad_out is None:
        return None
    mask, count = ctx.saved_tensors
    return torch.ops.wsss_fast.drop_block2d_backward(grad_out, mask, count, ctx.shared_mask)


def _drop_block2d_backward(ctx, grad_out, grad_mask, grad_count):
    return _grad_x(ctx, grad_out), None, None, None, None, None


def _from_seeds_backward(ctx, grad_out, grad_mask, grad_count):
    return _grad_x(ctx, grad_out), None, None, None


def _backward_setup_context(ctx, inputs, output):
    _, mask, count, shared = inputs
    ctx.save_for_backward(mask, count)
    ctx.shared_mask = shared


def _backward_backward(ctx, gg):
    mask, count = ctx.saved_tensors
    return torch.ops.wsss_fast.drop_block2d_backward(gg, mask, count, ctx.shared_mask), None, None, None


if _HAS_OP:
    torch.library.register_fake("wsss_fast::drop_block2d", _drop_block2d_fake)
    torch.library.register_fake("wsss_fast::drop_block2d_from_seeds", _from_seeds_fake)
    torch.library.register_fake("wsss_fast::drop_block2d_backward", _backward_fake)
    torch.library.register_autograd(
        "wsss_fast::drop_block2d", _drop_block2d_backward, setup_context=_drop_block2d_setup_context
    )
    torch.library.register_autograd(
        "wsss_fast::drop_block2d_from_seeds", _from_seeds_backward, setup_context=_from_seeds_setup_context
    )
    torch.library.register_autograd(
        "wsss_fast::drop_block2d_backward", _backward_backward, setup_context=_backward_setup_context
    )
