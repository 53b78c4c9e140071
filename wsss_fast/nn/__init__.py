"""Neural-network modules built on the fused ops of :mod:`wsss_fast.ops`."""

from .dropblock import DropBlock2d

__all__ = ["DropBlock2d"]
