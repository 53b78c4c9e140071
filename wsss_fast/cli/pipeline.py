"""``wsss-fast run`` and ``wsss-fast demo`` (placeholder until the pipeline lands)."""

from __future__ import annotations


def add_parsers(sub, add_common) -> None:
    """Register ``run`` and ``demo`` on the sub-command parser."""
