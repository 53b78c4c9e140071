"""The pipeline's steps: one table that the command line and ``wsss-fast run`` both read.

Viniavskyi, Dobko, Dobosevych, "Weakly-Supervised Segmentation for Disease Localization in
Chest X-Ray Images", AIME 2020: classifier + Grad-CAM++ (step 1) -> IRNet pseudo labels
(step 2) -> segmentation network (step 3) -> the evaluation table.

Every step is a function ``step(cfg: dict, paths: RunPaths) -> None``. :data:`STEPS` lists
them in pipeline order; ``wsss-fast <name>`` runs one, ``wsss-fast run`` runs those with
``in_run`` in that order. Adding a step is one :class:`Step` entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .engine.paths import RunPaths

__all__ = ["Step", "STEPS", "PIPELINE", "get_step"]


@dataclass(frozen=True)
class Step:
    """One pipeline step.

    Attributes:
        name: the command (``wsss-fast <name>``).
        target: ``"module:function"`` of the step function ``(cfg, paths) -> None``.
        help: one line for ``wsss-fast --help``.
        sections: config sections listed by ``wsss-fast <name> --help`` ("" = top-level keys).
        output: the :class:`RunPaths` attribute of the folder the step writes and marks done
            (``<folder>/.done``); None for steps that are not part of ``run``.
        extra_outputs: further :class:`RunPaths` attributes the step writes (removed with it).
        in_run: part of ``wsss-fast run``.
        details: longer text for ``wsss-fast <name> --help``.
    """

    name: str
    target: str
    help: str
    sections: tuple[str, ...]
    output: str | None = None
    extra_outputs: tuple[str, ...] = ()
    in_run: bool = False
    details: str = ""

    def resolve(self) -> Callable:
        """The step function (its module is imported on first use)."""
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)

    def folder(self, paths: RunPaths) -> Path:
        """The folder the step marks done."""
        if self.output is None:
            raise ValueError(f"step '{self.name}' has no output folder")
        return getattr(paths, self.output)

    def outputs(self, paths: RunPaths) -> list[Path]:
        """Every path the step writes (its folder first)."""
        return [self.folder(paths)] + [getattr(paths, a) for a in self.extra_outputs]


STEPS: tuple[Step, ...] = (
    Step("train-cls", "wsss_fast.cls.train:train_cls", "step 1: train the classifier with DropBlock",
         ("", "dataset", "augment", "sampler", "cls"), output="cls", in_run=True, details=(
             "Trains cls.arch (VGG16-D1 or a dilated ResNet, output stride 8) with DropBlock on the image-level\n"
             "labels of cls.train_split (BCE with logits, class-balanced batches from sampler.neg_pos_ratio).\n"
             "Writes OUT/cls/last.pt after every epoch (resumed when cls.resume is true), OUT/cls/best.pt\n"
             "(best multi-label F1 on cls.val_split) and OUT/cls/train.log. Multi-GPU / multi-process:\n"
             "  torchrun --nproc_per_node=N -m wsss_fast.cli.main train-cls --config ... --out ...\n"
             "(cls.batch_size is the global batch; NCCL on CUDA, gloo on the CPU).")),
    Step("make-cam", "wsss_fast.cam.make:make_cam", "step 1: Grad-CAM++ maps for every image of the split",
         ("", "dataset", "cam"), output="cam", in_run=True, details=(
             "Loads cam.checkpoint (OUT/cls/best.pt) and writes OUT/cam/<image_id>.npy for every image of\n"
             "cam.splits: keys (positive classes), cam (stride 4), high_res (working resolution), raw; fp16,\n"
             "multi-scale (cam.scales) and flip (cam.flip). Existing files are skipped (resumable). Shard the\n"
             "images with cam.num_shards=N cam.shard_index=i, or run under torchrun (one shard per process).")),
    Step("eval-cam", "wsss_fast.cam.make:eval_cam", "sweep the CAM background threshold (mIoU)",
         ("", "dataset", "cam"), details=(
             "Reads the cached OUT/cam/*.npy (no recomputation) and reports mIoU over all images, mIoU over\n"
             "positive images and Dice for every background threshold of cam.eval_thresholds on\n"
             "cam.eval_splits, with the best threshold by cam.eval_metric; writes OUT/cam/eval.json.")),
    Step("make-ir-label", "wsss_fast.irn.ir_label:make_ir_label",
         "step 2: confident fg/bg labels (threshold + CRF)", ("", "dataset", "ir_label"),
         output="ir_label", in_run=True),
    Step("train-irn", "wsss_fast.irn.train:train_irn", "step 2: train IRNet's boundary and displacement branches",
         ("", "dataset", "irn"), output="irn", in_run=True),
    Step("make-sem-seg", "wsss_fast.irn.sem_seg:make_sem_seg", "step 2: random-walk pseudo labels",
         ("", "dataset", "sem_seg"), output="sem_seg", extra_outputs=("rw",), in_run=True),
    Step("eval-sem-seg", "wsss_fast.irn.sem_seg:eval_sem_seg", "evaluate pseudo labels, sweep the bg threshold",
         ("", "dataset", "sem_seg")),
    Step("show", "wsss_fast.irn.show:show",
         "PNG panels: image | CAM | boundary | displacement | random walk | labels",
         ("", "dataset", "show", "sem_seg")),
    Step("train-seg", "wsss_fast.seg.train:train_seg", "step 3: train the segmentation model on pseudo labels",
         ("", "dataset", "augment", "sampler", "seg"), output="seg", in_run=True),
    Step("predict-seg", "wsss_fast.seg.infer:predict_seg", "step 3: segmentation predictions for the evaluated splits",
         ("", "dataset", "seg", "evaluate"), output="seg_pred", in_run=True),
    # figures/ may also hold `show` panels: evaluate marks figures/ done and owns report.json
    Step("evaluate", "wsss_fast.report:evaluate", "the report table for every step (report.json)",
         ("", "dataset", "cam", "sem_seg", "seg", "evaluate"), output="figures", extra_outputs=("report",),
         in_run=True),
)

PIPELINE: tuple[Step, ...] = tuple(s for s in STEPS if s.in_run)
_BY_NAME = {s.name: s for s in STEPS}


def get_step(name: str) -> Step:
    """The step called ``name`` (a command name)."""
    if name not in _BY_NAME:
        raise KeyError(f"unknown step '{name}'; steps: {[s.name for s in STEPS]}")
    return _BY_NAME[name]
