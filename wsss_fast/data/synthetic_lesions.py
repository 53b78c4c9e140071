"""Pneumothorax-like lesions of the synthetic radiographs: their sizes, places and drawing.

A lesion is one or more *pieces*. A piece is a band of air along the edge of a lung, inside
the lung outline: its thickness (distance from the lung edge, in units of the image width)
is largest at its centre angle and tapers to zero at its ends. The pieces' sizes follow the
real masks, measured on the SIIM-ACR train masks (2,669 positive images at 1024 px; area of
all regions together, thickness = largest inscribed disc diameter, 8-connected regions):

============================  =====  ======  =====
statistic                     p10    median  p90
============================  =====  ======  =====
area, % of the image          0.2    0.8     3.1
thickness, % of the width     1.9    4.3     11
============================  =====  ======  =====

and 36 % of the positive images have two or more separate regions. Here the thickness of
the main piece is log-normal around 4.3 % of the width and its length along the lung edge
grows as the square root of its thickness, so most lesions are thin lateral rims, some are
small apical pockets and the thickest are large collapses. 45 % of the lesions get a second
piece (a fragment further along the same edge, an apical pocket beside a lateral rim, or a
smaller lesion in the other lung), a few a third; some pieces touch and merge, leaving
36-39 % of the images with two or more separate regions.

:func:`sample_lesion` draws the pieces from the lesion's own random stream (the anatomy's
stream is untouched, so image i with and without a lesion share anatomy);
:func:`draw_pieces` rasterises the pieces of one lung.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Piece", "sample_lesion", "draw_pieces"]

THICK_MEDIAN = 0.043      # main piece thickness, fraction of the image width
THICK_SIGMA = (0.7, 0.85)  # its log-normal spread below and above the median
THICK_RANGE = (0.011, 0.15)  # clip: over a pixel at 128 px; a collapse leaves part of the lung
LENGTH_AT_MEDIAN = 0.25   # length along the lung edge of a median piece, fraction of the width
LENGTH_SIGMA = 0.2
LATERAL = {-1: math.pi, 1: 0.0}   # parametric angle of the lateral edge, per image side
APEX = -math.pi / 2


@dataclass(frozen=True)
class Piece:
    """One band of air along a lung edge.

    Attributes:
        side: the lung, -1 (image left) or +1 (image right).
        theta0: centre (parametric angle of the lung ellipse; 0 = image right, -pi/2 = up).
        length: length along the lung edge, fraction of the image width.
        thickness: largest distance from the lung edge, fraction of the image width.
        follow: 0: centred at ``theta0``; +1 / -1: a fragment of the previous piece of the
            same lung, beyond its end in the direction of increasing / decreasing angle,
            after a gap (``theta0`` unused).
    """

    side: int
    theta0: float
    length: float
    thickness: float
    follow: int = 0


def _edge_angle(side: int, t: float) -> float:
    """Angle a fraction ``t`` of the way from the lateral edge (0) to the apex (1)."""
    lat = LATERAL[side]
    return lat + t * ((APEX - lat + math.pi) % (2 * math.pi) - math.pi)


def _piece(rng: np.random.Generator, side: int, theta0: float, thickness: float, follow: int = 0) -> Piece:
    thickness = float(np.clip(thickness, *THICK_RANGE))
    length = LENGTH_AT_MEDIAN * math.sqrt(thickness / THICK_MEDIAN) * math.exp(rng.normal(0, LENGTH_SIGMA))
    return Piece(side, float(theta0), float(length), thickness, follow)


def _arc_rate(theta: float, rx: float, ry: float) -> float:
    """Edge length per radian of the parametric angle of an ellipse at ``theta``."""
    return math.hypot(rx * math.sin(theta), ry * math.cos(theta))


def sample_lesion(rng: np.random.Generator) -> list[Piece]:
    """Draw the pieces of one image's pneumothorax.

    Args:
        rng: the lesion's random stream.

    Returns:
        One to three pieces. A main piece (a lateral or upper-lateral rim, or in one case
        out of five an apical pocket) and, in 45 % of the images, a second one:
        a fragment of the same rim further along the edge (towards the apex, or from an
        apical pocket down the lateral edge), an apical pocket beside a rim, or a smaller
        lesion in the other lung; in a few of these a third fragment.
    """
    side = int(rng.choice([-1, 1]))
    apical = rng.random() < 0.2
    t = rng.uniform(0.85, 1.0) if apical else rng.uniform(0.05, 0.7)
    z = rng.normal()
    main = _piece(rng, side, _edge_angle(side, t), THICK_MEDIAN * math.exp(THICK_SIGMA[z > 0] * z))
    pieces = [main]
    kind = rng.choice(["single", "fragment", "pocket", "bilateral"], p=[0.55, 0.18, 0.11, 0.16])
    small = main.thickness * rng.uniform(0.35, 0.8)
    if kind == "fragment" or (kind == "pocket" and apical):
        n_extra = 2 if rng.random() < 0.25 else 1
        # up to the apex (the angle runs from the lateral edge to the apex as -side), or from
        # an apical pocket down the lateral edge
        towards = side if apical else -side
        for _ in range(n_extra):
            pieces.append(_piece(rng, side, main.theta0, small, follow=towards))
    elif kind == "pocket":
        pieces.append(_piece(rng, side, _edge_angle(side, rng.uniform(0.9, 1.05)), small))
    elif kind == "bilateral":
        pieces.append(_piece(rng, -side, _edge_angle(-side, rng.uniform(0.05, 1.0)), small))
    return pieces


def _place(pieces: list[Piece], rx: float, ry: float, gap: float) -> list[tuple[float, float, float]]:
    """(centre angle, angular half-span, thickness) of each piece of one lung; a fragment
    follows the previous piece beyond its end, after an edge length ``gap``."""
    out: list[tuple[float, float, float]] = []
    for p in pieces:
        if p.follow == 0 or not out:
            half = p.length / 2 / _arc_rate(p.theta0, rx, ry)
            out.append((p.theta0, half, p.thickness))
            continue
        prev, prev_half, _ = out[-1]
        start = prev + p.follow * prev_half
        start += p.follow * gap / _arc_rate(start, rx, ry)
        half = p.length / 2 / _arc_rate(start, rx, ry)
        out.append((start + p.follow * half, half, p.thickness))
    return out


def draw_pieces(pieces: list[Piece], u: np.ndarray, v: np.ndarray, lung: tuple[float, float, float, float],
                inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise the pieces of one lung.

    Args:
        pieces: this lung's pieces (the main piece first when fragments follow it).
        u, v: float [S, S] pixel-centre coordinates, fractions of the width and height.
        lung: ``(cx, cy, rx, ry)`` of the lung ellipse, in the same units.
        inside: bool [S, S] the lung's pixels (the ellipse less the heart).

    Returns:
        ``(mask, pleura)``: bool [S, S] the pieces' union (each piece one 8-connected region,
        at least one pixel) and float [S, S] in [0, 1], the visceral pleural line (a thin
        bright curve just inside the lung, along each piece's inner edge).
    """
    S = u.shape[1]
    full_mask = np.zeros(u.shape, bool)
    full_pleura = np.zeros(u.shape, np.float32)
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if rows.size == 0:
        return full_mask, full_pleura
    # work in the lung's bounding box (a margin of 2 px keeps the gradients exact)
    box = (slice(max(rows[0] - 2, 0), rows[-1] + 3), slice(max(cols[0] - 2, 0), cols[-1] + 3))
    u, v, inside = u[box], v[box], inside[box]
    cx, cy, rx, ry = lung
    du, dv = u - cx, v - cy
    r = np.sqrt((du / rx) ** 2 + (dv / ry) ** 2)
    grad = np.sqrt((du / rx ** 2) ** 2 + (dv / ry ** 2) ** 2) / np.maximum(r, 1e-6)
    depth = (1.0 - r) / np.maximum(grad, 1e-6)  # ~ distance to the lung edge (width units)
    theta = np.arctan2(dv / ry, du / rx)
    mask = np.zeros(u.shape, bool)
    pleura = np.zeros(u.shape, np.float32)
    sig = S / 256.0
    for theta0, half, thick in _place(pieces, rx, ry, gap=max(0.035, 3.0 / S)):
        dth = (theta - theta0 + math.pi) % (2 * math.pi) - math.pi
        prof = np.maximum(np.cos(np.clip(dth / max(half, 1e-3), -1, 1) * (math.pi / 2)), 0.0) ** 0.8
        w = thick * prof * (np.abs(dth) < half)
        piece = inside & (depth < w) & (r > 0.15)
        lab, n = ndimage.label(piece, structure=np.ones((3, 3)))
        if n > 1:  # sub-pixel tapering tails can break off: keep the main body
            piece = lab == int(np.argmax(np.bincount(lab.ravel())[1:])) + 1
        elif n == 0:  # thinner than a pixel: the lung pixel nearest to the band's centre
            piece = np.zeros_like(piece)
            score = depth - w + (np.abs(dth) >= half)
            piece.flat[int(np.argmin(np.where(inside, score, np.inf)))] = True
        # the pleural line at a constant width in pixels (signed distance = f / |grad f|)
        f = (depth - w) * S
        gy, gx = np.gradient(f)
        dist = f / np.maximum(np.hypot(gx, gy), 1e-6)
        line = np.exp(-0.5 * ((dist - 0.6 * max(sig, 0.5)) / (0.6 * max(sig, 0.6))) ** 2)
        line *= (w * S > 0.5) * inside
        pleura = np.maximum(pleura, line.astype(np.float32))
        mask |= piece
    full_mask[box], full_pleura[box] = mask, pleura
    return full_mask, full_pleura
