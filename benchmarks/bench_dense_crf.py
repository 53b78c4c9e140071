"""Benchmarks of dense_crf against pydensecrf (IRNet's kernels, 10 mean-field iterations).

Groups put ours and pydensecrf side by side, so the table's ratios are the speed-ups:
  - 512 x 512 grey chest-like image, 2 labels; 500 x 375 RGB image, 21 labels (VOC's size);
  - CPU: one image on one thread; a batch of 8 on all threads against 8 pydensecrf calls;
  - CUDA: a batch of 16 (per-image time = the figure / 16). Peak extra memory is stored in
    extra_info (``peak_extra_mib``).

    PYTHONPATH=$PWD python -m pytest benchmarks/bench_dense_crf.py --benchmark-only
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsss_fast.data.synthetic import generate_image
from wsss_fast.ops.dense_crf import dense_crf_unary

from .conftest import CUDA, peak_extra_memory, record, sync

try:  # the oracle; its benchmarks skip where it is not installed, ours still run
    import pydensecrf.densecrf as dcrf
except ImportError:
    dcrf = None
needs_pydensecrf = pytest.mark.skipif(dcrf is None, reason="pydensecrf (pydensecrf2) is not installed")

IRNET = dict(gaussian_sxy=3.0, gaussian_compat=3.0, bilateral_sxy=50.0, bilateral_srgb=5.0, bilateral_compat=10.0,
             iterations=10)


def _natural(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([60 + 80 * yy / h, 90 + 60 * xx / w, 120 - 40 * yy / h], -1)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 120)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _case(kind, batch, seed=0):
    """(unary [B, L, H, W] float32, image [B, C, H, W] uint8, rgb list of [H, W, 3] for pydensecrf)."""
    if kind == "chest":
        n_labels = 2
        imgs = [generate_image(seed + i, image_size=512, seed=1, positive=True)[0] for i in range(batch)]
        rgb = [np.ascontiguousarray(np.repeat(im[..., None], 3, 2)) for im in imgs]
        image = torch.from_numpy(np.stack(imgs))[:, None]
    else:
        n_labels = 21
        rgb = [_natural(375, 500, seed + i) for i in range(batch)]
        image = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2)
    h, w = image.shape[-2:]
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, n_labels, h // 16, w // 16, generator=g) * 3
    probs = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(1)
    unary = -torch.log(probs.clamp(1e-5, 1.0))
    return unary.contiguous(), image.contiguous(), rgb


def _pydensecrf(unary, rgb):
    n_labels, h, w = unary.shape
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary.reshape(n_labels, -1)))
    d.addPairwiseGaussian(sxy=IRNET["gaussian_sxy"], compat=IRNET["gaussian_compat"])
    d.addPairwiseBilateral(sxy=IRNET["bilateral_sxy"], srgb=IRNET["bilateral_srgb"], rgbim=rgb,
                           compat=IRNET["bilateral_compat"])
    return np.array(d.inference(IRNET["iterations"]))


def _pydensecrf_all(benchmark, unary, rgb, rounds=2, **info):
    u = unary.numpy()
    benchmark.extra_info.update(info, impl="pydensecrf")
    benchmark.pedantic(lambda: [_pydensecrf(u[i], rgb[i]) for i in range(len(rgb))], rounds=rounds, iterations=1,
                       warmup_rounds=0)


@pytest.fixture
def threads(request):
    n = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(n)


# --- CPU, one image on one thread ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["chest", "voc"])
@pytest.mark.parametrize("threads", [1], indirect=True)
def test_dense_crf_cpu_one_image_ours(benchmark, kind, threads):
    unary, image, _ = _case(kind, 1)
    benchmark.group = f"dense_crf-cpu-1-image-1-thread-{kind}"
    record(benchmark, lambda: dense_crf_unary(unary, image, **IRNET), "cpu", impl="wsss_fast", threads=threads)


@pytest.mark.parametrize("kind", ["chest", "voc"])
@needs_pydensecrf
def test_dense_crf_cpu_one_image_pydensecrf(benchmark, kind):
    unary, _, rgb = _case(kind, 1)
    benchmark.group = f"dense_crf-cpu-1-image-1-thread-{kind}"
    _pydensecrf_all(benchmark, unary, rgb)


# --- CPU, a batch of 8 on all threads (2 here) against 8 sequential pydensecrf calls -------------


@pytest.mark.parametrize("kind", ["chest"])
def test_dense_crf_cpu_batch8_ours(benchmark, kind):
    unary, image, _ = _case(kind, 8)
    benchmark.group = f"dense_crf-cpu-batch-8-{kind}"
    record(benchmark, lambda: dense_crf_unary(unary, image, **IRNET), "cpu", impl="wsss_fast",
           threads=torch.get_num_threads())


@pytest.mark.parametrize("kind", ["chest"])
@needs_pydensecrf
def test_dense_crf_cpu_batch8_pydensecrf(benchmark, kind):
    unary, _, rgb = _case(kind, 8)
    benchmark.group = f"dense_crf-cpu-batch-8-{kind}"
    _pydensecrf_all(benchmark, unary, rgb)


# --- CUDA, a batch of 16 (goals: <= 10 ms per 512^2 2-label image, <= 30 ms per VOC image) ------


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("kind", ["chest", "voc"])
def test_dense_crf_cuda_batch16_ours(benchmark, kind):
    unary, image, _ = _case(kind, 16)
    unary, image = unary.cuda(), image.cuda()
    benchmark.group = f"dense_crf-cuda-batch-16-{kind}"
    record(benchmark, lambda: dense_crf_unary(unary, image, **IRNET), "cuda", impl="wsss_fast", batch=16)


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("kind", ["chest", "voc"])
@needs_pydensecrf
def test_dense_crf_cuda_batch16_pydensecrf(benchmark, kind):
    """The same 16 images through pydensecrf, one after another on one core, beside ours on the
    GPU (one round: about 16 s and 37 s on this repository's 2-core machine)."""
    unary, _, rgb = _case(kind, 16)
    benchmark.group = f"dense_crf-cuda-batch-16-{kind}"
    _pydensecrf_all(benchmark, unary, rgb, rounds=1, batch=16)


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("kind", ["chest", "voc"])
def test_dense_crf_cuda_batch16_agrees_with_cpu(kind):
    """Not a timing: the batch's CUDA marginals against the CPU kernel's (argmax and mean |dQ|)."""
    unary, image, _ = _case(kind, 16)
    cpu = dense_crf_unary(unary[:2], image[:2], **IRNET)
    cuda = dense_crf_unary(unary.cuda(), image.cuda(), **IRNET)[:2].cpu()
    sync("cuda")
    assert (cpu.argmax(1) == cuda.argmax(1)).float().mean() >= 0.999
    assert (cpu - cuda).abs().mean() <= 1e-3
    assert peak_extra_memory(lambda: dense_crf_unary(unary.cuda(), image.cuda(), **IRNET), "cuda") > 0
