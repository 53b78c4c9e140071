"""Layout of a run directory: every output of a run lives under one folder.

The folder::

    OUT/config.yaml        resolved configuration
    OUT/split.json         the data split, written once and reused
    OUT/cls/               step 1 classifier: last.pt, best.pt, train.log
    OUT/cam/<id>.npy       CAMs, IRNet's make_cam format (dict: keys, cam, high_res; fp16)
    OUT/ir_label/<id>.png  confident fg/bg labels (255 = ignore)
    OUT/irn/               IRNet: last.pt, final.pt (with the displacement mean), train.log
    OUT/rw/<id>.npy        random-walk soft maps (fp16), for threshold sweeps
    OUT/sem_seg/<id>.png   pseudo labels at the original resolution
    OUT/seg/               step 3 segmentation model checkpoints
    OUT/seg_pred/<id>.png  segmentation predictions
    OUT/figures/           PNG panels
    OUT/report.json        the evaluation table

A step marks itself finished by writing ``<step dir>/.done``; ``wsss-fast run`` skips
finished steps. Per-image outputs are written atomically (:mod:`wsss_fast.engine.files`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """Paths of one run directory (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def cls(self) -> Path:
        return self.root / "cls"

    @property
    def cam(self) -> Path:
        return self.root / "cam"

    @property
    def ir_label(self) -> Path:
        return self.root / "ir_label"

    @property
    def irn(self) -> Path:
        return self.root / "irn"

    @property
    def rw(self) -> Path:
        return self.root / "rw"

    @property
    def sem_seg(self) -> Path:
        return self.root / "sem_seg"

    @property
    def seg(self) -> Path:
        return self.root / "seg"

    @property
    def seg_pred(self) -> Path:
        return self.root / "seg_pred"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    def cam_file(self, image_id: str) -> Path:
        """``cam/<image_id>.npy``: one image's CAMs (see :func:`wsss_fast.engine.files.save_cam_file`)."""
        return self.cam / f"{image_id}.npy"

    def mark_done(self, step_dir: Path) -> None:
        step_dir.mkdir(parents=True, exist_ok=True)
        (step_dir / ".done").write_text("")

    def is_done(self, step_dir: Path) -> bool:
        return (step_dir / ".done").exists()
