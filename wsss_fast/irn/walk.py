"""IRNet's random walk for a batch of images (Ahn, Cho and Kwak, "Weakly Supervised Learning of
Instance Segmentation with Inter-pixel Relations", CVPR 2019, ``make_sem_seg_labels``).

The class-boundary map (the mean of the image's and its flip's logits, through a sigmoid, over
``sem_seg.scales``) defines inter-pixel affinities; the stride-4 CAMs are propagated by a
random walk over them (:func:`wsss_fast.ops.random_walk`), upsampled x4 and divided by their
maximum; a constant background score turns them into labels. Images of one working size share
a forward pass and one walk call, each with its own boundary map; CAMs with fewer classes are
zero-padded (zeros stay zero under the walk); images without classes get empty maps and no
network. :mod:`wsss_fast.irn.sem_seg` runs this over data sets (make-sem-seg, its choice of the
walk on val, eval-sem-seg).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .. import ops
from ..config import get
from ..engine.files import load_cam_file
from ..engine.paths import RunPaths
from ..engine.transfer import to_device, to_host
from ..metrics.segmentation import best_and_label
from .model import EdgeDisplacement

__all__ = ["labels_from_soft", "walk_image"]


def labels_from_soft(rw: np.ndarray | torch.Tensor, keys: np.ndarray, bg_thres: float,
                     size: tuple[int, int] | None = None) -> np.ndarray:
    """Pseudo label from normalized soft maps: bg where every class is <= ``bg_thres``.

    Args:
        rw: ``[K, H, W]`` soft maps in [0, 1].
        keys: ``[K]`` 0-based class indices of the channels.
        bg_thres: background score.
        size: output ``(H0, W0)``; the maps are resized bilinearly first (None: as is).

    Returns:
        uint8 ``[H0, W0]``: 0 background, c + 1 class c.
    """
    return _labels(rw, keys, bg_thres, size).cpu().numpy()


def _labels(rw: torch.Tensor, keys: np.ndarray, bg_thres: float, size: tuple[int, int] | None) -> torch.Tensor:
    """:func:`labels_from_soft` on the maps' device, uint8 ``[H0, W0]`` (a GPU's resize may round otherwise)."""
    best, label = best_and_label(rw, keys, size)
    return torch.where(best > float(bg_thres), label, 0).to(torch.uint8)


class _InferDataset(Dataset):
    """The walk's inputs of the given indices: ``image`` ``[3, H, W]`` at the working
    resolution (None for an image without classes, which is not read: its empty maps take the
    working size ``size`` from its CAM file), ``cam``, ``keys``, ``id``, ``index``, ``orig_size``;
    with ``with_mask`` also ``gt``, the ground truth ``[H0, W0]`` (None where there is none)."""

    def __init__(self, base, paths: RunPaths, indices: list[int], with_mask: bool = False):
        from ..data import without_masks

        self.base, self.paths, self.indices = without_masks(base), paths, indices
        self.masks = base if with_mask else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict:
        i = self.indices[j]
        image_id = str(self.base.image_ids[i])
        cam = load_cam_file(self.paths.cam_file(image_id))
        keys = np.asarray(cam["keys"], dtype=np.int64)
        if keys.size == 0:
            image, size, orig = None, np.asarray(cam["high_res"]).shape[-2:], self.base.original_size(i)
        else:
            item = self.base[i]
            image, size, orig = item["image"], item["image"].shape[-2:], item["orig_size"]
        out = {"id": image_id, "index": i, "keys": keys, "cam": torch.from_numpy(np.asarray(cam["cam"], np.float32)),
               "image": image, "size": tuple(int(s) for s in size), "orig_size": tuple(int(s) for s in orig)}
        if self.masks is not None:
            gt = self.masks.load_mask(i)
            out["gt"] = None if gt is None else torch.from_numpy(np.require(gt, requirements=["C", "W"]))
        return out


def _workers(cfg: dict) -> int:
    """Loader processes of the walk (``sem_seg.workers``, or ``num_workers`` when null)."""
    workers = get(cfg, "sem_seg.workers")
    return int(get(cfg, "num_workers")) if workers is None else int(workers)


def _stride4(n: int) -> int:
    """Size of a side of ``n`` pixels on IRNet's stride-4 grid (CAM 'cam', boundary map)."""
    return (n + 3) // 4


def walk_image(cfg: dict, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The images ``[B, 3, H, W]`` the boundary branch sees for the walk, and the factor.

    ``sem_seg.upsample`` > 1 runs the walk on a finer grid (stride 4 of the upsampled image),
    for images whose lesions are only a few stride-4 cells wide; the CAMs are interpolated
    onto it.
    """
    up = max(1, int(get(cfg, "sem_seg.upsample")))
    if up > 1:
        x = F.interpolate(x, scale_factor=up, mode="bilinear", align_corners=False)
    return x, up


def _edges(model: EdgeDisplacement, x: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """Boundary map ``[B, h, w]`` (stride 4), averaged over scales (each: image + flip)."""
    h, w = _stride4(x.shape[-2]), _stride4(x.shape[-1])
    acc = None
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
        e, _ = model(xs)
        if e.shape[-2:] != (h, w):
            e = F.interpolate(e[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0]
        acc = e if acc is None else acc + e
    return acc / len(scales)


@torch.no_grad()
def _walk_soft(model: EdgeDisplacement, items: list[dict], cfg: dict, device: torch.device,
               steps: list[int], masks: tuple[bool, ...] = (True,),
               host: bool = True) -> dict[tuple[bool, int], list[torch.Tensor]]:
    """Normalized walk maps of a batch for each edge mask and number of steps (one boundary map for all).

    Images without classes get empty maps and no network: the boundary branch and the walk
    see the others only.

    Returns:
        ``{(mask_edge, steps): [fp16 [K_b, H, W] per item]}``: the walked CAMs at the working
        resolution, divided by their maximum (the stored ``rw/<id>.npy``); on the CPU, or on
        ``device`` with ``host=False``.
    """
    pos = [b for b, it in enumerate(items) if it["cam"].shape[0] > 0]
    walked = _walk_classes(model, [items[b] for b in pos], cfg, device, steps, masks) if pos else {}
    H, W = items[0]["size"]
    out = {}
    for key in ((bool(m), int(n)) for m in masks for n in sorted({int(s) for s in steps})):
        softs = [torch.zeros((0, H, W), dtype=torch.float16, device=device) for _ in items]
        for b, soft in zip(pos, walked.get(key, [])):
            softs[b] = soft
        out[key] = to_host(softs) if host else softs
    return out


def _walk_classes(model: EdgeDisplacement, items: list[dict], cfg: dict, device: torch.device,
                  steps: list[int], masks: tuple[bool, ...]) -> dict[tuple[bool, int], list[torch.Tensor]]:
    """:func:`_walk_soft` of images that have classes, on ``device``."""
    # from pinned memory (the loader's, on a GPU): queued copies, stacked on the device
    x = torch.stack([to_device(it["image"], device) for it in items])
    H, W = x.shape[-2:]
    xe, up = walk_image(cfg, x)
    edge = _edges(model, xe, [float(s) for s in get(cfg, "sem_seg.scales")])  # [B, h, w]
    h, w = edge.shape[-2:]
    h0, w0 = _stride4(H), _stride4(W)
    cams = torch.zeros((len(items), max(int(it["cam"].shape[0]) for it in items), h, w), device=device)
    for b, it in enumerate(items):
        c = to_device(it["cam"], device)
        if c.shape[-2:] != (h0, w0):
            raise ValueError(f"{it['id']}: CAM 'cam' is {tuple(c.shape[-2:])}, expected stride-4 size "
                             f"{(h0, w0)} of the {H}x{W} image")
        if up > 1:
            c = F.interpolate(c[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        cams[b, : c.shape[0]] = c
    out: dict[tuple[bool, int], list[torch.Tensor]] = {}
    radius, beta = int(get(cfg, "sem_seg.radius")), float(get(cfg, "sem_seg.beta"))
    for mask in masks:
        rw, done = None, 0
        for n in sorted({int(s) for s in steps}):  # the walk is linear: n steps = the last walk walked n - done more
            rw = ops.random_walk(cams, edge, radius=radius, beta=beta, steps=n, mask_edge=bool(mask)) \
                if rw is None else ops.random_walk(rw, edge, radius=radius, beta=beta, steps=n - done, mask_edge=False)
            done = n
            rw_up = F.interpolate(rw.float(), size=(4 * h // up, 4 * w // up), mode="bilinear",
                                  align_corners=False)[..., :H, :W]
            softs = []
            for b, it in enumerate(items):
                soft = rw_up[b, : int(it["cam"].shape[0])]
                softs.append((soft / soft.max().clamp_min(1e-5)).half())  # labels come from the stored fp16 maps
            out[(bool(mask), int(n))] = softs
    return out


def _edge_mask(value) -> bool:
    """``sem_seg.edge_mask`` as a bool (``val`` is resolved by :func:`wsss_fast.irn.sem_seg.walk_settings` first)."""
    if not isinstance(value, bool):
        raise ValueError(f"sem_seg.edge_mask must be true, false or val, got {value!r}")
    return value
