"""Argument checks, the kernel-or-reference switch and registration helpers of the ops.

Every ``wsss_fast/ops/<op>.py`` checks its arguments with these helpers before it calls
``torch.ops.wsss_fast.<op>`` or its pure-PyTorch reference, so both see the same valid
arguments and every message has one form, that of ``csrc/common/checks.h``:
``"<op>: <argument> must be <what>, got <what was given>"``.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

import torch

from .. import _ext


def check_tensor(op: str, name: str, t: Any, *, ndim: int | None = None, layout: str = "",
                 floating: bool = False) -> None:
    """Check that ``t`` is a tensor, optionally of ``ndim`` dimensions and floating point.

    Args:
        op: op name, the message prefix.
        name: argument name.
        t: the argument.
        ndim: required number of dimensions, or None for any.
        layout: the expected layout named in the message, e.g. ``"[N, C, H, W]"``.
        floating: require a floating-point dtype.

    Raises:
        TypeError: ``t`` is not a tensor, or not floating point when required.
        ValueError: ``t`` has the wrong number of dimensions.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{op}: {name} must be a {ndim}-D tensor {layout}, got shape {list(t.shape)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got dtype {t.dtype}")


def check_int(op: str, name: str, value: Any, minimum: int) -> int:
    """Check that ``value`` is an int (not a bool) ``>= minimum`` and return it as an int.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: ``value < minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{op}: {name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_choice(op: str, name: str, value: Any, choices: Sequence[str]) -> None:
    """Check that ``value`` is one of ``choices``.

    Raises:
        ValueError: it is not.
    """
    if value not in choices:
        raise ValueError(f"{op}: {name} must be one of {choices}, got {value!r}")


def check_edge(op: str, edge: Any) -> torch.Tensor:
    """Check a boundary map and return it as ``[B, H, W]``.

    Args:
        op: op name, the message prefix.
        edge: floating ``[B, H, W]`` or ``[B, 1, H, W]`` tensor.

    Returns:
        ``edge`` as ``[B, H, W]`` (a view).

    Raises:
        TypeError: ``edge`` is not a floating-point tensor.
        ValueError: ``edge`` has another shape.
    """
    check_tensor(op, "edge", edge, floating=True)
    if edge.dim() == 4 and edge.size(1) == 1:
        return edge[:, 0]
    if edge.dim() != 3:
        raise ValueError(f"{op}: edge must have shape [B, H, W] or [B, 1, H, W], got {list(edge.shape)}")
    return edge


def check_maps_and(op: str, activations: Any, other: Any, name: str, layout: str) -> None:
    """Check feature maps ``[B, K, h, w]`` and a tensor laid out ``[B, C, K, ...]`` that goes with them.

    ``other`` must have ``layout.count(",") + 1`` dimensions, batch B, any C, and then the
    leading dimensions of ``activations[0]``: ``[B, C, K]`` (CAM weights) or
    ``[B, C, K, h, w]`` (gradients of C scores).

    Args:
        op: op name, the message prefix.
        activations: ``[B, K, h, w]`` feature maps.
        other: the second tensor.
        name: its argument name.
        layout: its layout, e.g. ``"[B, C, K]"``.

    Raises:
        TypeError: not two tensors of one floating dtype.
        ValueError: wrong dimensions or shapes that do not match.
        RuntimeError: the two tensors are on different devices.
    """
    if not isinstance(activations, torch.Tensor) or not isinstance(other, torch.Tensor):
        raise TypeError(
            f"{op}: activations and {name} must be tensors, got {type(activations).__name__} "
            f"and {type(other).__name__}"
        )
    check_tensor(op, "activations", activations, ndim=4, layout="[B, K, h, w]")
    ndim = layout.count(",") + 1
    check_tensor(op, name, other, ndim=ndim, layout=layout)
    want = [activations.shape[0], "C", *activations.shape[1:ndim - 1]]
    if other.shape[0] != want[0] or list(other.shape[2:]) != want[2:]:
        raise ValueError(
            f"{op}: {name} must have shape {layout} = [{', '.join(map(str, want))}] to match "
            f"activations {list(activations.shape)}, got {list(other.shape)}"
        )
    if not activations.is_floating_point() or activations.dtype != other.dtype:
        raise TypeError(
            f"{op}: activations and {name} must share one floating dtype, got {activations.dtype} "
            f"and {other.dtype}"
        )
    if activations.device != other.device:
        raise RuntimeError(
            f"{op}: activations and {name} must be on the same device, got {activations.device} "
            f"and {other.device}"
        )


def use_kernel(op: str, registered: bool) -> bool:
    """Whether to call ``torch.ops.wsss_fast.<op>``; when not, warn (once) that the reference runs.

    Args:
        op: op name.
        registered: the module's ``_HAS_OP``: the op was loaded when its module was imported,
            so its fake kernel and autograd formula are registered.
    """
    if registered and _ext.has_op(op):
        return True
    _ext.warn_fallback(op)
    return False


def register_not_differentiable(qualname: str, hint: str) -> None:
    """Give op ``qualname`` ("wsss_fast::name") an autograd formula that raises a clear error.

    Without one, PyTorch's fallback lets an output of a grad-requiring input require grad
    and silently returns no gradient (None) for that input.
    """
    name = qualname.split("::")[-1]

    def _backward(ctx, *grads):
        raise RuntimeError(f"{name} is not differentiable: {hint}")

    torch.library.register_autograd(qualname, _backward)


def register_closed_form_autograd(
    qualname: str,
    formula: Callable[..., tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Register the autograd of an op ``(a, b, *args) -> out`` differentiable in ``a`` and ``b``.

    Args:
        qualname: "wsss_fast::name".
        formula: ``formula(a, b, grad_out, *args) -> (grad_a, grad_b)``, the gradients in
            closed form (in any floating dtype; they are cast to ``a``'s and ``b``'s).
    """

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.args = tuple(inputs[2:])  # every argument: the dispatcher fills in the schema's defaults

    def backward(ctx, grad_out):
        a, b = ctx.saved_tensors
        grad_a, grad_b = formula(a, b, grad_out, *ctx.args)
        return (grad_a.to(a.dtype), grad_b.to(b.dtype)) + (None,) * len(ctx.args)

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)
