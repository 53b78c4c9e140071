"""Size statistics of pneumothorax masks: SIIM-ACR ``train-rle.csv`` or the synthetic generator.

Prints, over the positive images, the 10th percentile, median and 90th percentile of the
lesion area (% of the image) and thickness (largest inscribed disc diameter, % of the image
width), and the share of images with two or more separate regions (8-connectivity); see
:mod:`wsss_fast.metrics.lesions`.

    python benchmarks/lesion_stats.py --siim /data/siim                 # 1024 px masks
    python benchmarks/lesion_stats.py --synthetic 200 --size 256 --seed 0
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wsss_fast.data.rle import is_empty_rle, rle_decode_union  # noqa: E402
from wsss_fast.metrics.lesions import format_lesion_stats, lesion_stats  # noqa: E402


def siim_masks(csv_file: Path, size: int) -> Iterator[np.ndarray]:
    """Yield the mask (uint8 [size, size], union of its rows) of every positive image of a
    SIIM ``train-rle.csv`` (header ``ImageId, EncodedPixels``; ``-1`` rows are negatives)."""
    rows: dict[str, list[str]] = defaultdict(list)
    with open(csv_file, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, skipinitialspace=True)
        next(reader)
        for rec in reader:
            if len(rec) >= 2 and not is_empty_rle(rec[1]):
                rows[rec[0].strip()].append(rec[1])
    for codes in rows.values():
        yield rle_decode_union(codes, size, size)


def synthetic_masks(n: int, size: int, seed: int) -> Iterator[np.ndarray]:
    """Yield the masks of images 0..n-1 of the synthetic set ``seed``, all drawn positive."""
    from wsss_fast.data.synthetic import generate_mask

    for i in range(n):
        yield generate_mask(i, size, seed)


def main(argv: list[str] | None = None) -> dict:
    """Parse the arguments, print the statistics, return them (summary only)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--siim", type=Path, metavar="ROOT", help="SIIM folder holding train-rle.csv")
    src.add_argument("--synthetic", type=int, metavar="N", help="N positive synthetic images")
    ap.add_argument("--csv", type=Path, default=None, help="CSV file (default ROOT/train-rle.csv)")
    ap.add_argument("--size", type=int, default=None, help="mask side (SIIM: 1024, synthetic: 256)")
    ap.add_argument("--seed", type=int, default=0, help="synthetic set seed")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)
    if args.siim is not None:
        size = args.size or 1024
        masks = siim_masks(args.csv or args.siim / "train-rle.csv", size)
        what = f"SIIM {args.siim} at {size} px"
    else:
        size = args.size or 256
        masks = synthetic_masks(args.synthetic, size, args.seed)
        what = f"synthetic seed {args.seed} at {size} px"
    stats = lesion_stats(masks)
    summary = {k: stats[k] for k in ("n", "n_empty", "area_pct", "thickness_pct", "multi_region")}
    summary["thickness_px_p50"] = float(np.median(stats["thickness_px"])) if stats["n"] else float("nan")
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(what)
        print(format_lesion_stats(stats))
    return summary


if __name__ == "__main__":
    main()
