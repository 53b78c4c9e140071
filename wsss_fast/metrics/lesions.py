"""Size statistics of lesion masks: area, number of regions, thickness.

Per image (one binary mask, all its regions together):

* area fraction: lesion pixels / image pixels;
* regions: connected components (8-connectivity);
* thickness: the diameter of the largest disc inscribed in the lesion, ``2 * max(EDT)``
  where EDT is the Euclidean distance transform of the mask (distance of a lesion pixel to
  the nearest non-lesion pixel; outside the image counts as non-lesion), in pixels and as a
  fraction of the image width.

Used to compare the synthetic pneumothoraces with the SIIM-ACR masks
(``benchmarks/lesion_stats.py``).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from scipy import ndimage

__all__ = ["lesion_stats", "mask_stats", "format_lesion_stats"]

PERCENTILES = (10, 50, 90)


def mask_stats(mask: np.ndarray) -> tuple[float, int, float]:
    """Area fraction, region count and thickness (pixels) of one mask.

    Args:
        mask: [H, W] array; nonzero pixels are lesion.

    Returns:
        ``(area_fraction, regions, thickness_px)``; ``(0.0, 0, 0.0)`` for an empty mask.

    Raises:
        ValueError: the mask is not 2-D.
    """
    m = np.asarray(mask) != 0
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {m.shape}")
    if not m.any():
        return 0.0, 0, 0.0
    _, regions = ndimage.label(m, structure=np.ones((3, 3), dtype=bool))
    edt = ndimage.distance_transform_edt(np.pad(m, 1))
    return float(m.mean()), int(regions), 2.0 * float(edt.max())


def _percentiles(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {f"p{p}": float("nan") for p in PERCENTILES}
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(x, PERCENTILES))}


def lesion_stats(masks: Iterable[np.ndarray]) -> dict:
    """Per-image and summary size statistics of a set of lesion masks.

    Empty masks (negative images) are counted in ``n_empty`` and left out of every other
    figure.

    Args:
        masks: [H, W] binary masks (sizes may differ between images).

    Returns:
        dict with

        * ``area``: float64 [N] area fractions of the N non-empty masks,
        * ``regions``: int64 [N] connected components (8-connectivity),
        * ``thickness``: float64 [N] largest inscribed disc diameter / image width,
        * ``thickness_px``: float64 [N] the same in pixels,
        * ``n``: N, ``n_empty``: number of empty masks,
        * ``area_pct``, ``thickness_pct``: ``{"p10", "p50", "p90"}`` of ``area`` and
          ``thickness`` (fractions, NaN when N = 0),
        * ``multi_region``: share of the N masks with two or more regions (NaN when N = 0).
    """
    area, regions, thick, thick_px = [], [], [], []
    n_empty = 0
    for mask in masks:
        a, r, t = mask_stats(mask)
        if r == 0:
            n_empty += 1
            continue
        area.append(a)
        regions.append(r)
        thick_px.append(t)
        thick.append(t / np.shape(mask)[1])
    out = {"area": np.asarray(area, np.float64), "regions": np.asarray(regions, np.int64),
           "thickness": np.asarray(thick, np.float64), "thickness_px": np.asarray(thick_px, np.float64),
           "n": len(area), "n_empty": n_empty}
    out["area_pct"] = _percentiles(out["area"])
    out["thickness_pct"] = _percentiles(out["thickness"])
    out["multi_region"] = float((out["regions"] >= 2).mean()) if area else float("nan")
    return out


def format_lesion_stats(stats: dict) -> str:
    """Human-readable summary of :func:`lesion_stats` (percentages of area and width)."""
    a, t = stats["area_pct"], stats["thickness_pct"]
    return (f"{stats['n']} lesion masks ({stats['n_empty']} empty left out)\n"
            f"area % of image      p10 {100 * a['p10']:.2f}  median {100 * a['p50']:.2f}  p90 {100 * a['p90']:.2f}\n"
            f"thickness % of width p10 {100 * t['p10']:.2f}  median {100 * t['p50']:.2f}  p90 {100 * t['p90']:.2f}\n"
            f"two or more regions  {100 * stats['multi_region']:.1f} %")
