"""Loading of the compiled extension ``wsss_fast._C`` and the reference fallback.

The extension registers its operators with ``TORCH_LIBRARY_FRAGMENT(wsss_fast, m)``;
loading the shared object is enough to make ``torch.ops.wsss_fast.<op>`` available.
When it is missing (not built, or built against another torch), every op falls back
to its pure-PyTorch reference in :mod:`wsss_fast.reference`, and one warning says so.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

_LOADED: bool | None = None
_LOAD_ERROR: str | None = None
_WARNED = False


def _load() -> bool:
    global _LOADED, _LOAD_ERROR
    if _LOADED is not None:
        return _LOADED
    if os.environ.get("WSSS_FAST_DISABLE_EXT", "") not in ("", "0"):
        _LOADED, _LOAD_ERROR = False, "disabled by WSSS_FAST_DISABLE_EXT"
        return False
    try:
        spec = importlib.util.find_spec("wsss_fast._C")
    except (ImportError, ValueError) as exc:  # pragma: no cover - defensive
        spec, _LOAD_ERROR = None, str(exc)
    if spec is None or spec.origin is None:
        _LOADED = False
        _LOAD_ERROR = _LOAD_ERROR or "wsss_fast/_C*.so not found (run `make build`)"
        return False
    try:
        torch.ops.load_library(spec.origin)
    except (OSError, RuntimeError) as exc:
        _LOADED, _LOAD_ERROR = False, f"{spec.origin}: {exc}"
        return False
    _LOADED = True
    return True


def has_ops() -> bool:
    """Whether the compiled operators were loaded."""
    return _load()


def has_op(name: str) -> bool:
    """Whether ``torch.ops.wsss_fast.<name>`` exists (the extension is loaded and has it)."""
    if not _load():
        return False
    return hasattr(torch.ops.wsss_fast, name)


def warn_fallback(op: str) -> None:
    """Warn once per process that ops run on their pure-PyTorch references.

    Called by :func:`wsss_fast.ops._utils.use_kernel` inside an op, so the warning points at
    the op's caller (``stacklevel=4``).
    """
    global _WARNED
    if _WARNED:
        return
    _WARNED = True
    reason = _LOAD_ERROR if not _load() else f"the loaded wsss_fast._C has no op '{op}'; rebuild it"
    warnings.warn(
        f"wsss_fast: compiled ops are not available ({reason}); '{op}' and every other "
        "op fall back to their pure-PyTorch references in wsss_fast.reference, which are much "
        "slower. Build the extension with `make build` or `pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=4,
    )


def extension_info() -> dict:
    """Report how the package is running.

    Returns:
        A dict with ``compiled_ops_loaded`` (bool), ``cuda_kernels_compiled`` (bool),
        ``extension_cuda_version`` (str or None), ``torch_version``, ``torch_cuda_version``,
        ``cuda_available`` and ``load_error`` (why the ops are missing, or None).
    """
    loaded = _load()
    ext_cuda = None
    if loaded and has_op("_cuda_version"):
        v = int(torch.ops.wsss_fast._cuda_version())
        ext_cuda = f"{v // 1000}.{(v % 1000) // 10}" if v else None
    ops = sorted(
        name.split("::", 1)[1]
        for name in torch._C._dispatch_get_all_op_names()
        if name.startswith("wsss_fast::")
    )
    return {
        "compiled_ops_loaded": loaded,
        "cuda_kernels_compiled": ext_cuda is not None,
        "extension_cuda_version": ext_cuda,
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "ops": ops,
        "load_error": None if loaded else _LOAD_ERROR,
    }
