"""Fast operators with CPU and CUDA kernels (``torch.ops.wsss_fast.*``).

Each public function lives in its own module, registers its fake (meta) kernel and
autograd formula through :mod:`torch.library`, and falls back to the pure-PyTorch
reference of the same name in :mod:`wsss_fast.reference` when the compiled extension
is missing.
"""

from __future__ import annotations

import importlib

_OPS = {
    "drop_block2d": "drop_block2d",
    "search_offsets": "path_affinity",
    "path_affinity": "path_affinity",
    "irnet_affinity_layout": "path_affinity",
    "random_walk": "random_walk",
    "gradcampp_weights": "gradcampp_weights",
    "weighted_cam": "weighted_cam",
    "permutohedral_filter": "permutohedral_filter",
    "dense_crf": "dense_crf",
    "dense_crf_unary": "dense_crf",
    "unary_from_softmax": "dense_crf",
    "unary_from_labels": "dense_crf",
}

__all__ = sorted(_OPS)


def __getattr__(name: str):
    if name in _OPS:
        module = importlib.import_module(f".{_OPS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'wsss_fast.ops' has no attribute '{name}'")


def _bind_same_named_ops() -> None:
    # ``from wsss_fast.ops import path_affinity`` imports the *submodule* of that name
    # when the package attribute is missing, and the import system rebinds the package
    # attribute to the submodule. Import such modules eagerly and bind the functions.
    import importlib.util

    for name, module in _OPS.items():
        if name == module and importlib.util.find_spec(f"{__name__}.{module}") is not None:
            globals()[name] = getattr(importlib.import_module(f".{module}", __name__), name)


_bind_same_named_ops()
