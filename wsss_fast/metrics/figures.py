"""Figure-1-style panels: image | CAM | IRNet | segmentation | ground truth.

As in Figure 1 of Viniavskyi, Dobko, Dobosevych, "Weakly-Supervised Segmentation for
Disease Localization in Chest X-Ray Images" (AIME 2020): one row per image, the CAM as a
heat map over the image and every label map as a colored overlay. Positive test images
are shown first. Panels that are missing (a step that has not run) are drawn grey.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from ..engine.paths import RunPaths
from ..engine.files import atomic_write_bytes, load_cam_file, read_png

TILE = 256
TITLES = ("image", "CAM", "IRNet", "segmentation", "ground truth")


def _palette(n: int = 256) -> np.ndarray:
    """PASCAL VOC color map [n, 3] uint8 (class 1 is red)."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


PALETTE = _palette()


def _jet(x: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> uint8 [H, W, 3] jet colors."""
    x = np.clip(x, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay_label(rgb: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the palette colors of a label map [H, W] over an image [H, W, 3] (bg left as is)."""
    out = rgb.astype(np.float32).copy()
    fg = (label > 0) & (label != 255)
    out[fg] = (1 - alpha) * out[fg] + alpha * PALETTE[label[fg]].astype(np.float32)
    out[label == 255] = 0.5 * out[label == 255] + 0.5 * 255  # ignore: whitened
    return out.astype(np.uint8)


def overlay_heat(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a [H, W] map in [0, 1] over an image as a jet heat map."""
    return ((1 - alpha) * rgb.astype(np.float32) + alpha * _jet(heat).astype(np.float32)).astype(np.uint8)


def _resize(a: np.ndarray, size: tuple[int, int], nearest: bool) -> np.ndarray:
    if a.shape[:2] == size:
        return a
    mode = PILImage.NEAREST if nearest else PILImage.BILINEAR
    if a.dtype != np.uint8:
        return np.array(PILImage.fromarray(a.astype(np.float32), mode="F").resize(size[::-1], mode))
    return np.array(PILImage.fromarray(a).resize(size[::-1], mode))


def _tile(a: np.ndarray | None) -> PILImage.Image:
    if a is None:
        return PILImage.new("RGB", (TILE, TILE), (96, 96, 96))
    h, w = a.shape[:2]
    s = TILE / max(h, w)
    im = PILImage.fromarray(a).resize((max(1, round(w * s)), max(1, round(h * s))), PILImage.BILINEAR)
    canvas = PILImage.new("RGB", (TILE, TILE), (0, 0, 0))
    canvas.paste(im, ((TILE - im.width) // 2, (TILE - im.height) // 2))
    return canvas


def panel(rgb: np.ndarray, cam: np.ndarray | None, irnet: np.ndarray | None, seg: np.ndarray | None,
          gt: np.ndarray | None, title: str = "") -> PILImage.Image:
    """One row of five tiles with captions.

    Args:
        rgb: uint8 [H, W, 3] image at original resolution.
        cam: [H, W] CAM in [0, 1] (max over the positive classes), or None.
        irnet, seg, gt: uint8 [H, W] label maps, or None.
        title: text drawn over the first tile (e.g. the image id).
    """
    size = rgb.shape[:2]
    tiles = [rgb,
             None if cam is None else overlay_heat(rgb, _resize(cam.astype(np.float32), size, False)),
             None if irnet is None else overlay_label(rgb, _resize(irnet, size, True)),
             None if seg is None else overlay_label(rgb, _resize(seg, size, True)),
             None if gt is None else overlay_label(rgb, _resize(gt, size, True))]
    head = 18
    out = PILImage.new("RGB", (TILE * len(tiles), TILE + head), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    for k, (t, name) in enumerate(zip(tiles, TITLES)):
        out.paste(_tile(t), (k * TILE, head))
        text = name if k or not title else f"{name} {title if len(title) <= 28 else '...' + title[-25:]}"
        draw.text((k * TILE + 4, 3), text, fill=(0, 0, 0))
    return out


def _read_png(path: Path) -> np.ndarray | None:
    return read_png(path) if path.exists() else None


def write_figures(base, paths: RunPaths, num: int, split: str = "test") -> list[Path]:
    """Write panels for ``num`` images of ``base`` (positives first) to ``paths.figures``.

    Returns:
        The written PNG paths (``figures/<split>_<image_id>.png``).
    """
    labels = np.asarray(base.labels)
    pos = [i for i in range(len(base.image_ids)) if labels.size and labels[i].max() > 0]
    neg = [i for i in range(len(base.image_ids)) if i not in set(pos)]
    order = (pos + neg)[:num]
    written = []
    for i in order:
        name = base.image_ids[i]
        rgb = np.asarray(base.load_image(i), dtype=np.uint8)
        if rgb.ndim == 2:
            rgb = np.stack([rgb] * 3, -1)
        cam = None
        f = paths.cam / f"{name}.npy"
        if f.exists():
            d = load_cam_file(f)
            hr = np.asarray(d.get("high_res"), dtype=np.float32)
            cam = hr.max(0) if hr.ndim == 3 and hr.shape[0] else np.zeros(rgb.shape[:2], np.float32)
        gt = base.load_mask(i)
        img = panel(rgb, cam, _read_png(paths.sem_seg / f"{name}.png"),
                    _read_png(paths.seg_pred / f"{name}.png"), gt, title=name)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        out = paths.figures / f"{split}_{name}.png"
        atomic_write_bytes(buf.getvalue(), out)
        written.append(out)
    return written
