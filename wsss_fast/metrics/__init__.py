"""wsss_fast.metrics: segmentation and classification metrics (Viniavskyi et al., AIME 2020)."""

from .classification import multilabel_f1
from .lesions import lesion_stats
from .segmentation import (BatchedSweeps, SegEvaluator, add_sweep, best_and_label, confusion_matrix, dice_per_image,
                           image_counts, miou, sweep_counts, threshold_sweep)

__all__ = ["confusion_matrix", "miou", "dice_per_image", "image_counts", "best_and_label", "threshold_sweep", "add_sweep",
           "sweep_counts", "BatchedSweeps", "SegEvaluator",
           "multilabel_f1", "lesion_stats"]
