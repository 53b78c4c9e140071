"""wsss_fast.models."""
