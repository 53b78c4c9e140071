"""Built-in synthetic multi-class scenes written in the PASCAL VOC 2012 layout.

The multi-class counterpart of :mod:`wsss_fast.data.synthetic`: small RGB scenes whose
objects belong to ``num_classes`` shape classes (``disc``, ``box``, ``star``, ``ring``, ...),
written as PASCAL VOC 2012 (Everingham, Van Gool, Williams, Winn, Zisserman, "The PASCAL
Visual Object Classes (VOC) Challenge", IJCV 2010) with SBD-style ``SegmentationClassAug``
masks, so that the real VOC loader and the multi-class path of the pipeline run end to end::

    root/VOCdevkit/VOC2012/JPEGImages/synth_000001.jpg
    root/VOCdevkit/VOC2012/SegmentationClassAug/synth_000001.png   (palette PNG, 0..C, 255)
    root/VOCdevkit/VOC2012/ImageSets/Segmentation/{train_aug,train,val,test}.txt

A scene has a cluttered background (colour gradients, a horizon, soft blobs, textured
regions, noise) and distractors that belong to no class (lumpy blobs, strokes, rods), then
1-3 objects of 1-2 classes (every image has one, as in VOC), 3-30 % of the image each,
sometimes touching or occluding one another, with soft shadows. A class is fixed by its
shape family; each class also prefers a hue and a texture, but the preferences overlap
between classes and with the background and distractors, so colour alone does not name a
class. As in VOC, masks carry 255 (ignore) on a thin band (1 px either side) along every
object boundary. Every scene is drawn from its own seed ``(seed, index)``.
"""

from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = ["SYNTH_VOC_CLASSES", "synthetic_voc_class_names", "generate_scene", "split_synthetic_voc",
           "write_synthetic_voc"]

SYNTH_VOC_CLASSES = ("disc", "box", "star", "ring", "triangle", "cross", "crescent", "hexagon")
TEXTURES = ("mottled", "stripes", "dots", "checker")
DEFAULT_SPLIT = {"train": 0.6, "val": 0.2, "test": 0.2}
_VERSION = 1
_SS = 4            # supersampling of the shape rasteriser (anti-aliased edges)
_STAMP = ".wsss_synthetic_voc.json"


def synthetic_voc_class_names(num_classes: int) -> list[str]:
    """The first ``num_classes`` class names (1 <= num_classes <= 8)."""
    if not 1 <= int(num_classes) <= len(SYNTH_VOC_CLASSES):
        raise ValueError(f"synthetic VOC scenes have 1..{len(SYNTH_VOC_CLASSES)} classes, got {num_classes}")
    return list(SYNTH_VOC_CLASSES[: int(num_classes)])


# --- shapes: polygons in unit coordinates (the farthest point at radius ~1) -----------------------

def _radial(r: np.ndarray, theta: np.ndarray) -> np.ndarray:
    return np.stack([r * np.cos(theta), r * np.sin(theta)], 1)


def _ellipse(aspect: float, n: int = 64, wobble: np.ndarray | None = None) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    r = np.ones(n) if wobble is None else wobble
    return np.stack([r * np.cos(t), aspect * r * np.sin(t)], 1)


def _shape(name: str, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Outer polygons and holes [V, 2] of one instance of a shape family (class or distractor)."""
    t64 = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    if name == "disc":  # near-round ellipse with a faint wobble
        return [_ellipse(rng.uniform(0.72, 1.0), wobble=1 + 0.04 * np.sin(3 * t64 + rng.uniform(0, 6.3)))], []
    if name == "box":
        a = rng.uniform(0.45, 1.0)
        return [np.array([[-1, -a], [1, -a], [1, a], [-1, a]]) / math.hypot(1, a)], []
    if name == "star":
        n = int(rng.integers(5, 7))
        t = np.linspace(0, 2 * math.pi, 2 * n, endpoint=False)
        return [_radial(np.where(np.arange(2 * n) % 2 == 0, 1.0, rng.uniform(0.38, 0.55)), t)], []
    if name == "ring":
        outer = _ellipse(rng.uniform(0.8, 1.0))
        return [outer], [outer * rng.uniform(0.45, 0.65)]
    if name == "triangle":
        t = math.pi / 2 + 2 * math.pi / 3 * np.arange(3) + rng.uniform(-0.2, 0.2, 3)
        return [_radial(rng.uniform(0.85, 1.0, 3), t)], []
    if name == "cross":
        w = rng.uniform(0.25, 0.4)
        q = np.array([[w, 1], [w, w], [1, w], [1, -w], [w, -w], [w, -1],
                      [-w, -1], [-w, -w], [-1, -w], [-1, w], [-w, w], [-w, 1]])
        return [q / math.hypot(1, w)], []
    if name == "crescent":
        d, rb = rng.uniform(0.45, 0.65), rng.uniform(0.7, 0.9)
        return [_ellipse(1.0)], [_ellipse(1.0) * rb + np.array([d, 0.0])]
    if name == "hexagon":
        t = np.linspace(0, 2 * math.pi, 6, endpoint=False) + rng.uniform(-0.08, 0.08, 6)
        return [_radial(np.ones(6), t)], []
    if name == "blob":  # lumpy, irregular: no class has this outline
        r = np.ones(64)
        for k in range(2, 6):
            r += rng.uniform(0.08, 0.22) * np.sin(k * t64 + rng.uniform(0, 6.3))
        return [_radial(r / r.max(), t64)], []
    if name == "rod":
        a = rng.uniform(0.08, 0.2)
        return [np.array([[-1, -a], [1, -a], [1, a], [-1, a]], float)], []
    raise ValueError(f"unknown shape {name!r}")


def _rasterize(S: int, outers: Sequence[np.ndarray], holes: Sequence[np.ndarray], angle: float, scale: float,
               centre: tuple[float, float]) -> np.ndarray:
    """Coverage float32 [S, S] in [0, 1] of the polygons rotated, scaled (pixels) and moved to ``centre``."""
    rot = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
    canvas = Image.new("L", (S * _SS, S * _SS), 0)
    draw = ImageDraw.Draw(canvas)
    for polys, fill in ((outers, 255), (holes, 0)):
        for p in polys:
            q = (p @ rot * scale + np.asarray(centre)) * _SS
            draw.polygon([tuple(v) for v in q.tolist()], fill=fill)
    return np.asarray(canvas.reduce(_SS), np.float32) / 255.0


def _unit_area(outers: Sequence[np.ndarray], holes: Sequence[np.ndarray]) -> float:
    """Area of the shape at scale 1 (the outline spans ~[-1, 1])."""
    return float(_rasterize(64, outers, holes, 0.0, 16.0, (32.0, 32.0)).sum()) / 256.0


# --- appearance ---------------------------------------------------------------------------------

def _rgb(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def _smooth_noise(rng: np.random.Generator, S: int, sigma: float, channels: int = 1) -> np.ndarray:
    """Zero-mean, unit-std smooth random field float32 [S, S] (or [S, S, C])."""
    z = ndimage.gaussian_filter(rng.normal(0, 1, (S, S, channels)).astype(np.float32), (sigma, sigma, 0),
                                mode="wrap")
    z = (z - z.mean()) / (z.std() + 1e-6)
    return z[..., 0] if channels == 1 else z


def _texture(rng: np.random.Generator, S: int, kind: str, c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """A texture of two colours, float32 [S, S, 3] in [0, 1]."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    period = rng.uniform(3.0, 9.0) * S / 128
    phi = rng.uniform(0, math.pi)
    xr, yr = xx * math.cos(phi) + yy * math.sin(phi), -xx * math.sin(phi) + yy * math.cos(phi)
    if kind == "mottled":
        t = 1 / (1 + np.exp(-2 * _smooth_noise(rng, S, period / 2)))
    elif kind == "stripes":
        t = 0.5 + 0.5 * np.sin(2 * math.pi * xr / period + rng.uniform(0, 6.3))
    elif kind == "dots":
        t = 1 / (1 + np.exp(-8 * (np.sin(2 * math.pi * xr / period) * np.sin(2 * math.pi * yr / period) - 0.35)))
    elif kind == "checker":
        t = 0.5 + 0.5 * np.tanh(3 * np.sin(math.pi * xr / period) * np.sin(math.pi * yr / period))
    else:
        raise ValueError(f"unknown texture {kind!r}")
    return (c1 * (1 - t[..., None]) + c2 * t[..., None]).astype(np.float32)


def _appearance(rng: np.random.Generator, S: int, hue: float | None, texture: str | None) -> np.ndarray:
    """Colour and texture of an object or distractor: float32 [S, S, 3]. ``hue``/``texture``
    None draw them uniformly."""
    h = rng.uniform(0, 1) if hue is None else hue
    s, v = rng.uniform(0.45, 0.95), rng.uniform(0.4, 0.95)
    c1 = _rgb(h, s, v)
    c2 = _rgb(h + rng.normal(0, 0.06), np.clip(s + rng.normal(0, 0.15), 0.1, 1),
              np.clip(v + rng.choice([-1, 1]) * rng.uniform(0.15, 0.35), 0.05, 1))  # a darker or lighter shade
    return _texture(rng, S, texture or TEXTURES[int(rng.integers(len(TEXTURES)))], c1, c2)


def _class_style(rng: np.random.Generator, cls: int, num_classes: int) -> tuple[float | None, str]:
    """Hue and texture of an object of class ``cls``: the class's own with some probability, else any."""
    hue = None if rng.random() < 0.15 else cls / num_classes + rng.normal(0, 0.05)
    tex = TEXTURES[cls % len(TEXTURES)] if rng.random() < 0.7 else TEXTURES[int(rng.integers(len(TEXTURES)))]
    return hue, tex


def _background(rng: np.random.Generator, S: int) -> np.ndarray:
    """Gradient + horizon + soft blobs + a faint texture: float32 [S, S, 3]."""
    yy, xx = (np.mgrid[0:S, 0:S].astype(np.float32) + 0.5) / S
    phi = rng.uniform(0, 2 * math.pi)
    g = np.clip(0.5 + (xx - 0.5) * math.cos(phi) + (yy - 0.5) * math.sin(phi), 0, 1)[..., None]
    img = _rgb(rng.uniform(0, 1), rng.uniform(0.05, 0.5), rng.uniform(0.3, 0.9)) * (1 - g) \
        + _rgb(rng.uniform(0, 1), rng.uniform(0.05, 0.5), rng.uniform(0.3, 0.9)) * g
    if rng.random() < 0.6:  # a horizon: ground of another colour and texture
        y0, tilt = rng.uniform(0.35, 0.8), rng.normal(0, 0.15)
        ground = 1 / (1 + np.exp(-(yy - y0 - tilt * (xx - 0.5)) * S / 1.5))
        tex = _appearance(rng, S, None, None)
        img = img * (1 - ground[..., None]) + (0.6 * tex + 0.4 * img) * ground[..., None]
    blobs = _smooth_noise(rng, S, S / 10, 3)
    img = img + rng.uniform(0.03, 0.08) * blobs
    if rng.random() < 0.5:  # a faint texture over the whole scene (wallpaper, grass)
        img = 0.8 * img + 0.2 * _appearance(rng, S, None, None)
    return img.astype(np.float32)


def _shadow(cov: np.ndarray, rng: np.random.Generator, S: int) -> np.ndarray:
    """Soft shadow [S, S] of a coverage map, offset a few pixels."""
    dy, dx = (rng.uniform(1.0, 4.0, 2) * S / 128).round().astype(int)
    shifted = np.zeros_like(cov)
    shifted[dy:, dx:] = cov[: S - dy, : S - dx]
    return ndimage.gaussian_filter(shifted, 1.5 * S / 128)


# --- scenes -------------------------------------------------------------------------------------

def _label_map(covs: Sequence[np.ndarray], values: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each coverage's value where it is >= 0.5, later ones on top: uint8 [S, S], and the same
    with 255 on a band along every boundary (the pixels whose 3 x 3 neighbourhood holds two values)."""
    label = np.zeros(covs[0].shape, np.uint8)
    for cov, v in zip(covs, values):
        label[cov >= 0.5] = v
    band = ndimage.maximum_filter(label, 3) != ndimage.minimum_filter(label, 3)
    return label, np.where(band, 255, label).astype(np.uint8)


def _visible(covs: Sequence[np.ndarray]) -> bool:
    """Whether every object keeps >= 55 % of its area in view (not occluded by later ones) and
    >= 30 % of that off the ignore band."""
    label, mask = _label_map(covs, range(1, len(covs) + 1))
    for k, cov in enumerate(covs, start=1):
        seen = (label == k).sum()
        if seen == 0 or seen < 0.55 * (cov >= 0.5).sum() or (mask == k).sum() < 0.3 * seen:
            return False
    return True


def generate_scene(index: int, image_size: int = 128, seed: int = 0, num_classes: int = 4
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene.

    The first object's class is ``index % num_classes`` (so classes are balanced over a set);
    with probability 0.4 a second class is present too.

    Args:
        index: image index (with ``seed``, it fixes the scene).
        image_size: S, the scene is S x S (>= 32).
        seed: set seed.
        num_classes: C, the number of object classes (1..8; names in :data:`SYNTH_VOC_CLASSES`).

    Returns:
        ``(image, mask)``: uint8 [S, S, 3] RGB and uint8 [S, S] label map (0 = background,
        c + 1 = class c, 255 = a 2 px ignore band along object boundaries).
    """
    S, C = int(image_size), int(num_classes)
    names = synthetic_voc_class_names(C)
    if S < 32:
        raise ValueError(f"image_size must be >= 32, got {S}")
    rng = np.random.default_rng([int(seed), int(index), 2654435761])
    img = _background(rng, S)
    # distractors: shapes of no class, coloured and textured like objects
    for _ in range(int(rng.integers(1, 5))):
        kind = ("blob", "rod", "stroke")[int(rng.integers(3))]
        if kind == "stroke":
            canvas = Image.new("L", (S * _SS, S * _SS), 0)
            pts = np.cumsum(rng.normal(0, 0.18 * S, (int(rng.integers(3, 7)), 2)), 0) + rng.uniform(0, S, 2)
            ImageDraw.Draw(canvas).line([tuple(p) for p in (pts * _SS).tolist()], fill=255,
                                        width=int(rng.uniform(1.5, 4.0) * S / 128 * _SS), joint="curve")
            cov = np.asarray(canvas.reduce(_SS), np.float32) / 255.0
        else:
            outers, holes = _shape(kind, rng)
            frac = math.exp(rng.uniform(math.log(0.005), math.log(0.06)))
            scale = math.sqrt(frac * S * S / _unit_area(outers, holes))
            cov = _rasterize(S, outers, holes, rng.uniform(0, 2 * math.pi), scale, tuple(rng.uniform(0, S, 2)))
        img = img * (1 - cov[..., None]) + _appearance(rng, S, None, None) * cov[..., None]

    primary = int(index) % C
    classes = [primary]
    if C > 1 and rng.random() < 0.4:
        classes.append(int((primary + rng.integers(1, C)) % C))
    n_obj = max(len(classes), int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2])))
    obj_cls = classes + rng.choice(classes, n_obj - len(classes)).tolist()
    obj_cls = [obj_cls[0]] + rng.permutation(obj_cls[1:]).tolist()
    hi = {1: 0.30, 2: 0.20, 3: 0.14}[n_obj]
    placed: list[tuple[int, np.ndarray, float, tuple[float, float]]] = []  # (class, coverage, radius, centre)
    for k, c in enumerate(obj_cls):
        outers, holes = _shape(names[c], rng)
        area = math.exp(rng.uniform(math.log(0.03), math.log(hi))) * S * S
        scale = math.sqrt(area / _unit_area(outers, holes))
        angle = rng.uniform(0, 2 * math.pi)
        chosen = None
        for attempt in range(30):
            if placed and rng.random() < 0.4:  # touching / overlapping a placed object
                _, _, r_j, (cx, cy) = placed[int(rng.integers(len(placed)))]
                a, d = rng.uniform(0, 2 * math.pi), (r_j + scale) * rng.uniform(0.55, 1.0)
                centre = (cx + d * math.cos(a), cy + d * math.sin(a))
            else:
                lo, hi_c = min(0.6 * scale, S / 2), max(S - 0.6 * scale, S / 2)
                centre = tuple(rng.uniform(lo, hi_c, 2))
            cov = _rasterize(S, outers, holes, angle, scale, centre)
            if (cov >= 0.5).sum() >= 0.6 * area and _visible([p[1] for p in placed] + [cov]):
                chosen = (c, cov, scale, centre)
                break
            if attempt >= 15:  # thin shapes at small sizes: grow until the band leaves an interior
                scale *= 1.05
                area *= 1.05 ** 2
        if chosen is None:
            if k > 0:
                continue
            scale = min(scale, 0.45 * S)  # the first object always fits at the centre
            chosen = (c, _rasterize(S, outers, holes, angle, scale, (S / 2, S / 2)), scale, (S / 2, S / 2))
        placed.append(chosen)
        cov = chosen[1]
        if rng.random() < 0.6:
            img = img * (1 - rng.uniform(0.2, 0.45) * _shadow(cov, rng, S)[..., None])
        hue, tex = _class_style(rng, c, C)
        look = _appearance(rng, S, hue, tex)
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
        phi = rng.uniform(0, 2 * math.pi)
        shade = 1 + rng.uniform(0, 0.3) * ((xx - chosen[3][0]) * math.cos(phi)
                                           + (yy - chosen[3][1]) * math.sin(phi)) / max(scale, 1.0)
        img = img * (1 - cov[..., None]) + look * np.clip(shade, 0.6, 1.4)[..., None] * cov[..., None]

    mask = _label_map([p[1] for p in placed], [p[0] + 1 for p in placed])[1]
    # camera: illumination gradient, slight blur, sensor noise
    yy, xx = (np.mgrid[0:S, 0:S].astype(np.float32) + 0.5) / S
    img = img * (1 + rng.normal(0, 0.12) * (xx - 0.5) + rng.normal(0, 0.12) * (yy - 0.5))[..., None]
    img = ndimage.gaussian_filter(img, (0.4 * S / 128, 0.4 * S / 128, 0))
    img = img + rng.normal(0, rng.uniform(0.01, 0.03), img.shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8), mask


# --- the VOC layout -----------------------------------------------------------------------------

def _shares(split_counts: Mapping[str, object] | None) -> dict[str, float]:
    """split -> share: a number, or the sum of a (positive, negative) pair as ``dataset.split_counts`` gives."""
    if split_counts is None:
        return dict(DEFAULT_SPLIT)
    out = {str(k): float(sum(v) if isinstance(v, (list, tuple)) else v) for k, v in split_counts.items()}
    if "train" not in out or any(v < 0 for v in out.values()) or sum(out.values()) <= 0:
        raise ValueError(f"split_counts must give non-negative shares including 'train', got {dict(split_counts)}")
    return out


def split_synthetic_voc(num_images: int, num_classes: int, seed: int,
                        split_counts: Mapping[str, object] | None = None) -> dict[str, list[str]]:
    """Ids of each split, stratified by each scene's first class (``index % num_classes``).

    Args:
        num_images: N, the scenes ``synth_000001`` .. ``synth_{N:06d}`` (indices 1..N).
        num_classes: C.
        seed: shuffling seed.
        split_counts: split -> share (a number or a (positive, negative) pair summed); None:
            60 / 20 / 20 % train / val / test.

    Returns:
        split name -> sorted ids. The split sizes are the shares of ``num_images`` (largest
        remainder), and each split holds each class's scenes in proportion (within one).
    """
    from .siim import _allocate

    shares = _shares(split_counts)
    names = ["train"] + [k for k in shares if k != "train"]
    keyed = []
    for c in range(int(num_classes)):  # interleave the shuffled classes, then cut in blocks
        ids = [f"synth_{i:06d}" for i in range(1, int(num_images) + 1) if i % num_classes == c]
        perm = np.random.default_rng([int(seed), c, 31337]).permutation(len(ids))
        keyed += [((j + 0.5) / len(ids), c, ids[p]) for j, p in enumerate(perm)]
    order = [image_id for _, _, image_id in sorted(keyed)]
    out, start = {}, 0
    for k, n in zip(names, _allocate(len(order), [shares[k] for k in names])):
        out[k] = sorted(order[start:start + n])
        start += n
    return out


def write_synthetic_voc(root: str | Path, num_images: int = 200, image_size: int = 128, seed: int = 0,
                        num_classes: int = 4, split_counts: Mapping[str, object] | None = None, *,
                        progress: bool = True) -> Path:
    """Write a synthetic set in the PASCAL VOC 2012 layout (see the module docstring).

    JPEG images (quality 95), palette PNG masks with VOC's colour map (pixel values = class
    ids, 255 = ignore), and the ``train_aug`` (= ``train``), ``train``, ``val`` and ``test``
    lists of :func:`split_synthetic_voc`. A stamp file records the parameters; calling again
    with the same parameters on a complete set writes nothing.

    Args:
        root: output folder (``VOCdevkit/VOC2012`` is created in it).
        num_images: number of scenes.
        image_size: side of the square scenes.
        seed: the set's seed.
        num_classes: number of object classes (1..8).
        split_counts: split shares (see :func:`split_synthetic_voc`).
        progress: show a progress bar.

    Returns:
        ``root``.
    """
    from tqdm import tqdm

    from ..metrics.figures import PALETTE

    root = Path(root)
    voc = root / "VOCdevkit" / "VOC2012"
    splits = split_synthetic_voc(num_images, num_classes, seed, split_counts)
    params = {"version": _VERSION, "num_images": int(num_images), "image_size": int(image_size), "seed": int(seed),
              "num_classes": int(num_classes), "splits": {k: len(v) for k, v in splits.items()}}
    stamp = voc / _STAMP
    lists = voc / "ImageSets" / "Segmentation"
    if stamp.exists() and all((lists / f"{k}.txt").exists() for k in [*splits, "train_aug"]):
        try:
            if json.loads(stamp.read_text()) == params:
                return root
        except json.JSONDecodeError:
            pass
    for d in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)  # an interrupted rewrite must not pass for a complete set
    palette = PALETTE.reshape(-1).tolist()
    for i in tqdm(range(1, int(num_images) + 1), desc="synthetic VOC", disable=not progress, leave=False):
        rgb, mask = generate_scene(i, image_size, seed, num_classes)
        image_id = f"synth_{i:06d}"
        Image.fromarray(rgb).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
        png = Image.fromarray(mask)  # uint8 [S, S] -> mode L; putpalette makes it P
        png.putpalette(palette)
        png.save(voc / "SegmentationClassAug" / f"{image_id}.png")
    for name, ids in [*splits.items(), ("train_aug", splits["train"])]:
        (lists / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    stamp.write_text(json.dumps(params))
    return root
