"""IRNet's displacement pairs (``wsss_fast.irn.pair_labels.displacement_pairs``, forward and
backward, as train-irn runs them at every step) against IRNet's own way, one slice of the
destinations per search offset (``PathIndex.to_displacement``, Ahn et al., CVPR 2019), and on the
CPU against the indexing the package uses on CUDA (``gather`` is ``torch.gather`` on the CPU).

Radius 10 (152 offsets), the stride-4 map of IRNet's 512-px crop (128 x 128); batch 4 on the
CPU, 32 (siim.yaml's irn.batch_size) on CUDA.

Run: PYTHONPATH=$PWD python -m pytest benchmarks/bench_displacement_pairs.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import DEVICES, record
from wsss_fast import ops
from wsss_fast.irn.pair_labels import _displacement_pairs, displacement_pairs

RADIUS, SIZE = 10, 128
BATCH = {"cpu": 4, "cuda": 32}


def slice_per_offset(dp: torch.Tensor, radius: int) -> torch.Tensor:
    """IRNet's loop: the destinations of offset k are one slice of ``dp``."""
    rp = radius - 1
    b, c, h, w = dp.shape
    ch, cw = h - rp, w - 2 * rp
    dst = torch.stack([dp[:, :, dy:dy + ch, rp + dx:rp + dx + cw] for dy, dx in ops.search_offsets(radius).tolist()],
                      2)
    return (dp[:, :, :ch, rp:rp + cw].unsqueeze(2) - dst).reshape(b, c, dst.shape[2], -1)


@pytest.mark.parametrize("impl", ["gather", "indexing", "slice_per_offset"])
@pytest.mark.parametrize("device", DEVICES)
def test_displacement_pairs(benchmark, device, impl):
    if impl == "indexing" and device != "cpu":
        pytest.skip("off the CPU, gather is this indexing")
    torch.manual_seed(0)
    dp = torch.randn(BATCH[device], 2, SIZE, SIZE, device=device, requires_grad=True)
    fn = {"gather": displacement_pairs, "indexing": lambda d, r: _displacement_pairs(d, r, gather=False),
          "slice_per_offset": slice_per_offset}[impl]
    benchmark.group = f"displacement_pairs-r{RADIUS}-{device}"

    def step():
        out = fn(dp, RADIUS)
        grad, = torch.autograd.grad(out.abs().sum(), dp)
        return grad

    record(benchmark, step, device, impl=impl, batch=BATCH[device], size=SIZE, radius=RADIUS)
