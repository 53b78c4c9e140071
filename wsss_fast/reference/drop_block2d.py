"""Pure-PyTorch reference of :func:`wsss_fast.ops.drop_block2d`.

DropBlock: Ghiasi, Lin and Le, "DropBlock: A regularization method for convolutional
networks", NeurIPS 2018 (https://arxiv.org/abs/1810.12890).

The reference draws the same seed tensor from the generator as the compiled op and
reproduces its seed draw (``csrc/common/drop_block2d_common.h``: a counter-based hash,
sampled word by word as geometric gaps between seeds) with int64 tensor arithmetic, so for
the same generator state it returns bit-for-bit the same result. The block mask is a
max-pool of the padded seed grid (the same construction as ``torchvision.ops.drop_block2d``),
which is slow but obviously right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "drop_block2d",
    "drop_block2d_from_seeds",
    "seed_grid",
    "seed_grid_shape",
    "keep_mask_from_seeds",
    "draw_seed",
    "geometry",
    "seed_gamma",
    "gap_table",
]

_M32 = 0xFFFFFFFF
GAMMA_MODES = ("paper", "simple")


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 ``x`` in [0, 2^32) without int64 overflow."""
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def _triple32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 17)
    x = _mul32(x, 0xED5AD4BB)
    x = x ^ (x >> 11)
    x = _mul32(x, 0xAC4C1B51)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x31848BAB)
    return x ^ (x >> 14)


def _pos_hash(pos: torch.Tensor, ka: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
    x = pos ^ ka
    x = x ^ (x >> 17)
    x = _mul32(x, 0xED5AD4BB)
    x = x ^ kb
    x = x ^ (x >> 11)
    x = _mul32(x, 0xAC4C1B51)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x31848BAB)
    return x ^ (x >> 14)


def geometry(H: int, W: int, block_size: int, gamma_mode: str) -> tuple[int, int, int]:
    """Seed-grid height, width and the row/column shift of a gamma mode.

    Returns:
        ``(Hs, Ws, shift)``: seeds live on an ``Hs x Ws`` grid and output row ``r`` is
        dropped iff a seed row ``a`` with ``r - bs + 1 + shift <= a <= r + shift`` fires.
    """
    if gamma_mode == "paper":
        return H - block_size + 1, W - block_size + 1, 0
    return H, W, (block_size - 1) // 2


def seed_grid_shape(x_shape, block_size: int, shared_mask: bool, gamma_mode: str) -> tuple[int, ...]:
    """Shape ``[N, C or 1, Hs, Ws]`` of the seed grid for an input of ``x_shape``."""
    N, C, H, W = x_shape
    Hs, Ws, _ = geometry(H, W, block_size, gamma_mode)
    return (N, 1 if shared_mask else C, Hs, Ws)


def draw_seed(device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw the int64[2] seed tensor (two 32-bit words) from ``generator`` on ``device``."""
    gen_device = generator.device if generator is not None else device
    seed = torch.randint(0, 2**32, (2,), dtype=torch.int64, device=gen_device, generator=generator)
    return seed.to(device)


def seed_gamma(p: float, H: int, W: int, block_size: int, Hs: int, Ws: int) -> float:
    """Seed rate ``p * H * W / (bs^2 * Hs * Ws)`` in the kernels' order of double operations
    (0 for ``p <= 0`` or NaN)."""
    if not p > 0.0:
        return 0.0
    return (p * float(H * W)) / float(block_size * block_size * Hs * Ws)


def gap_table(gamma: float) -> list[int]:
    """``T[k] = floor(2^32 (1 - (1 - gamma)^k))`` for ``k = 0 .. 32`` (the powers by repeated
    multiplication, as the kernels compute them).

    From column offset ``i`` of a seed word with ``n`` columns, one hash ``u`` puts the next
    seed at ``i + d`` for the smallest ``d`` with ``u < T[d + 1]``, or none when
    ``u >= T[n - i]``: gap ``d`` has probability ``gamma (1 - gamma)^d``.
    """
    q = 0.0 if gamma >= 1.0 else 1.0 - gamma
    table, qk = [0], 1.0
    for _ in range(32):
        qk = qk * q
        table.append(int((1.0 - qk) * 4294967296.0) if gamma > 0.0 else 0)
    return table


def seed_grid(
    seed: torch.Tensor, shape: tuple[int, int, int, int], p: float | torch.Tensor, H: int, W: int,
    block_size: int,
) -> torch.Tensor:
    """Bernoulli(gamma) seed grid of ``shape = [N, M, Hs, Ws]`` from the seed tensor.

    Each 32-column word of a seed row is drawn as geometric gaps (see :func:`gap_table`):
    every step hashes the position where the search starts, all words in parallel.

    Args:
        seed: int64 ``[2]``, two 32-bit key words.
        shape: ``(N, M, Hs, Ws)``; map ``m = n * M + c``.
        p: drop probability (float or 0-dim tensor).
        H, W: input height and width; block_size: the (clipped) block size.

    Returns:
        bool ``[N, M, Hs, Ws]``.
    """
    N, M, Hs, Ws = shape
    dev = seed.device
    p_f = float(p.item()) if isinstance(p, torch.Tensor) else float(p)
    table = torch.tensor(gap_table(seed_gamma(p_f, H, W, block_size, Hs, Ws)), dtype=torch.int64, device=dev)
    k = seed.to(torch.int64) & _M32
    maps = torch.arange(N * M, dtype=torch.int64, device=dev)
    ka = _triple32(_triple32(maps ^ k[0]) ^ k[1])
    kb = _triple32(ka ^ 0x9E3779B9)
    nsw = (Ws + 31) // 32
    # one entry per (map, seed row, word): its map, first position a * Ws + 32 k, width n
    word_map = maps.repeat_interleave(Hs * nsw)
    kw = torch.arange(nsw, dtype=torch.int64, device=dev)
    start = (torch.arange(Hs, dtype=torch.int64, device=dev)[:, None] * Ws + 32 * kw[None, :]).reshape(-1)
    start = start.repeat(N * M)
    width = torch.clamp(Ws - 32 * kw, max=32).repeat(N * M * Hs)
    bits = torch.zeros_like(start)
    offset = torch.zeros_like(start)  # column offset i of the next search
    live = torch.arange(start.numel(), device=dev) if table[-1] > 0 else start.new_empty(0)
    while live.numel() > 0:
        i, n, mw = offset[live], width[live], word_map[live]
        u = _pos_hash((start[live] + i) & _M32, ka[mw], kb[mw])
        seeded = table[n - i] > u
        d = torch.searchsorted(table[1:], u, right=True)  # smallest d with u < T[d + 1]
        pos = i + d
        live, pos = live[seeded], pos[seeded]
        bits[live] |= torch.ones_like(pos) << pos
        offset[live] = pos + 1
        live = live[pos + 1 < width[live]]
    grid = (bits.reshape(N * M, Hs, nsw, 1) >> torch.arange(32, dtype=torch.int64, device=dev)) & 1
    return grid.reshape(N, M, Hs, 32 * nsw)[..., :Ws] != 0


def keep_mask_from_seeds(seeds: torch.Tensor, H: int, W: int, block_size: int, gamma_mode: str) -> torch.Tensor:
    """Keep mask (bool ``[N, M, H, W]``) of the block geometry of ``gamma_mode``."""
    bs = block_size
    s = (seeds != 0).to(torch.float32)
    if gamma_mode == "paper":
        pad = (bs - 1, bs - 1, bs - 1, bs - 1)
    else:
        lo, hi = (bs - 1) // 2, bs // 2
        pad = (hi, lo, hi, lo)
    dropped = F.max_pool2d(F.pad(s, pad), kernel_size=bs, stride=1)
    return dropped[:, :, :H, :W] == 0


def _apply(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    count = int(keep.sum())
    scale = keep.numel() / count if count > 0 else 0.0
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    factor = keep.to(acc) * scale
    return (x.to(acc) * factor).to(x.dtype)


def drop_block2d_from_seeds(
    x: torch.Tensor, seeds: torch.Tensor, block_size: int, gamma_mode: str = "paper"
) -> torch.Tensor:
    """DropBlock with an explicit seed grid.

    Args:
        x: ``[N, C, H, W]`` floating tensor.
        seeds: ``[N, C or 1, Hs, Ws]``, nonzero = seed; one channel means a shared mask.
            ``Hs, Ws = H - bs + 1, W - bs + 1`` for ``"paper"``, ``H, W`` for ``"simple"``.
        block_size: block size, at most ``min(H, W)`` (callers clip).
        gamma_mode: ``"paper"`` (seed = top-left corner) or ``"simple"`` (centred seed).

    Returns:
        ``[N, C, H, W]``: ``x * keep * numel(keep) / sum(keep)`` (zeros when all dropped).
    """
    if x.numel() == 0:
        return x.clone()
    H, W = x.shape[-2:]
    keep = keep_mask_from_seeds(seeds, H, W, block_size, gamma_mode)
    return _apply(x, keep)


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
    """Reference DropBlock; same signature and same random stream as the public op.

    Args:
        x: ``[N, C, H, W]`` floating tensor.
        p: drop probability in ``[0, 1]``.
        block_size: block size (clipped to ``min(H, W)``).
        shared_mask: one mask per sample shared by all channels.
        gamma_mode: ``"paper"`` or ``"simple"``.
        training: identity when False.
        generator: source of the seed.

    Returns:
        ``[N, C, H, W]``.
    """
    if not training or (not isinstance(p, torch.Tensor) and p == 0):
        return x
    N, C, H, W = x.shape
    bs = max(1, min(int(block_size), H, W))
    seed = draw_seed(x.device, generator)
    shape = seed_grid_shape(x.shape, bs, shared_mask, gamma_mode)
    seeds = seed_grid(seed, shape, p, H, W, bs)
    return drop_block2d_from_seeds(x, seeds, bs, gamma_mode)
