"""Built-in synthetic chest radiographs with pneumothorax-like regions.

The embedded default data of ``wsss-fast demo`` and of the tests. Every image is drawn
from its own seed (``seed`` and the image index), so a set is reproducible whatever its
size. An image has a thorax, two lung fields with vessel markings and fine parenchymal
texture, a heart and mediastinum, posterior ribs and clavicles, exposure gradient and
noise. Positive images have a pneumothorax-like region (Viniavskyi et al., AIME 2020,
Fig. 1): air along the edge of a lung, darker than the lung and WITHOUT lung markings,
bounded on the lung side by a thin bright visceral pleural line. Its size follows the real
masks, measured on the SIIM-ACR train masks (area median 0.8 % of the image, 10th / 90th
percentiles 0.2 / 3.1 %; thickness median 4.3 % of the width; 36 % of the positive images
with two or more separate regions): mostly thin lateral rims, also small apical pockets,
fragments, both lungs, and occasional large collapses (:mod:`.synthetic_lesions`; one RLE
row per region). The lesion has its own random stream, so image i with and without it
share anatomy. Distractors that are not the label (skin folds crossing the lungs, rib
edges) appear in both classes, so raw CAMs are visibly imperfect while a small CNN learns
the label in minutes.

:func:`write_synthetic_siim` writes a set in the SIIM-ACR competition layout (DICOM
files, some MONOCHROME1 and some 12-bit-in-16 with rescale and window, plus
``train-rle.csv``) so that the real loader is exercised end to end; :func:`generate_mask`
draws only a lesion's mask (statistics over many lesions).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from .rle import rle_encode_regions
from .synthetic_lesions import draw_pieces, sample_lesion

__all__ = ["generate_image", "generate_mask", "generate_synthetic", "synthetic_labels", "write_synthetic_siim",
           "SYNTH_UID_PREFIX"]

SYNTH_UID_PREFIX = "1.2.826.0.1.3680043.10.1338."
_VERSION = 2


def synthetic_labels(num_images: int, seed: int, positive_fraction: float) -> np.ndarray:
    """Which images are positive: exactly ``round(num_images * positive_fraction)``, shuffled by seed."""
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    n_pos = int(round(num_images * positive_fraction))
    lab = np.zeros(num_images, dtype=bool)
    lab[:n_pos] = True
    np.random.default_rng([seed, 7919]).shuffle(lab)
    return lab


def _sigmoid(x: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(x).astype(np.float32)


def _draw_vessels(rng: np.random.Generator, size: int, cx: float, cy: float, rx: float, ry: float,
                  medial_sign: float) -> np.ndarray:
    """Branching vessel tree radiating from the hilum of one lung, float [S, S] in [0, 1]."""
    scale = 2  # supersample the drawing for smooth thin lines
    S = size * scale
    canvas = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(canvas)
    hx, hy = cx + medial_sign * 0.55 * rx, cy + 0.05 * ry
    step = 0.035 * min(rx, ry) * 3
    n_roots = int(rng.integers(10, 15))
    stack = []
    for _ in range(n_roots):
        base = math.pi if medial_sign > 0 else 0.0  # point away from the mediastinum
        ang = base + rng.uniform(-1.8, 1.8)
        stack.append((hx + rng.normal(0, 0.02 * rx), hy + rng.normal(0, 0.05 * ry), ang,
                      rng.uniform(2.2, 3.2), 0))
    while stack:
        x, y, ang, width, depth = stack.pop()
        for _ in range(40):
            nx, ny = x + step * math.cos(ang), y + step * math.sin(ang)
            r = math.hypot((nx - cx) / rx, (ny - cy) / ry)
            if r > 1.02 or width < 0.6:
                break
            w_px = max(1, int(round(width * scale * size / 256)))
            draw.line([(x * S, y * S), (nx * S, ny * S)], fill=int(140 + 80 * min(width / 3, 1)),
                      width=w_px)
            x, y = nx, ny
            ang += rng.normal(0, 0.22)
            width *= 0.93
            if depth < 3 and rng.random() < 0.15:
                stack.append((x, y, ang + rng.choice([-1, 1]) * rng.uniform(0.35, 0.8),
                              width * 0.8, depth + 1))
    arr = np.asarray(canvas.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
    return arr


def _grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(u, v)``, float32 [S, S], fractions of the width / height."""
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
    return (xx + 0.5) / S, (yy + 0.5) / S


def _ellipse_r(u: np.ndarray, v: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    """Normalised radius of an ellipse (< 1 inside), [S, S]."""
    return np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2)


def _geometry(rng: np.random.Generator) -> dict:
    """Draw the thorax, lungs and heart (the anatomy stream's first draws): thorax centre
    ``tcx, tcy`` and ``zoom``; ``lungs``: ``(side, cx, cy, rx, ry)`` per lung (-1: image left,
    the patient's right lung); ``heart``: ``(cx, cy, rx, ry)``; all in fractions of the side."""
    shift_x, shift_y = rng.normal(0, 0.015), rng.normal(0, 0.015)
    zoom = rng.uniform(0.94, 1.06)
    tcx, tcy = 0.5 + shift_x, 0.56 + shift_y
    lungs = []
    for side in (-1, 1):
        cx = tcx + side * rng.uniform(0.175, 0.195) * zoom
        cy = tcy - 0.09 * zoom + rng.normal(0, 0.01)
        rx = rng.uniform(0.125, 0.145) * zoom
        ry = rng.uniform(0.27, 0.31) * zoom
        lungs.append((side, cx, cy, rx, ry))
    heart = (tcx + 0.05 * zoom, tcy + 0.12 * zoom,
             rng.uniform(0.12, 0.15) * zoom, rng.uniform(0.10, 0.13) * zoom)
    return {"tcx": tcx, "tcy": tcy, "zoom": zoom, "lungs": lungs, "heart": heart}


def _lesion(index: int, seed: int, u: np.ndarray, v: np.ndarray, geo: dict,
            heart: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """The pneumothorax of image ``index``, drawn from its own random stream (image i with
    and without it share anatomy).

    Returns:
        ``(mask, pleura, prng)``: bool [S, S], the visceral pleural line float [S, S], and
        the lesion stream (for the lesion's contrast).
    """
    prng = np.random.default_rng([seed, index, 15485863])
    pieces = sample_lesion(prng)
    mask = np.zeros(u.shape, bool)
    pleura = np.zeros(u.shape, np.float32)
    for side, cx, cy, rx, ry in geo["lungs"]:
        mine = [p for p in pieces if p.side == side]
        if mine:
            inside = (_ellipse_r(u, v, cx, cy, rx, ry) < 1.0) & (heart < 0.5)
            m, pl = draw_pieces(mine, u, v, (cx, cy, rx, ry), inside)
            mask |= m
            pleura = np.maximum(pleura, pl)
    return mask, pleura, prng


def _check_size(image_size: int) -> int:
    S = int(image_size)
    if S < 32:
        raise ValueError(f"image_size must be >= 32, got {S}")
    return S


def generate_mask(index: int, image_size: int = 256, seed: int = 0) -> np.ndarray:
    """The pneumothorax mask of positive image ``index``, without drawing the radiograph.

    Equal to ``generate_image(index, image_size, seed, positive=True)[1]``, several times
    faster (for statistics over many lesions).

    Returns:
        uint8 [S, S] mask (1 = pneumothorax).
    """
    S = _check_size(image_size)
    geo = _geometry(np.random.default_rng([seed, index, 104729]))
    u, v = _grid(S)
    hcx, hcy, hrx, hry = geo["heart"]
    heart = _sigmoid((1.0 - _ellipse_r(u, v, hcx, hcy, hrx, hry)) * hrx / (1.5 / S))
    return _lesion(index, seed, u, v, geo, heart)[0].astype(np.uint8)


def generate_image(index: int, image_size: int = 256, seed: int = 0, positive: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic radiograph.

    Args:
        index: image index (with ``seed``, it fixes the image).
        image_size: S, the image is S x S.
        seed: set seed.
        positive: draw a pneumothorax.

    Returns:
        ``(image, mask)``: uint8 [S, S] radiograph (0 = air, black) and uint8 [S, S]
        mask (1 = pneumothorax), all zero for a negative image.
    """
    S = _check_size(image_size)
    rng = np.random.default_rng([seed, index, 104729])
    geo = _geometry(rng)
    u, v = _grid(S)
    edge = 1.5 / S  # softness of anatomical borders

    def ellipse_r(cx, cy, rx, ry):
        return _ellipse_r(u, v, cx, cy, rx, ry)

    def soft_inside(r, rx):  # ~1 inside r < 1, smooth edge of ~edge width
        return _sigmoid((1.0 - r) * rx / edge)

    tcx, tcy, zoom, lungs = geo["tcx"], geo["tcy"], geo["zoom"], geo["lungs"]
    thorax = soft_inside(ellipse_r(tcx, tcy, 0.44 * zoom, 0.52 * zoom), 0.44 * zoom)
    hcx, hcy, hrx, hry = geo["heart"]
    heart = soft_inside(ellipse_r(hcx, hcy, hrx, hry), hrx)
    mediast = _sigmoid((0.045 * zoom - np.abs(u - tcx)) / edge) * _sigmoid((v - 0.08) / 0.02)
    sig = S / 256.0
    if positive:
        mask, pleura, prng = _lesion(index, seed, u, v, geo, heart)
    else:  # prng only draws the lesion's contrast below, which weighs nothing here
        mask, pleura = np.zeros((S, S), bool), np.zeros((S, S), np.float32)
        prng = np.random.default_rng([seed, index, 15485863])
    ptx_soft = ndimage.gaussian_filter(mask.astype(np.float32), 0.7 * sig)
    markings_keep = 1.0 - ndimage.gaussian_filter(mask.astype(np.float32), 0.6 * sig)

    img = 0.06 + 0.52 * thorax
    img = img + 0.03 * _sigmoid((v - tcy - 0.2) / 0.05) * thorax  # abdomen denser
    lung_all = np.zeros((S, S), np.float32)
    markings = np.zeros((S, S), np.float32)
    texture_noise = rng.normal(0, 1, (S, S)).astype(np.float32)
    texture = ndimage.gaussian_filter(texture_noise, 0.8 * sig) - ndimage.gaussian_filter(texture_noise, 2.5 * sig)
    texture /= texture.std() + 1e-6
    for side, cx, cy, rx, ry in lungs:
        lung = soft_inside(ellipse_r(cx, cy, rx, ry), min(rx, ry)) * (1.0 - heart * 0.85)
        vessels = _draw_vessels(rng, S, cx, cy, rx, ry, medial_sign=-side)
        lung_all = np.maximum(lung_all, lung)
        markings += lung * markings_keep * (rng.uniform(0.07, 0.10) * vessels
                                            + rng.uniform(0.022, 0.032) * texture)

    img = img - rng.uniform(0.26, 0.32) * lung_all
    img = img + 0.20 * heart + 0.20 * mediast * (1 - heart)
    # posterior ribs: arcs from the spine, bright cortex edges
    ribs = np.zeros((S, S), np.float32)
    d = np.abs(u - tcx)
    n_ribs = int(rng.integers(8, 11))
    y0 = tcy - 0.38 * zoom + rng.normal(0, 0.01)
    gap = rng.uniform(0.062, 0.072) * zoom
    thick = rng.uniform(0.018, 0.024) * zoom
    for k in range(n_ribs):
        yc = y0 + k * gap - 0.10 * np.sin(np.clip(d / (0.42 * zoom), 0, 1) * math.pi * 0.85) + 0.35 * d ** 2
        dist = np.abs(v - yc)
        band = _sigmoid((thick / 2 - dist) / edge)
        cortex = np.exp(-0.5 * ((dist - thick / 2) / (0.7 / S)) ** 2)
        ribs += (band * 0.6 + cortex * 0.4) * (d > 0.04) * (d < 0.44 * zoom)
    img = img + rng.uniform(0.08, 0.12) * ribs * thorax
    # clavicles
    for side in (-1, 1):
        yc = tcy - 0.42 * zoom - 0.12 * (u - tcx) * side
        clav = _sigmoid((0.014 - np.abs(v - yc)) / edge) * ((u - tcx) * side > 0.03) * ((u - tcx) * side < 0.30)
        img = img + 0.12 * clav
    img = img + markings * (1 - ptx_soft)
    img = img - prng.uniform(0.04, 0.09) * ptx_soft * lung_all
    img = img + prng.uniform(0.08, 0.15) * pleura
    # distractor: a skin fold crossing a lung (an edge with a thin line, no texture loss)
    if rng.random() < 0.3:
        side, cx, cy, rx, ry = lungs[int(rng.integers(0, 2))]
        R = rng.uniform(0.5, 0.9)
        fx = cx + side * (R + rng.uniform(0.3, 0.8) * rx)
        fy = cy + rng.normal(0, 0.1)
        rr = np.sqrt((u - fx) ** 2 + (v - fy) ** 2)
        fold = np.exp(-0.5 * ((rr - R) / (0.9 / S)) ** 2) + 0.5 * _sigmoid((rr - R) / (2.0 / S)) * 0.25
        img = img + rng.choice([-1.0, 1.0]) * rng.uniform(0.04, 0.09) * fold * thorax
    # exposure gradient, blur, gamma, noise
    img = img + rng.normal(0, 0.03) * (u - 0.5) + rng.normal(0, 0.03) * (v - 0.5)
    img = ndimage.gaussian_filter(img.astype(np.float32), 0.6 * sig)
    img = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.15)
    img = img + rng.normal(0, rng.uniform(0.012, 0.025), (S, S))
    out = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return out, mask.astype(np.uint8)


def generate_synthetic(num_images: int, image_size: int = 256, seed: int = 0,
                       positive_fraction: float = 0.5) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(index, image uint8 [S, S], mask uint8 [S, S])`` for a whole set."""
    labels = synthetic_labels(num_images, seed, positive_fraction)
    for i in range(num_images):
        img, m = generate_image(i, image_size, seed, bool(labels[i]))
        yield i, img, m


def _uid(seed: int, i: int, what: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=SYNTH_UID_PREFIX, entropy_srcs=[f"wsss_fast-{seed}-{i}-{what}"]))


def _variant(i: int) -> tuple[str, int]:
    """(photometric, bits) for image i: 20% MONOCHROME1, 40% 12-bit stored in 16."""
    k = i % 10
    photometric = "MONOCHROME1" if k in (1, 6) else "MONOCHROME2"
    bits = 16 if k in (2, 5, 6, 8) else 8
    return photometric, bits


def _write_dicom(path: Path, img: np.ndarray, image_id: str, study: str, series: str,
                 photometric: str, bits: int, index: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = image_id
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = image_id
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientID = f"synthetic-{index}"
    ds.PatientName = "Synthetic^Radiograph"
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows, ds.Columns = int(img.shape[0]), int(img.shape[1])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.PixelRepresentation = 0
    if bits == 8:
        stored = img if photometric == "MONOCHROME2" else 255 - img
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = np.ascontiguousarray(stored.astype(np.uint8)).tobytes()
    else:
        # 12 bits stored in 16, with a rescale (HU-like offset) and a full-range window
        stored = np.round(img.astype(np.float64) * (4095.0 / 255.0)).astype(np.uint16)
        if photometric == "MONOCHROME1":
            stored = (4095 - stored).astype(np.uint16)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 1023.5, 4096  # modality range [-1024, 3071]
        ds.PixelData = np.ascontiguousarray(stored.astype("<u2")).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_synthetic_siim(root: str | Path, num_images: int = 240, image_size: int = 256, seed: int = 0,
                         positive_fraction: float = 0.5, *, dicom: bool = True, png: bool = False,
                         progress: bool = True) -> Path:
    """Write a synthetic set in the SIIM-ACR competition layout.

    Writes ``root/dicom-images-train/<StudyUID>/<SeriesUID>/<ImageId>.dcm`` (when
    ``dicom``), ``root/png-images/<ImageId>.png`` (when ``png``), and
    ``root/train-rle.csv`` (header ``ImageId, EncodedPixels``; ``-1`` for a negative, one
    row per region for a positive). A stamp file records the parameters; calling again with
    the same parameters on a complete set writes nothing.

    Args:
        root: output folder.
        num_images: number of images.
        image_size: side of the square images.
        seed: the set's seed.
        positive_fraction: share of positive images.
        dicom: write DICOM files (20% MONOCHROME1, 40% 12-bit-in-16 with rescale/window).
        png: also write 8-bit PNG files (the loader's PNG variant).
        progress: show a progress bar.

    Returns:
        ``root``.
    """
    from tqdm import tqdm

    root = Path(root)
    params = {"version": _VERSION, "num_images": int(num_images), "image_size": int(image_size),
              "seed": int(seed), "positive_fraction": float(positive_fraction),
              "dicom": bool(dicom), "png": bool(png)}
    stamp = root / ".wsss_synthetic.json"
    if stamp.exists() and (root / "train-rle.csv").exists():
        try:
            if json.loads(stamp.read_text()) == params:
                return root
        except json.JSONDecodeError:
            pass
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    it = generate_synthetic(num_images, image_size, seed, positive_fraction)
    for i, img, m in tqdm(it, total=num_images, desc="synthetic CXR", disable=not progress, leave=False):
        image_id = _uid(seed, i, "sop")
        if dicom:
            study, series = _uid(seed, i, "study"), _uid(seed, i, "series")
            photometric, bits = _variant(i)
            _write_dicom(root / "dicom-images-train" / study / series / f"{image_id}.dcm", img,
                         image_id, study, series, photometric, bits, i)
        if png:
            (root / "png-images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / "png-images" / f"{image_id}.png")
        for code in rle_encode_regions(m):
            rows.append(f"{image_id}, {code}")
    tmp = root / "train-rle.csv.tmp"
    tmp.write_text("ImageId, EncodedPixels\n" + "\n".join(rows) + "\n")
    tmp.replace(root / "train-rle.csv")
    stamp.write_text(json.dumps(params))
    return root
