"""Benchmarks of wsss_fast.ops.drop_block2d (fused DropBlock, Ghiasi et al., NeurIPS 2018).

Per-channel masks: ours against ``torchvision.ops.drop_block2d``; shared masks: ours
against the package reference. Forward and forward+backward, CPU (8, 64, 128, 128) and
CUDA (16, 64, 512, 512), p = 0.2, block_size = 7, float32. ``extra_info`` holds the peak
extra memory and ``outputs_mib`` (the output, plus the input gradient for fwd+bwd), so
``peak_extra_mib - outputs_mib`` is the op's own overhead (ours: the keep mask, 1 bit per
element, and during the forward two intermediates of 1 bit per element each).

    PYTHONPATH=$PWD python -m pytest benchmarks/bench_drop_block2d.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import DEVICES, record
from wsss_fast.ops.drop_block2d import drop_block2d
from wsss_fast.reference import drop_block2d as ref

torchvision = pytest.importorskip("torchvision")

P, BS = 0.2, 7
SHAPES = {"cpu": (8, 64, 128, 128), "cuda": (16, 64, 512, 512)}

IMPLS = {
    # (impl, mask) -> callable(x)
    ("ours", "per_channel"): lambda x: drop_block2d(x, P, BS),
    ("torchvision", "per_channel"): lambda x: torchvision.ops.drop_block2d(x, P, BS),
    ("ours", "shared"): lambda x: drop_block2d(x, P, BS, shared_mask=True),
    ("reference", "shared"): lambda x: ref.drop_block2d(x, P, BS, shared_mask=True),
}
CASES = [pytest.param(impl, mask, id=f"{impl}-{mask}") for impl, mask in IMPLS]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("passes", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("impl,mask", CASES)
def test_drop_block2d(benchmark, device, passes, impl, mask):
    torch.manual_seed(0)
    shape = SHAPES[device]
    fn = IMPLS[(impl, mask)]
    x = torch.randn(shape, device=device)
    benchmark.group = f"drop_block2d-{mask}-{passes}-{device}"
    nbytes = x.numel() * x.element_size()
    if passes == "fwd":
        run = lambda: fn(x)  # noqa: E731
        outputs = nbytes
    else:
        x.requires_grad_(True)
        g = torch.randn_like(x)

        def run():
            return torch.autograd.grad(fn(x), x, g)[0]

        outputs = 2 * nbytes
    record(benchmark, run, device, shape=list(shape), p=P, block_size=BS, dtype="float32",
           outputs_mib=round(outputs / 2**20, 2))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["ours", "torch_mul"])
def test_drop_block2d_apply(benchmark, device, impl):
    """The backward alone (grad * keep * scale) against ``grad * 1.5``, PyTorch's own
    elementwise kernel over the same bytes: how close the apply pass is to a plain copy,
    and, with the fwd rows, how much of the forward the mask construction takes."""
    torch.manual_seed(0)
    shape = SHAPES[device]
    x = torch.randn(shape, device=device)
    g = torch.randn_like(x)
    seed = torch.tensor([1, 2], dtype=torch.int64, device=device)
    p = torch.tensor(P, dtype=torch.float64, device=device)
    _, mask, count = torch.ops.wsss_fast.drop_block2d(x, seed, p, BS, False, "paper")
    benchmark.group = f"drop_block2d-apply-{device}"
    if impl == "ours":
        run = lambda: torch.ops.wsss_fast.drop_block2d_backward(g, mask, count, False)  # noqa: E731
    else:
        run = lambda: g * 1.5  # noqa: E731
    record(benchmark, run, device, shape=list(shape), dtype="float32",
           outputs_mib=round(x.numel() * x.element_size() / 2**20, 2))
