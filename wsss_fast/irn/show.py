"""``wsss-fast show``: one PNG panel per chosen image, to see what IRNet learned.

Panel: image | CAM | boundary map | displacement field | random-walk map | pseudo label |
ground truth. The displacement field is color-coded as optical flow is (hue = direction,
saturation = magnitude, Baker et al., IJCV 2011), after IRNet's mean shift; the boundary
map is IRNet's sigmoid of the mean of image and flip logits (Ahn et al., CVPR 2019).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..config import get
from ..metrics.figures import PALETTE
from ..engine.paths import RunPaths
from ..engine.files import load_cam_file
from ..engine.dist import resolve_device
from . import common
from ..engine.files import read_png
from .common import as_list, resize_image_uint8, resize_label
from .crf import to_rgb_uint8
from .model import EdgeDisplacement, load_irnet
from .walk import walk_image

TITLES = ["image", "CAM", "boundary", "displacement", "random walk", "pseudo label", "ground truth"]


# the VOC colour map of the report's figures, with ignore (255) drawn light grey
_PALETTE = PALETTE.copy()
_PALETTE[255] = (224, 224, 192)


def colorize_label(label: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W]`` label map -> RGB with the VOC palette (class 1 red for SIIM)."""
    return _PALETTE[np.asarray(label, dtype=np.uint8)]


def heatmap(m: np.ndarray) -> np.ndarray:
    """``[H, W]`` map in [0, 1] -> RGB (matplotlib's jet when available)."""
    m = np.clip(np.nan_to_num(np.asarray(m, dtype=np.float32)), 0, 1)
    try:
        from matplotlib import colormaps

        return (colormaps["jet"](m)[..., :3] * 255).astype(np.uint8)
    except Exception:  # pragma: no cover - matplotlib missing
        return np.stack([m, np.zeros_like(m), 1 - m], -1).__mul__(255).astype(np.uint8)


def flow_to_color(dp: np.ndarray, max_mag: float | None = None) -> np.ndarray:
    """``[2, h, w]`` (dy, dx) field -> RGB: hue = direction, saturation = magnitude."""
    dy, dx = np.asarray(dp[0], np.float32), np.asarray(dp[1], np.float32)
    mag = np.sqrt(dx * dx + dy * dy)
    max_mag = float(max_mag or max(mag.max(), 1e-6))
    hue = (np.arctan2(-dy, -dx) / np.pi + 1) / 2
    sat = np.clip(mag / max_mag, 0, 1)
    from matplotlib.colors import hsv_to_rgb

    return (hsv_to_rgb(np.stack([hue, sat, np.ones_like(sat)], -1)) * 255).astype(np.uint8)


def _overlay(img: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (img.astype(np.float32) * (1 - alpha) + color.astype(np.float32) * alpha).astype(np.uint8)


def _tile(img: np.ndarray, size: tuple[int, int], title: str, nearest: bool = False) -> Image.Image:
    pil = Image.fromarray(img).resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR)
    canvas = Image.new("RGB", (size[1], size[0] + 16), (255, 255, 255))
    canvas.paste(pil, (0, 16))
    ImageDraw.Draw(canvas).text((3, 2), title, fill=(0, 0, 0))
    return canvas


def render_panel(image: np.ndarray, cam: np.ndarray | None, edge: np.ndarray | None, dp: np.ndarray | None,
                 rw: np.ndarray | None, pseudo: np.ndarray | None, gt: np.ndarray | None,
                 tile: int = 256) -> Image.Image:
    """Assemble the 7 tiles (a missing input gives a gray tile).

    Args:
        image: uint8 ``[H, W, 3]``; cam, rw: ``[H, W]`` in [0, 1] (max over classes);
        edge: ``[h, w]`` in [0, 1]; dp: ``[2, h, w]``; pseudo, gt: uint8 label maps.
    """
    h0, w0 = image.shape[:2]
    size = (tile, max(1, round(tile * w0 / h0)))
    gray = np.full((8, 8, 3), 128, np.uint8)
    small = resize_image_uint8(image, size)
    tiles = [
        _tile(image, size, TITLES[0]),
        _tile(_overlay(small, heatmap(_fit(cam, size))) if cam is not None else gray, size, TITLES[1]),
        _tile(heatmap(edge) if edge is not None else gray, size, TITLES[2]),
        _tile(flow_to_color(dp) if dp is not None else gray, size, TITLES[3], nearest=True),
        _tile(_overlay(small, heatmap(_fit(rw, size))) if rw is not None else gray, size, TITLES[4]),
        _tile(_overlay(small, colorize_label(resize_label(pseudo, size)), 0.6) if pseudo is not None else gray,
              size, TITLES[5], nearest=True),
        _tile(_overlay(small, colorize_label(resize_label(gt, size)), 0.6) if gt is not None else gray,
              size, TITLES[6], nearest=True),
    ]
    panel = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), tiles[0].height), (255,) * 3)
    x = 0
    for t in tiles:
        panel.paste(t, (x, 0))
        x += t.width + 4
    return panel


def _fit(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.asarray(m, np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _find(ds, ids: list[str]) -> list[int]:
    index = {str(i): k for k, i in enumerate(ds.image_ids)}
    return [index[i] for i in ids if i in index]


def show(cfg: dict, paths: RunPaths) -> None:
    """Step ``show``: write ``paths.figures/irn_<id>.png`` for the images of ``show.ids``
    (or the first ``show.num_images`` of ``show.split``, positives first).

    Whatever exists is drawn: a panel shows gray tiles for outputs not computed yet.
    """
    split = get(cfg, "show.split")
    ds = common.build_split(cfg, split, paths, train=False)
    ids = as_list(get(cfg, "show.ids"))
    if ids:
        idx = _find(ds, [str(i) for i in ids])
        if not idx:
            raise KeyError(f"show.ids: none of {ids[:5]} is in split '{split}'")
    else:
        labels = np.asarray(ds.labels)
        order = np.argsort(-labels.any(axis=1).astype(int), kind="stable") if len(labels) else []
        idx = [int(i) for i in order[: int(get(cfg, "show.num_images"))]]
    device = resolve_device(cfg)
    model = None
    ckpt = paths.irn / "final.pt"
    if ckpt.exists():
        model = EdgeDisplacement(load_irnet(ckpt).to(device).eval())
    paths.figures.mkdir(parents=True, exist_ok=True)
    tile = int(get(cfg, "show.tile_size"))
    for i in idx:
        item = ds[i]
        image_id = str(item["image_id"])
        image = to_rgb_uint8(np.asarray(ds.load_image(i)))
        cam = rw = edge = dp = pseudo = None
        if paths.cam_file(image_id).exists():
            hr = np.asarray(load_cam_file(paths.cam_file(image_id))["high_res"], np.float32)
            cam = hr.max(0) if hr.shape[0] else np.zeros(hr.shape[1:], np.float32)
        if model is not None:
            x, _ = walk_image(cfg, item["image"][None].to(device))  # the boundary map the walk used
            with torch.no_grad():
                e, d = model(x)
            edge, dp = e[0].cpu().numpy(), d[0].cpu().numpy()
        npy = paths.rw / f"{image_id}.npy"
        if npy.exists():
            r = np.load(npy).astype(np.float32)
            rw = r.max(0) if r.shape[0] else np.zeros(r.shape[1:], np.float32)
        png = paths.sem_seg / f"{image_id}.png"
        if png.exists():
            pseudo = read_png(png)
        gt = ds.load_mask(i)
        panel = render_panel(image, cam, edge, dp, rw, pseudo, gt, tile=tile)
        out = paths.figures / f"irn_{image_id}.png"
        tmp = Path(str(out) + ".tmp.png")
        panel.save(tmp)
        tmp.replace(out)
    print(f"[show] wrote {len(idx)} panels to {paths.figures}")
