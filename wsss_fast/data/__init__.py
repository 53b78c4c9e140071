"""wsss_fast.data."""
