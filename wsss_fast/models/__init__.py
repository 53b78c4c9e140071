"""Step-1 classification models (Viniavskyi et al., AIME 2020): dilated VGG16-D1 and ResNets.

``build_classifier(cfg)`` builds the model a config describes; see :mod:`.classifier`.
"""

from __future__ import annotations

from ..config import get
from .classifier import ARCHS, Classifier, make_dropblock
from .weights import load_torchvision_weights, read_state_dict

__all__ = ["ARCHS", "Classifier", "build_classifier", "classifier_kwargs", "make_dropblock",
           "load_torchvision_weights", "read_state_dict"]


def classifier_kwargs(cfg: dict, load_pretrained: bool = True) -> dict:
    """The :class:`Classifier` arguments a config gives (``cls.*`` and ``dataset.num_classes``)."""
    db = dict(get(cfg, "cls.dropblock", {}) or {})
    enabled = db.pop("enabled", True) and db.get("place", "after_conv1") not in (None, "none")
    return {
        "arch": get(cfg, "cls.arch", "resnet50"),
        "num_classes": int(get(cfg, "dataset.num_classes", 1)),
        "head_channels": int(get(cfg, "cls.head_channels", 512)),
        "dropblock": db if enabled else None,
        "pretrained_path": get(cfg, "cls.pretrained_path") if load_pretrained else None,
        "width": float(get(cfg, "cls.width", 1.0)),
    }


def build_classifier(cfg: dict, load_pretrained: bool = True) -> Classifier:
    """Build the step-1 classifier of a config.

    Args:
        cfg: the run configuration (``cls.arch``, ``cls.head_channels``, ``cls.dropblock.*``,
            ``cls.pretrained_path``, ``dataset.num_classes``).
        load_pretrained: load ``cls.pretrained_path`` (False when a checkpoint is loaded next).
    """
    return Classifier(**classifier_kwargs(cfg, load_pretrained))
