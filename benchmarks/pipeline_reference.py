"""The reference code's per-image cost for three parts of the pipeline (``pipeline_profile.py
--reference``): IRNet's dense random walk, IRNet's IR labels (two pydensecrf CRFs per image) and
pytorch-grad-cam's Grad-CAM++ at the run's scales and flip, each projected to the full SIIM set.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from wsss_fast.config import get

SIIM_IMAGES, SIIM_TRAIN = 12047, 10675


def reference_timings(cfg: dict, device: str, n: int, walk_size: int | None) -> dict:
    """Per-image seconds of the reference implementations of three parts of the pipeline."""
    out = {}
    size = int(get(cfg, "dataset.image_size"))
    dev = torch.device(device)
    # IRNet's dense random walk (torch.matrix_power-style squaring of the dense transition matrix)
    from wsss_fast.reference import random_walk as ref

    walk = size // 4 * int(get(cfg, "sem_seg.upsample"))
    ws = walk if walk_size is None else min(int(walk_size), walk)
    x = torch.rand(1, 2, ws, ws, device=dev)
    edge = torch.rand(1, ws, ws, device=dev)
    steps = get(cfg, "sem_seg.steps")
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ValueError(f"the reference walk is timed at a given length: sem_seg.steps must be a number, got {steps!r}")
    kw = dict(radius=int(get(cfg, "sem_seg.radius")), beta=float(get(cfg, "sem_seg.beta")), steps=steps)
    ref.random_walk(x, edge, **kw)
    _sync(dev)
    t = time.perf_counter()
    for _ in range(max(1, n // 2)):
        ref.random_walk(x, edge, **kw)
    _sync(dev)
    s = (time.perf_counter() - t) / max(1, n // 2)
    out["dense_walk"] = {"map": ws, "seconds": s, "walk_map": walk,
                         "per_image_s": s * (walk / ws) ** 6,  # dense matmuls: (HW)^3
                         "extrapolated": ws != walk, "images": SIIM_IMAGES}
    # IRNet's IR labels: two pydensecrf CRFs per image (confident fg, confident bg), 10 iterations
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_labels

        rng = np.random.default_rng(0)
        img = np.ascontiguousarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        lab = rng.integers(0, 2, (size, size))
        t = time.perf_counter()
        for _ in range(n):
            for _ in range(2):
                d = dcrf.DenseCRF2D(size, size, 2)
                d.setUnaryEnergy(unary_from_labels(lab, 2, gt_prob=0.7, zero_unsure=False))
                d.addPairwiseGaussian(sxy=3, compat=3)
                d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=img, compat=10)
                np.argmax(np.array(d.inference(10)).reshape(2, size, size), axis=0)
        out["pydensecrf_ir_label"] = {"per_image_s": (time.perf_counter() - t) / n, "images": SIIM_TRAIN}
    except ImportError as exc:
        out["pydensecrf_ir_label"] = {"error": str(exc)}
    # pytorch-grad-cam Grad-CAM++: one call per (image, scale, flip), the paper's classifier
    try:
        from pytorch_grad_cam import GradCAMPlusPlus
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
        from wsss_fast.cls.model import build_classifier

        model = build_classifier(cfg, load_pretrained=False).to(dev).eval()
        layer = dict(model.named_modules())[get(cfg, "cam.target_layer") or model.cam_layer]
        scales = [float(s) for s in get(cfg, "cam.scales")]
        flips = (False, True) if get(cfg, "cam.flip") else (False,)
        x = torch.randn(1, 3, size, size, device=dev)
        with GradCAMPlusPlus(model=model, target_layers=[layer]) as cam:
            def one():
                for s in scales:
                    xs = torch.nn.functional.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
                    for f in flips:
                        cam(xs.flip(-1) if f else xs, [ClassifierOutputTarget(0)])
            one()
            _sync(dev)
            t = time.perf_counter()
            for _ in range(n):
                one()
            _sync(dev)
        out["pytorch_grad_cam"] = {"per_image_s": (time.perf_counter() - t) / n, "images": SIIM_IMAGES,
                                   "scales": scales, "flip": len(flips) == 2}
    except ImportError as exc:
        out["pytorch_grad_cam"] = {"error": str(exc)}
    for v in out.values():
        if "per_image_s" in v:
            v["projected_full_s"] = v["per_image_s"] * v["images"]
    return out


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
