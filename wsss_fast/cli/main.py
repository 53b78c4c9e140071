"""``wsss-fast``: one command per pipeline step, plus ``run`` (all steps) and ``demo``.

Each step is a function ``step(cfg: dict, paths: RunPaths) -> None`` in its own
module; this file only maps command names to them and parses the shared options.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Callable

from ..config import load_config, save_config
from ..runs import RunPaths

# command name -> ("module", "function", help)
STEPS: dict[str, tuple[str, str, str]] = {
    "train-cls": ("wsss_fast.train.cls", "train_cls", "step 1: train the classifier with DropBlock"),
    "make-cam": ("wsss_fast.cam.make", "make_cam", "step 1: Grad-CAM++ maps for every image of the split"),
    "eval-cam": ("wsss_fast.cam.make", "eval_cam", "sweep the CAM background threshold (mIoU)"),
    "make-ir-label": ("wsss_fast.irn.ir_label", "make_ir_label", "step 2: confident fg/bg labels (threshold + CRF)"),
    "train-irn": ("wsss_fast.irn.train", "train_irn", "step 2: train IRNet's boundary and displacement branches"),
    "make-sem-seg": ("wsss_fast.irn.sem_seg", "make_sem_seg", "step 2: random-walk pseudo labels"),
    "eval-sem-seg": ("wsss_fast.irn.sem_seg", "eval_sem_seg", "evaluate pseudo labels, sweep the bg threshold"),
    "train-seg": ("wsss_fast.seg.train", "train_seg", "step 3: train the segmentation model on pseudo labels"),
    "evaluate": ("wsss_fast.metrics.report", "evaluate", "the report table for every step (report.json)"),
}

# the order `wsss-fast run` executes
PIPELINE = ["train-cls", "make-cam", "make-ir-label", "train-irn", "make-sem-seg", "train-seg", "evaluate"]


def resolve_step(name: str) -> Callable:
    module, func, _ = STEPS[name]
    return getattr(importlib.import_module(module), func)


def _add_common(p: argparse.ArgumentParser, config_required: bool = True) -> None:
    p.add_argument("--config", required=config_required,
                   help="YAML config file, or the name of a shipped one (siim, voc, demo)")
    p.add_argument("--out", required=True, type=Path, help="run directory: every output goes here")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="override any config key, e.g. cls.epochs=3 cam.scales=[1.0,0.5]")


def prepare(args: argparse.Namespace) -> tuple[dict, RunPaths]:
    """Load the config (with overrides), create the run folder and save the resolved config."""
    cfg = load_config(args.config, args.overrides)
    paths = RunPaths(args.out)
    paths.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.config)
    return cfg, paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wsss-fast",
        description="Weakly-supervised segmentation: classifier + Grad-CAM++ -> IRNet -> segmentation "
                    "(Viniavskyi et al., AIME 2020).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, _, help_) in STEPS.items():
        _add_common(sub.add_parser(name, help=help_, description=help_))
    from . import pipeline

    pipeline.add_parsers(sub, _add_common)
    p = sub.add_parser("info", help="print how the extension was built and loaded")
    p.set_defaults(func=_info)
    return parser


def _info(args: argparse.Namespace) -> int:
    import json

    from .. import extension_info

    print(json.dumps(extension_info(), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is not None:
        return int(args.func(args) or 0)
    cfg, paths = prepare(args)
    resolve_step(args.command)(cfg, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
