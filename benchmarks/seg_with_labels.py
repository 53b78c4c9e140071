"""Step 3 scored like for like with the CAM and IRNet rows: given each image's class labels.

The report's CAM and IRNet rows make maps only for the classes each image is labelled with
(``cam.use_labels``, IRNet's protocol), while the segmentation network predicts without
labels. This script scores a finished multi-class run's segmentation model twice on val and
test: plain argmax (the report's row) and argmax over background and the image's labelled
classes, beside the report's IRNet row. The difference between the two segmentation figures
is what recognising the classes costs step 3 (Viniavskyi et al., AIME 2020, step 3; Ahn et
al., CVPR 2019, for the protocol).

    python benchmarks/seg_with_labels.py RUN_DIR [RUN_DIR ...]     # e.g. OUT/seed_0 of --seeds
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from wsss_fast.config import get, load_config  # noqa: E402
from wsss_fast.data import build_dataset  # noqa: E402
from wsss_fast.engine.paths import RunPaths  # noqa: E402
from wsss_fast.metrics import SegEvaluator  # noqa: E402
from wsss_fast.seg.infer import _loader, _predictions, load_seg_model, probs_to_label  # noqa: E402


@torch.no_grad()
def score(run: str | Path, splits: tuple[str, ...] = ("val", "test")) -> dict:
    """``{split: {"seg": mIoU, "seg_given_labels": mIoU, "irnet": mIoU}}`` (mIoU all, x100)."""
    cfg = load_config(Path(run) / "config.yaml", {"num_workers": 0})
    paths = RunPaths(run)
    device = torch.device("cpu")
    model = load_seg_model(cfg, paths, device)
    report = json.loads(paths.report.read_text())["splits"]
    out = {}
    for split in splits:
        base = build_dataset(cfg, split, paths, train=False)
        if int(base.num_classes) < 2:
            raise ValueError(f"{run}: a binary run (num_classes {base.num_classes}) has no classes to give")
        plain, given = SegEvaluator(int(base.num_classes) + 1), SegEvaluator(int(base.num_classes) + 1)
        loader = _loader(cfg, base, list(range(len(base.image_ids))), device)
        for idx, probs in _predictions(model, loader, device, bool(get(cfg, "seg.tta_flip")), False):
            gt = base.load_mask(idx)
            labels = np.asarray(base.labels[idx]).astype(bool)
            positive = bool(labels.any())
            plain.add(probs_to_label(probs).numpy(), gt, positive)
            keep = torch.tensor([True] + labels.tolist())  # background and the labelled classes
            given.add(probs_to_label(probs.masked_fill(~keep[:, None, None], -1.0)).numpy(), gt, positive)
        out[split] = {"seg": round(plain.result()["miou_all"] * 100, 2),
                      "seg_given_labels": round(given.result()["miou_all"] * 100, 2),
                      "irnet": round(report[split]["irnet"]["miou_all"] * 100, 2)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished multi-class run directories (report.json, seg/final.pt)")
    args = ap.parse_args()
    print("| run | split | segmentation | segmentation given the labels | IRNet |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        for split, r in score(run).items():
            print(f"| {Path(run).name} | {split} | {r['seg']:.2f} | {r['seg_given_labels']:.2f} | {r['irnet']:.2f} |")


if __name__ == "__main__":
    main()
