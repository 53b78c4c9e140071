"""Dense CRF refinement of label maps, with input validation.

A thin, checked wrapper of ``pydensecrf`` (the ``pydensecrf2`` distribution), following
IRNet's ``imutils.crf_inference_label`` (Ahn et al., "Weakly Supervised Learning of
Instance Segmentation with Inter-pixel Relations", CVPR 2019), which in turn uses the
fully-connected CRF of Krähenbühl & Koltun (NeurIPS 2011).

IRNet's spatial widths (``gauss_sxy`` 3, ``bilateral_sxy`` 50) are in pixels of PASCAL VOC
images, whose longer side is about 500 px. At another working resolution the same numbers
mean a different smoothing (at 128 px, a bilateral width of 50 px spans most of the image
and the CRF relabels whole bodies: measured on the synthetic radiographs, the confident
background of positive images vanished). The widths are therefore scaled by
``max(H, W) / reference_size`` (``reference_size`` 500; ``None`` uses them as given).

pydensecrf silently produces garbage for a float image, a CHW image or a non-contiguous
array; :func:`crf_inference_label` checks everything first and raises a clear error.

Two backends compute the same CRF (``ir_label.crf.backend``): ``wsss_fast`` runs the compiled
:func:`wsss_fast.ops.dense_crf_unary` (CPU or CUDA, several label maps of an image in one
call), ``pydensecrf`` the library; ``auto`` picks the compiled op when it is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..engine.transfer import HostCopy, to_device

BACKENDS = ("auto", "wsss_fast", "pydensecrf")


@dataclass(frozen=True)
class CRFParams:
    """Parameters of the dense CRF (IRNet's defaults).

    ``gauss_sxy`` and ``bilateral_sxy`` are in pixels of an image whose longer side is
    ``reference_size`` and are scaled to the actual image (None: used as given).
    """

    iterations: int = 10
    gauss_sxy: float = 3
    gauss_compat: float = 3
    bilateral_sxy: float = 50
    bilateral_srgb: float = 5
    bilateral_compat: float = 10
    gt_prob: float = 0.7
    reference_size: float | None = 500.0

    def spatial_scale(self, h: int, w: int) -> float:
        """Factor applied to ``gauss_sxy`` and ``bilateral_sxy`` for an ``h x w`` image."""
        if self.reference_size is None:
            return 1.0
        if self.reference_size <= 0:
            raise ValueError(f"ir_label.crf.reference_size must be > 0 or null, got {self.reference_size}")
        return max(int(h), int(w)) / float(self.reference_size)

    @classmethod
    def from_cfg(cls, crf_cfg: dict | None) -> "CRFParams":
        """Build from the ``ir_label.crf`` config section (unknown keys are an error)."""
        crf_cfg = dict(crf_cfg or {})
        crf_cfg.pop("enabled", None)
        crf_cfg.pop("backend", None)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(crf_cfg) - known)
        if unknown:
            raise KeyError(f"ir_label.crf: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**crf_cfg)


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Return a C-contiguous uint8 ``[H, W, 3]`` copy of a grayscale or RGB image.

    Args:
        img: uint8 ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` (grayscale is stacked to 3 channels).

    Raises:
        TypeError: if the dtype is not uint8 (pass pixel values in 0..255, not normalized floats).
        ValueError: for any other shape.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"CRF image must be uint8 with values 0..255, got dtype {img.dtype}")
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"CRF image must be [H, W], [H, W, 1] or [H, W, 3] (channels last), got shape "
                         f"{tuple(img.shape)}")
    return np.ascontiguousarray(img)


def validate_crf_inputs(img: np.ndarray, labels: np.ndarray, n_labels: int) -> None:
    """Check the arrays exactly as pydensecrf needs them; raise a clear error otherwise.

    Args:
        img: uint8 ``[H, W, 3]`` C-contiguous RGB image.
        labels: integer ``[H, W]`` label map with values in ``[0, n_labels)``.
        n_labels: number of labels (>= 1).
    """
    if not isinstance(img, np.ndarray) or not isinstance(labels, np.ndarray):
        raise TypeError(f"CRF inputs must be numpy arrays, got image {type(img).__name__} and labels "
                        f"{type(labels).__name__}")
    if img.dtype != np.uint8:
        raise TypeError(f"CRF image must be uint8, got dtype {img.dtype}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"CRF image must be [H, W, 3] (channels last), got shape {tuple(img.shape)}")
    if not img.flags["C_CONTIGUOUS"]:
        raise ValueError("CRF image must be C-contiguous (use np.ascontiguousarray)")
    if labels.ndim != 2:
        raise ValueError(f"CRF labels must be [H, W], got shape {tuple(labels.shape)}")
    if labels.shape != img.shape[:2]:
        raise ValueError(f"CRF labels shape {tuple(labels.shape)} does not match image shape "
                         f"{tuple(img.shape[:2])}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"CRF labels must be integers, got dtype {labels.dtype}")
    if int(n_labels) < 1:
        raise ValueError(f"n_labels must be >= 1, got {n_labels}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"CRF labels must lie in [0, {n_labels}), got range "
                         f"[{labels.min()}, {labels.max()}]")


def crf_inference_label(img: np.ndarray, labels: np.ndarray, n_labels: int,
                        params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine a hard label map with a dense CRF (IRNet's ``crf_inference_label``).

    Args:
        img: uint8 ``[H, W, 3]`` C-contiguous RGB image (see :func:`to_rgb_uint8`).
        labels: integer ``[H, W]`` map in ``[0, n_labels)``.
        n_labels: number of labels.
        params: CRF parameters.

    Returns:
        int64 ``[H, W]`` refined label map.
    """
    validate_crf_inputs(img, labels, n_labels)
    if n_labels == 1 or labels.size == 0:
        return np.zeros(labels.shape, dtype=np.int64)
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_labels

    h, w = labels.shape
    d = dcrf.DenseCRF2D(w, h, int(n_labels))
    unary = unary_from_labels(labels.astype(np.int64), int(n_labels), gt_prob=params.gt_prob,
                              zero_unsure=False)
    d.setUnaryEnergy(np.ascontiguousarray(unary))
    scale = params.spatial_scale(h, w)
    d.addPairwiseGaussian(sxy=params.gauss_sxy * scale, compat=params.gauss_compat)
    if not img.flags["WRITEABLE"]:  # pydensecrf's memoryview rejects read-only buffers
        img = img.copy()
    d.addPairwiseBilateral(sxy=params.bilateral_sxy * scale, srgb=params.bilateral_srgb, rgbim=img,
                           compat=params.bilateral_compat)
    q = d.inference(int(params.iterations))
    return np.argmax(np.array(q).reshape((n_labels, h, w)), axis=0)


def resolve_backend(name: str) -> str:
    """``wsss_fast`` or ``pydensecrf`` for ``ir_label.crf.backend`` (``auto``: the compiled op when built)."""
    if name not in BACKENDS:
        raise ValueError(f"ir_label.crf.backend must be one of {list(BACKENDS)}, got {name!r}")
    if name == "auto":
        from .. import _ext

        return "wsss_fast" if _ext.has_op("dense_crf") else "pydensecrf"
    return name


def crf_inference_labels(img: np.ndarray, labels: np.ndarray, n_labels: int, params: CRFParams = CRFParams(),
                         backend: str = "pydensecrf", device: str | torch.device = "cpu") -> np.ndarray:
    """Refine K label maps of one image with the dense CRF (:func:`crf_inference_label` each).

    Args:
        img: uint8 ``[H, W, 3]`` C-contiguous RGB image.
        labels: integer ``[K, H, W]`` maps in ``[0, n_labels)``.
        n_labels: number of labels.
        params: CRF parameters.
        backend: ``wsss_fast`` (the K maps in one call of the compiled op on ``device``) or
            ``pydensecrf`` (one library call per map).
        device: where the ``wsss_fast`` backend runs.

    Returns:
        int64 ``[K, H, W]`` refined label maps.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"CRF labels must be [K, H, W], got shape {tuple(labels.shape)}")
    for lab in labels:
        validate_crf_inputs(img, lab, n_labels)
    if backend == "pydensecrf":
        return np.stack([crf_inference_label(img, lab, n_labels, params) for lab in labels]) if len(labels) else \
            np.zeros(labels.shape, dtype=np.int64)
    if backend != "wsss_fast":
        raise ValueError(f"CRF backend must be 'wsss_fast' or 'pydensecrf', got {backend!r}")
    if n_labels == 1 or labels.size == 0:
        return np.zeros(labels.shape, dtype=np.int64)
    return crf_inference_many([img], [labels], n_labels, params, device)[0].astype(np.int64)


def crf_inference_many(imgs: list[np.ndarray | torch.Tensor], labels: list[np.ndarray | torch.Tensor],
                       n_labels: int, params: CRFParams = CRFParams(),
                       device: str | torch.device = "cpu") -> list[np.ndarray]:
    """The compiled CRF on the label maps of several images in ONE call (a batch of all maps).

    :func:`crf_queue_many`, then its wait.

    Args:
        imgs: uint8 ``[H, W, 3]`` images (arrays or CPU tensors), all of one size.
        labels: integer ``[K_i, H, W]`` maps of each image, in ``[0, n_labels)``.
        n_labels: number of labels (the same for every image: it sets the unaries).
        params: CRF parameters; device: where the op runs.

    Returns:
        ``[K_i, H, W]`` refined maps per image (each map as :func:`crf_inference_label` alone),
        uint8 for ``n_labels`` <= 256, else int64.
    """
    return [m.numpy() for m in crf_queue_many(imgs, labels, n_labels, params, device).wait()]


def crf_queue_many(imgs: list[np.ndarray | torch.Tensor], labels: list[np.ndarray | torch.Tensor],
                   n_labels: int, params: CRFParams = CRFParams(),
                   device: str | torch.device = "cpu") -> HostCopy:
    """Queue the compiled CRF on the label maps of several images, in one call, and the copy of
    its refined maps to the host (:class:`~wsss_fast.engine.transfer.HostCopy`).

    The maps travel to ``device`` in their own integer dtype (make-ir-label's are uint8) and come
    back as uint8 when ``n_labels`` <= 256; on a GPU, CPU tensors from pinned memory (the
    loader's) are copied without a wait. On a GPU the host still waits inside the call for the
    label range (one read) and each lattice's size, not for the mean-field iterations or the copy.

    Args: as :func:`crf_inference_many`.

    Returns:
        A :class:`~wsss_fast.engine.transfer.HostCopy` of the ``[K_i, H, W]`` maps of each image:
        its ``wait()`` gives :func:`crf_inference_many`'s maps as CPU tensors.
    """
    from ..ops.dense_crf import dense_crf_unary, unary_from_labels

    out_torch = torch.uint8 if n_labels <= 256 else torch.int64
    counts = [int(lab.shape[0]) for lab in labels]
    if not imgs or sum(counts) == 0 or n_labels == 1:
        return HostCopy([torch.zeros(tuple(lab.shape), dtype=out_torch) for lab in labels])
    h, w = imgs[0].shape[:2]
    if any(tuple(im.shape[:2]) != (h, w) for im in imgs):
        raise ValueError(f"crf_queue_many: imgs must be of one size only, got "
                         f"{sorted({tuple(im.shape[:2]) for im in imgs})}")
    device = torch.device(device)
    lab = torch.cat([to_device(_tensor(x), device) for x in labels]).long()
    unary = unary_from_labels(lab, int(n_labels), params.gt_prob, zero_unsure=False)
    image = torch.stack([to_device(_tensor(im), device) for im in imgs])
    per_map = to_device(torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)), device)
    image = image.permute(0, 3, 1, 2)[per_map].contiguous()  # each image once per map
    scale = params.spatial_scale(h, w)
    q = dense_crf_unary(unary, image, gaussian_sxy=params.gauss_sxy * scale, gaussian_compat=params.gauss_compat,
                        bilateral_sxy=params.bilateral_sxy * scale, bilateral_srgb=params.bilateral_srgb,
                        bilateral_compat=params.bilateral_compat, iterations=int(params.iterations))
    return HostCopy(list(q.argmax(1).to(out_torch).split(counts)))


def _tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A CPU tensor of ``x`` (a tensor as is; an array shared, copied only when read-only)."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.require(x, requirements="W"))
