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

from ..config import ConfigError, load_config, save_config
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
    "show": ("wsss_fast.irn.show", "show", "PNG panels: image | CAM | boundary | displacement | random walk | labels"),
    "train-seg": ("wsss_fast.seg.train", "train_seg", "step 3: train the segmentation model on pseudo labels"),
    "predict-seg": ("wsss_fast.seg.infer", "predict_seg", "step 3: segmentation predictions for the evaluated splits"),
    "evaluate": ("wsss_fast.metrics.report", "evaluate", "the report table for every step (report.json)"),
}

# the order `wsss-fast run` executes
PIPELINE = ["train-cls", "make-cam", "make-ir-label", "train-irn", "make-sem-seg", "train-seg",
            "predict-seg", "evaluate"]


# longer descriptions shown by `wsss-fast <command> --help`
STEP_DETAILS: dict[str, str] = {
    "train-cls": (
        "Trains cls.arch (VGG16-D1 or a dilated ResNet, output stride 8) with DropBlock on the image-level\n"
        "labels of cls.train_split (BCE with logits, class-balanced batches from sampler.neg_pos_ratio).\n"
        "Writes OUT/cls/last.pt after every epoch (resumed when cls.resume is true), OUT/cls/best.pt\n"
        "(best multi-label F1 on cls.val_split) and OUT/cls/train.log. Multi-GPU / multi-process:\n"
        "  torchrun --nproc_per_node=N -m wsss_fast.cli.main train-cls --config ... --out ...\n"
        "(cls.batch_size is the global batch; NCCL on CUDA, gloo on the CPU)."),
    "make-cam": (
        "Loads cam.checkpoint (OUT/cls/best.pt) and writes OUT/cam/<image_id>.npy for every image of\n"
        "cam.splits: keys (positive classes), cam (stride 4), high_res (working resolution), raw; fp16,\n"
        "multi-scale (cam.scales) and flip (cam.flip). Existing files are skipped (resumable). Shard the\n"
        "images with cam.num_shards=N cam.shard_index=i, or run under torchrun (one shard per process)."),
    "eval-cam": (
        "Reads the cached OUT/cam/*.npy (no recomputation) and reports mIoU over all images, mIoU over\n"
        "positive images and Dice for every background threshold of cam.eval_thresholds on\n"
        "cam.eval_splits, with the best threshold by cam.eval_metric; writes OUT/cam/eval.json."),
}

# config sections listed (with defaults and comments from default.yaml) by `<command> --help`
STEP_SECTIONS: dict[str, tuple[str, ...]] = {
    "train-cls": ("", "dataset", "augment", "sampler", "cls"),
    "make-cam": ("", "dataset", "cam"),
    "eval-cam": ("", "dataset", "cam"),
    "make-ir-label": ("", "dataset", "ir_label"),
    "train-irn": ("", "dataset", "irn"),
    "make-sem-seg": ("", "dataset", "sem_seg"),
    "eval-sem-seg": ("", "dataset", "sem_seg"),
    "show": ("", "dataset", "show", "sem_seg"),
    "train-seg": ("", "dataset", "augment", "sampler", "seg"),
    "predict-seg": ("", "dataset", "seg", "evaluate"),
    "evaluate": ("", "dataset", "cam", "sem_seg", "seg", "evaluate"),
}


def config_help(sections: tuple[str, ...]) -> str | None:
    """The ``default.yaml`` lines of ``sections`` as ``key.sub: default  # comment`` ("" = top-level keys)."""
    if not sections:
        return None
    from ..config import CONFIG_DIR

    lines, stack, current = [], [], None
    for raw in (CONFIG_DIR / "default.yaml").read_text().splitlines():
        text = raw.split("#", 1)[0].rstrip()
        comment = raw.split("#", 1)[1].strip() if "#" in raw else ""
        if not text.strip():
            if comment and current in sections and lines and raw.startswith(" "):
                lines.append(" " * 40 + "# " + comment)  # continuation of the previous comment
            continue
        indent = len(text) - len(text.lstrip())
        key, _, value = text.strip().partition(":")
        depth = indent // 2
        stack = stack[:depth] + [key]
        if depth == 0:
            current = key if not value.strip() else ""
        if current not in sections or (depth == 0 and current):
            continue
        if value.strip() or comment:
            entry = f"  {'.'.join(stack)}: {value.strip()}" if value.strip() else f"  {'.'.join(stack)}:"
            lines.append((f"{entry:<40}" + (f"# {comment}" if comment else "")).rstrip())
    return "config keys (override any with key.sub=value; defaults from configs/default.yaml):\n" + "\n".join(lines)


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
        desc = help_ + (("\n\n" + STEP_DETAILS[name]) if name in STEP_DETAILS else "")
        _add_common(sub.add_parser(name, help=help_, description=desc,
                                   epilog=config_help(STEP_SECTIONS.get(name, ())),
                                   formatter_class=argparse.RawDescriptionHelpFormatter))
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
    try:
        if getattr(args, "func", None) is not None:
            return int(args.func(args) or 0)
        cfg, paths = prepare(args)
    except ConfigError as err:  # a typo in a key: say which, before any work starts
        parser.error(str(err))
    resolve_step(args.command)(cfg, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
