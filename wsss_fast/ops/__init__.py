"""Fast operators with CPU and CUDA kernels (``torch.ops.wsss_fast.*``).

Each public function lives in ``ops/<op>.py``, which checks its arguments with
:mod:`wsss_fast.ops._utils`, registers the op's fake (meta) kernel and autograd formula
through :mod:`torch.library`, and falls back to the pure-PyTorch reference of the same
name in :mod:`wsss_fast.reference` when the compiled extension is missing. The layout of
an op file is described in ``docs/ops.md``.

The op modules are imported here, eagerly: importing :mod:`wsss_fast` alone does not
import them (nor load ``wsss_fast._C``).
"""

from __future__ import annotations

from .dense_crf import dense_crf, dense_crf_unary, unary_from_labels, unary_from_softmax
from .drop_block2d import drop_block2d
from .gradcampp_weights import gradcampp_weights
from .path_affinity import irnet_affinity_layout, path_affinity, search_offsets
from .permutohedral_filter import permutohedral_filter
from .random_walk import random_walk
from .weighted_cam import weighted_cam

__all__ = [
    "dense_crf",
    "dense_crf_unary",
    "drop_block2d",
    "gradcampp_weights",
    "irnet_affinity_layout",
    "path_affinity",
    "permutohedral_filter",
    "random_walk",
    "search_offsets",
    "unary_from_labels",
    "unary_from_softmax",
    "weighted_cam",
]
