"""Touch every CUDA kernel once on small, odd shapes, for ``compute-sanitizer``.

    compute-sanitizer --error-exitcode 9 python benchmarks/gpu_sanitize.py

Run by benchmarks/gpu_check.sh when time is left: memcheck catches out-of-bounds and
misaligned accesses that a comparison with the reference can miss.
"""

from __future__ import annotations

import os
import sys

import torch

from wsss_fast.ops.drop_block2d import drop_block2d
from wsss_fast.ops.gradcampp_weights import gradcampp_weights
from wsss_fast.ops.path_affinity import path_affinity
from wsss_fast.ops.random_walk import random_walk
from wsss_fast.ops.weighted_cam import weighted_cam


def main() -> None:
    dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    cuda = dev == "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    for shape, radius, steps in [((1, 1, 3, 7), 5, 3), ((2, 3, 37, 45), 5, 4), ((1, 5, 9, 70), 10, 1)]:
        x = torch.rand(shape, device=dev, generator=g)
        e = torch.rand(shape[0], shape[2], shape[3], device=dev, generator=g)
        random_walk(x, e, radius=radius, steps=steps)
        if cuda:
            random_walk(x.half(), e.half(), radius=radius, steps=steps)
    e = torch.rand(2, 33, 29, device=dev, generator=g, requires_grad=True)
    for r in (1, 5, 10):
        path_affinity(e, r).sum().backward()
    for shape in [(2, 3, 17, 300), (1, 2, 5, 5), (1, 2, 70, 100)]:
        x = torch.randn(shape, device=dev, generator=g, requires_grad=True)
        for bs in (1, 4, 7, 66):  # 66: clipped to min(H, W), or a 3-chunk horizontal window
            for shared in (False, True):
                for mode in ("paper", "simple"):
                    drop_block2d(x, 0.3, bs, shared_mask=shared, gamma_mode=mode).sum().backward()
        xl = x.detach().to(memory_format=torch.channels_last)
        drop_block2d(xl.half() if cuda else xl, 0.3, 3)
        drop_block2d(x.detach().double(), 0.3, 3)
        if cuda:
            drop_block2d(x.detach().half(), 0.3, 3)
    os.environ["WSSS_FAST_DROPBLOCK_INDEX64"] = "1"  # the 64-bit index kernels
    drop_block2d(torch.randn(2, 3, 17, 45, device=dev, generator=g), 0.3, 5)
    del os.environ["WSSS_FAST_DROPBLOCK_INDEX64"]
    a = torch.rand(3, 7, 5, 9, device=dev, generator=g)
    gr = torch.randn(3, 2, 7, 5, 9, device=dev, generator=g)
    for variant in ("paper", "wsmis"):
        w = gradcampp_weights(a, gr, variant=variant)
    weighted_cam(a, w, out_size=(20, 36))
    if cuda:
        weighted_cam(a.half(), w.half())
        torch.cuda.synchronize()
    print("sanitize: all kernels ran")


if __name__ == "__main__":
    main()
