"""Step 3 inference: segmentation predictions at the original resolution.

Viniavskyi et al., AIME 2020: the trained U-Net / DeepLabV3+ predicts masks for the
validation and test images; logits are computed at the training resolution, turned
into probabilities (sigmoid for the binary task, softmax otherwise), optionally
averaged with the horizontally flipped input (flip TTA), upsampled bilinearly to the
original image size and thresholded (binary) or arg-maxed (multi-class).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..config import get
from ..engine.paths import RunPaths
from ..engine.dist import resolve_device
from ..engine.files import write_png
from .data import ImageDataset, eval_transform, seg_image_size
from .model import model_from_cfg


def load_seg_model(cfg: dict, paths: RunPaths, device: torch.device) -> torch.nn.Module:
    """The trained model from ``seg/final.pt`` (clear error when it is missing)."""
    ckpt = paths.seg / "final.pt"
    if not ckpt.exists():
        raise FileNotFoundError(f"segmentation checkpoint not found: {ckpt}; run train-seg first")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    cfg = {**cfg, "seg": {**get(cfg, "seg"), "encoder_weights_path": None}}
    for key in ("arch", "encoder"):
        if state.get(key):
            cfg["seg"][key] = state[key]
    model = model_from_cfg(cfg, int(state["num_classes"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


@torch.no_grad()
def predict_probs(model: torch.nn.Module, x: torch.Tensor, flip: bool = False,
                  amp: bool = False) -> torch.Tensor:
    """Class probabilities.

    Args:
        model: maps [B, 3, H, W] to logits [B, C, H, W].
        x: normalized images [B, 3, H, W].
        flip: average with the prediction on the horizontally flipped images.
        amp: run the network in float16 autocast (CUDA).

    Returns:
        [B, 1, H, W] foreground probability (C = 1) or [B, C, H, W] softmax.
    """
    def run(inp: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp and inp.is_cuda):
            logits = model(inp).float()
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)

    probs = run(x)
    if flip:
        probs = 0.5 * (probs + run(x.flip(-1)).flip(-1))
    return probs


def probs_to_label(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """[C, H, W] probabilities -> uint8 [H, W] label map (binary: 1 where p > threshold)."""
    if probs.shape[0] == 1:
        return (probs[0] > threshold).to(torch.uint8)
    return probs.argmax(0).to(torch.uint8)


def predict_seg(cfg: dict, paths: RunPaths) -> None:
    """Write ``seg_pred/<id>.png`` for every image of the ``evaluate.splits``.

    Existing predictions are kept (resume); ``seg_pred/.done`` marks the end. With
    ``seg.save_probs`` the foreground probability (binary) is also stored as
    ``seg_pred/<id>_prob.png`` (uint8, p * 255) at the original resolution.
    """
    from ..data import build_dataset

    device = resolve_device(cfg)
    model = load_seg_model(cfg, paths, device)
    flip = bool(get(cfg, "seg.tta_flip"))
    thr = float(get(cfg, "seg.threshold"))
    amp = bool(get(cfg, "seg.amp")) and device.type == "cuda"
    save_probs = bool(get(cfg, "seg.save_probs"))
    size = seg_image_size(cfg)
    out = paths.seg_pred
    out.mkdir(parents=True, exist_ok=True)
    for split in get(cfg, "evaluate.splits"):
        base = build_dataset(cfg, split, paths, train=False)
        todo = [i for i, name in enumerate(base.image_ids) if not (out / f"{name}.png").exists()]
        if not todo:
            continue
        ds = torch.utils.data.Subset(ImageDataset(base, eval_transform(cfg)), todo)
        bs = int(get(cfg, "seg.eval_batch_size")) if size else 1
        loader = DataLoader(ds, batch_size=bs, num_workers=int(get(cfg, "num_workers")))
        for batch in tqdm(loader, desc=f"predict-seg {split}", leave=False):
            probs = predict_probs(model, batch["image"].to(device), flip=flip, amp=amp)
            for j, idx in enumerate(batch["index"].tolist()):
                h0, w0 = batch["orig_size"][j].tolist()
                p = probs[j:j + 1]
                if p.shape[-2:] != (h0, w0):
                    p = F.interpolate(p, size=(h0, w0), mode="bilinear", align_corners=False)
                name = base.image_ids[idx]
                write_png(probs_to_label(p[0], thr).cpu().numpy(), out / f"{name}.png")
                if save_probs and p.shape[1] == 1:
                    write_png((p[0, 0].clamp(0, 1) * 255).round().byte().cpu().numpy(),
                                    out / f"{name}_prob.png")
    paths.mark_done(out)
