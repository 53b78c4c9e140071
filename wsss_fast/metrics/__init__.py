"""wsss_fast.metrics."""
