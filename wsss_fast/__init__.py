"""wsss_fast: fast kernels and a full pipeline for weakly-supervised semantic segmentation.

The pipeline follows Viniavskyi, Dobko and Dobosevych, "Weakly-Supervised Segmentation
for Disease Localization in Chest X-Ray Images", AIME 2020: a classifier with DropBlock
and Grad-CAM++ maps, IRNet (Ahn et al., CVPR 2019) pseudo labels refined by a random
walk, and a segmentation network trained on them.
"""

from ._ext import extension_info

__version__ = "0.1.0"
__all__ = ["extension_info", "__version__"]
