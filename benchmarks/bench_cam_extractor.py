"""CAMExtractor against pytorch-grad-cam 1.5.7 (one call per target class), side by side.

CPU: torchvision ResNet18, target layer4, batch 4, 224 px.
CUDA: torchvision ResNet50, target layer4, batch 16, 512 px.
"one class": one target class per image; "three classes": three per image, which
pytorch-grad-cam needs three calls for (our extractor: one forward, one batched backward).
Also the bare forward + full backward of the model, for scale.

Run: PYTHONPATH=$PWD python -m pytest benchmarks/bench_cam_extractor.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from benchmarks.conftest import DEVICES, record
from wsss_fast.cam import CAMExtractor

N_CLASSES = 20
SETUPS = {"cpu": ("resnet18", 4, 224), "cuda": ("resnet50", 16, 512)}


def _setup(device, n_targets):
    arch, batch, size = SETUPS[device]
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(num_classes=N_CLASSES).to(device).eval()
    x = torch.randn(batch, 3, size, size, device=device)
    targets = [[(3 * b + j) % N_CLASSES for j in range(n_targets)] for b in range(batch)]
    labels = torch.zeros(batch, N_CLASSES, device=device)
    for b, cls in enumerate(targets):
        labels[b, cls] = 1
    return model, x, targets, labels, dict(arch=arch, batch=batch, size=size, classes_per_image=n_targets)


@pytest.mark.parametrize("impl", ["ours", "pytorch_grad_cam", "forward_backward"])
@pytest.mark.parametrize("n_targets", [1, 3], ids=["one_class", "three_classes"])
@pytest.mark.parametrize("device", DEVICES)
def test_cam_extractor(benchmark, device, n_targets, impl):
    model, x, targets, labels, info = _setup(device, n_targets)
    benchmark.group = f"cam_extractor-{device}-{n_targets}cls"
    if impl == "ours":
        ext = CAMExtractor(model, "layer4", "gradcam++")
        record(benchmark, lambda: ext(x, labels).cams, device, **info)
    elif impl == "pytorch_grad_cam":
        from pytorch_grad_cam import GradCAMPlusPlus
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with GradCAMPlusPlus(model=model, target_layers=[model.layer4]) as cam:

            def run():
                return [cam(x, [ClassifierOutputTarget(t[j]) for t in targets]) for j in range(n_targets)]

            if device == "cpu":  # ~0.6 s per call here
                run()
                benchmark.extra_info.update(info)
                benchmark.pedantic(run, rounds=3, iterations=1)
            else:
                record(benchmark, run, device, **info)
    else:

        def fwd_bwd():
            model.zero_grad(set_to_none=True)
            model(x)[:, 0].sum().backward()

        record(benchmark, fwd_bwd, device, **info)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16_channels_last"])
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cam_extractor_paper_cuda(benchmark, precision):
    """make-cam's GPU work at the paper's setting (configs/siim.yaml): the ResNet50 OS8 classifier
    with its conv head, batch 8 at 512 px, Grad-CAM++ at 4 scales + flip; float32 (TF32
    convolutions by default) or bfloat16 autocast (``cam.amp``), the latter also with the model
    and images in channels-last memory format. Per image = the figure / 8."""
    from wsss_fast.cls.model import build_classifier
    from wsss_fast.config import get, load_config

    cfg = load_config("siim", [])
    torch.manual_seed(0)
    model = build_classifier(cfg, load_pretrained=False).cuda().eval()
    x = torch.randn(8, 3, 512, 512, device="cuda")
    if precision.endswith("channels_last"):
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    labels = torch.ones(8, int(get(cfg, "dataset.num_classes")), device="cuda")
    ext = CAMExtractor(model, model.cam_layer, "gradcam++")
    scales = [float(s) for s in get(cfg, "cam.scales")]
    benchmark.group = "cam_extractor-cuda-paper"

    def run():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
            return ext(x, labels, scales=scales, flip=True).high_res

    record(benchmark, run, "cuda", impl=precision, batch=8, size=512, scales=scales, flip=True)
