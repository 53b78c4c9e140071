"""Step 1 of the pipeline: class activation maps (CAM, Grad-CAM, Grad-CAM++) of a classifier."""

from .extractor import CAMExtractor
from .result import CAMResult, LayerCAMs

__all__ = ["CAMExtractor", "CAMResult", "LayerCAMs"]
